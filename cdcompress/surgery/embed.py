"""Linear-embedding branches Q that map student features (C') back to teacher width (C).

The paper's branches are 1x1 convolutions with bias and no activation; for token features
([B, N, C]) the same map is a ``Linear``. They exist only during training: the deployable
student never carries them (a drop-in student keeps its output ones, :mod:`cdcompress.surgery.drop_in`),
but the native model format keeps them beside it so a converted
release (whose ``conv*_aux`` layers are exactly these branches) round-trips.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.utils import skip_init

from .modules import default_init


def make_branch(student_channels: int, teacher_channels: int, tokens: bool = False,
                generator: torch.Generator | None = None) -> nn.Module:
    """One embedding branch: 1x1 conv for NCHW maps, Linear for [B, N, C] tokens, initialised as torch would
    but from ``generator`` (the global RNG when None)."""
    if tokens:
        return default_init(skip_init(nn.Linear, student_channels, teacher_channels), generator)
    return default_init(skip_init(nn.Conv2d, student_channels, teacher_channels, kernel_size=1), generator)


class EmbeddingBranches(nn.ModuleDict):
    """Named branches, one per feature tap: ``branches["relu3_1"](student_feature)``."""

    def __init__(self, widths: Mapping[str, tuple[int, int]], tokens: Mapping[str, bool] | None = None,
                 generator: torch.Generator | None = None) -> None:
        tokens = tokens or {}
        super().__init__({tap: make_branch(cs, ct, tokens.get(tap, False), generator)
                          for tap, (cs, ct) in widths.items()})

    @property
    def widths(self) -> dict[str, tuple[int, int]]:
        """``{tap: (student_channels, teacher_channels)}``."""
        return {tap: io_channels(branch) for tap, branch in self.items()}

    @property
    def token_taps(self) -> dict[str, bool]:
        return {tap: isinstance(branch, nn.Linear) for tap, branch in self.items()}


def io_channels(branch: nn.Module) -> tuple[int, int]:
    """``(student_channels, teacher_channels)`` of one branch."""
    if isinstance(branch, nn.Linear):
        return branch.in_features, branch.out_features
    assert isinstance(branch, nn.Conv2d)
    return branch.in_channels, branch.out_channels


# --------------------------------------------------------------------------- feature taps

#: Module types treated as activations when choosing taps automatically.
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.Mish, nn.Hardswish, nn.PReLU)
OUTPUT = "output"


class FeatureTaps:
    """Records the outputs of named submodules through forward hooks (no class is edited).

    A module called several times in one forward (a shared ReLU) records its last call. Use as a
    context manager so the hooks never outlive the computation that needs them.
    """

    def __init__(self, model: nn.Module, names: Iterable[str]) -> None:
        self.model = model
        self.names = list(names)
        self.features: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> FeatureTaps:
        modules = dict(self.model.named_modules())
        for name in self.names:
            if name not in modules:
                raise KeyError(f"no submodule named {name!r} to tap; see model.named_modules()")
            self._handles.append(modules[name].register_forward_hook(self._recorder(name)))
        return self

    def _recorder(self, name: str):
        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            self.features[name] = output

        return hook

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def auto_taps(model: nn.Module, example: torch.Tensor) -> list[str]:
    """The last activation module before each spatial downsampling, in forward order.

    An activation module called more than once per forward (torchvision's ResNet blocks reuse one
    ``relu``) is never chosen: a forward hook sees only its last call, which is not the feature
    before the downsampling.
    """
    calls = _leaf_calls(model, example)
    counts = {name: sum(1 for n, _, _ in calls if n == name) for name, _, _ in calls}
    taps: list[str] = []
    last_activation = None
    for name, is_activation, shrinks in calls:
        if is_activation:
            last_activation = name if counts[name] == 1 else None
        if shrinks and last_activation is not None and last_activation not in taps:
            taps.append(last_activation)
    return taps


def call_counts(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """How often each leaf module runs in one forward of ``example``."""
    counts: dict[str, int] = {}
    for name, _, _ in _leaf_calls(model, example):
        counts[name] = counts.get(name, 0) + 1
    return counts


def _leaf_calls(model: nn.Module, example: torch.Tensor) -> list[tuple[str, bool, bool]]:
    """Every leaf-module call of one forward, in order: (name, is an activation, shrinks the spatial size)."""
    calls: list[tuple[str, bool, bool]] = []
    handles = []
    for name, module in model.named_modules():
        if next(module.children(), None) is not None:
            continue

        def hook(mod: nn.Module, inputs: tuple, output: Any, name: str = name) -> None:
            shrinks = (
                bool(inputs)
                and isinstance(inputs[0], torch.Tensor)
                and isinstance(output, torch.Tensor)
                and inputs[0].dim() == 4
                and output.dim() == 4
                and output.shape[-1] < inputs[0].shape[-1]
            )
            calls.append((name, isinstance(mod, ACTIVATIONS), shrinks))

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return calls


# --------------------------------------------------------------------------- encoder outputs


def flatten_outputs(outputs: Any) -> dict[str, torch.Tensor]:
    """Name every tensor an encoder returns: ``output``, ``output_0``.., or ``output_<key>``."""
    if isinstance(outputs, torch.Tensor):
        return {OUTPUT: outputs}
    if isinstance(outputs, (tuple, list)):
        return {f"{OUTPUT}_{i}": t for i, t in enumerate(outputs)}
    if isinstance(outputs, Mapping):
        return {f"{OUTPUT}_{k}": t for k, t in outputs.items()}
    raise TypeError(f"encoder outputs must be a tensor, tuple/list or dict of tensors, got {type(outputs).__name__}")


def branch_key(tap: str) -> str:
    """ModuleDict keys cannot contain dots: ``layer1.0.relu`` -> ``layer1__0__relu``."""
    return tap.replace(".", "__")


def is_token_feature(feature: torch.Tensor) -> bool:
    """[B, N, C] tokens get a Linear branch, NCHW maps a 1x1 conv."""
    return feature.dim() == 3


def channels_of(feature: torch.Tensor) -> int:
    return int(feature.shape[-1] if is_token_feature(feature) else feature.shape[1])
