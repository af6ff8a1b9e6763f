"""The drop-in student: a slimmed encoder whose outputs live in the teacher's feature space.

Stage 2 trains linear branches Q (C' -> C, no activation) so the frozen collaborator -- the
teacher's own decoder -- reads Q·F'. Keeping Q after training therefore gives a student that the
user's ORIGINAL decoder (or any downstream model of the teacher's features) reads unchanged.

Two forms, equal up to rounding:

* **appended**: :class:`DropInEncoder` runs the student, then Q on every output (always possible);
* **folded**: Q composed into the layer that produces an output (``W' = Q W``, ``b' = Q b + q``) when
  that is exact: the output is the very tensor a Conv2d/Linear returned, nothing in place touched it
  afterwards, the layer runs once, and (checked numerically in float64) nothing else reads it.
  A VGG encoder ends in ``relu{k}_1``, so Q cannot pass that ReLU: it stays appended.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn

from ..core.errors import CDCompressError
from .embed import OUTPUT, branch_key, flatten_outputs
from .modules import freeze

Form = Literal["auto", "folded", "appended"]
FORMS: tuple[str, ...] = ("auto", "folded", "appended")
#: Largest |folded - appended| (float64) still counted as the same function: rounding, not a changed graph.
FOLD_TOLERANCE = 1e-9


class DropInEncoder(nn.Module):
    """``student`` followed by one linear map per output (keyed like :func:`~cdcompress.surgery.embed.flatten_outputs`);
    an output without an entry passes unchanged (its map was folded into the student)."""

    def __init__(self, student: nn.Module, embedding: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.student = student
        self.embedding = nn.ModuleDict({branch_key(name): branch for name, branch in embedding.items()})

    def forward(self, x: torch.Tensor) -> Any:
        outputs = self.student(x)
        mapped = {name: self._map(name, t) for name, t in flatten_outputs(outputs).items()}
        return restructure(outputs, mapped)

    def _map(self, name: str, feature: torch.Tensor) -> torch.Tensor:
        key = branch_key(name)
        return self.embedding[key](feature) if key in self.embedding else feature


def restructure(outputs: Any, flat: Mapping[str, torch.Tensor]) -> Any:
    """``flat`` (named as :func:`flatten_outputs` names ``outputs``) back in ``outputs``' structure."""
    if isinstance(outputs, torch.Tensor):
        return flat[OUTPUT]
    if isinstance(outputs, (tuple, list)):
        return type(outputs)(flat[f"{OUTPUT}_{i}"] for i in range(len(outputs)))
    return {key: flat[f"{OUTPUT}_{key}"] for key in outputs}


def drop_in(student: nn.Module, embedding: Mapping[str, nn.Module], example: torch.Tensor, form: Form = "auto") -> nn.Module:
    """A frozen copy of ``student`` whose outputs are ``embedding[name](output)``: the teacher's interface.

    ``embedding`` maps each output name (``output``, ``output_0``.., ``output_<key>``) to its branch Q.
    ``form``: ``appended`` keeps every Q as a separate 1x1 layer; ``folded`` composes every Q into the layer
    before it and refuses (one line) where that is not exact; ``auto`` folds where exact and appends elsewhere.
    A fully folded student is a plain module of the student's class (its output layer at teacher width)."""
    if form not in FORMS:
        raise CDCompressError(f"drop-in form {form!r} is not one of {list(FORMS)}")
    student = freeze(copy.deepcopy(student)).cpu()
    embedding = {name: freeze(copy.deepcopy(q)).cpu() for name, q in embedding.items()}
    with torch.no_grad():
        names = list(flatten_outputs(student(example.cpu())))
    missing = [n for n in names if n not in embedding]
    if missing:
        raise CDCompressError(f"drop-in: no embedding branch for output(s) {missing}; give one per encoder output")
    appended = DropInEncoder(student, {n: embedding[n] for n in names})
    if form == "appended":
        return appended
    folded, unfolded = fold_outputs(appended, example.cpu())
    if unfolded and form == "folded":
        raise CDCompressError(f"drop-in: Q cannot be folded exactly into the layer before output(s) {unfolded} "
                              "(a non-linearity, a reused or shared layer follows it); use form 'auto' or 'appended'")
    return folded


def fold_outputs(model: DropInEncoder, example: torch.Tensor) -> tuple[nn.Module, list[str]]:
    """Fold every output's Q that folds exactly; returns the result and the outputs left appended."""
    layers = producing_layers(model.student, example)
    result, reference = copy.deepcopy(model), copy.deepcopy(model).double()
    unfolded = []
    for name in list(flatten_outputs(_run(model.student, example))):
        key, layer_name = branch_key(name), layers.get(name)
        # Checked in float64, where the composed weights carry no rounding of the model's own dtype.
        trial = copy.deepcopy(result).double()
        if layer_name is None or not _fold_into(trial.student, layer_name, trial.embedding[key]):
            unfolded.append(name)
            continue
        del trial.embedding[key]
        if not _same_function(trial, reference, example.double()):
            unfolded.append(name)  # the layer's output also feeds the rest of the network
            continue
        _fold_into(result.student, layer_name, result.embedding[key])
        del result.embedding[key]
    return (result.student if not len(result.embedding) else result), unfolded


def producing_layers(model: nn.Module, example: torch.Tensor) -> dict[str, str]:
    """For each output, the leaf module whose returned tensor IS that output, untouched since, run once."""
    calls: list[tuple[str, torch.Tensor, int]] = []
    handles = [module.register_forward_hook(_recorder(calls, name)) for name, module in model.named_modules()
               if next(module.children(), None) is None]
    try:
        outputs = _run(model, example)
    finally:
        for handle in handles:
            handle.remove()
    counts: dict[str, int] = {}
    for name, _, _ in calls:
        counts[name] = counts.get(name, 0) + 1
    found = {}
    for out_name, tensor in flatten_outputs(outputs).items():
        last = next(((n, v) for n, t, v in reversed(calls) if t is tensor), None)  # an in-place op returns the same tensor
        if last is not None and last[1] == tensor._version and counts[last[0]] == 1:
            found[out_name] = last[0]
    return found


def _recorder(calls: list[tuple[str, torch.Tensor, int]], name: str):
    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            calls.append((name, output, output._version))

    return hook


def _run(model: nn.Module, example: torch.Tensor) -> Any:
    with torch.no_grad():
        return model(example)


def _fold_into(model: nn.Module, layer_name: str, q: nn.Module) -> bool:
    """Replace ``layer_name`` by Q∘layer (one layer of the teacher's width); False when the types do not compose."""
    layer = model.get_submodule(layer_name)
    if (isinstance(layer, nn.Conv2d) and isinstance(q, nn.Conv2d) and q.kernel_size == (1, 1) and q.groups == 1
            and layer.groups == 1):  # a grouped conv would need Q block-diagonal
        merged = _merged_conv(layer, q)
    elif isinstance(layer, nn.Linear) and isinstance(q, nn.Linear):
        merged = _merged_linear(layer, q)
    else:
        return False
    parent, _, attr = layer_name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, merged)
    return True


def _merged_conv(layer: nn.Conv2d, q: nn.Conv2d) -> nn.Conv2d:
    merged = nn.Conv2d(layer.in_channels, q.out_channels, layer.kernel_size, layer.stride, layer.padding,  # type: ignore[arg-type]
                       layer.dilation, 1, True, layer.padding_mode)
    qw = q.weight.detach().double().flatten(1)  # [C, C']
    weight = torch.einsum("oc,cikl->oikl", qw, layer.weight.detach().double())
    merged.weight.data = weight.to(layer.weight.dtype)
    merged.bias.data = _merged_bias(qw, layer.bias, q.bias).to(layer.weight.dtype)
    return freeze(merged.to(layer.weight.device))


def _merged_linear(layer: nn.Linear, q: nn.Linear) -> nn.Linear:
    merged = nn.Linear(layer.in_features, q.out_features)
    qw = q.weight.detach().double()
    merged.weight.data = (qw @ layer.weight.detach().double()).to(layer.weight.dtype)
    merged.bias.data = _merged_bias(qw, layer.bias, q.bias).to(layer.weight.dtype)
    return freeze(merged.to(layer.weight.device))


def _merged_bias(qw: torch.Tensor, bias: torch.Tensor | None, q_bias: torch.Tensor | None) -> torch.Tensor:
    out = torch.zeros(qw.shape[0], dtype=torch.float64) if q_bias is None else q_bias.detach().double().clone()
    return out if bias is None else out + qw @ bias.detach().double()


def _same_function(a: nn.Module, b: nn.Module, example: torch.Tensor) -> bool:
    """Both float64 models compute the same outputs on ``example`` (any rewiring differs far above rounding)."""
    try:
        fa = flatten_outputs(_run(a, example))
    except RuntimeError:  # the widened output no longer fits a layer that reads it
        return False
    fb = flatten_outputs(_run(b, example))
    return all(fa[n].shape == fb[n].shape
               and float((fa[n] - fb[n]).abs().max()) <= FOLD_TOLERANCE * max(1.0, float(fb[n].abs().max())) for n in fb)
