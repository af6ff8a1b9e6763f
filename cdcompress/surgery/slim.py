"""Channel slimming with torch-pruning's dependency graph.

The student is the teacher with fewer channels. Slimming runs on the *pair* encoder -> decoder
traced as one graph, so every layer coupled to a pruned channel (the decoder's input convs, a
U-Net's skip consumers, residual adds, BatchNorm) shrinks consistently: the slimmed encoder is the
student's initialisation and the slimmed decoder initialises the stage-3 decoder, as the paper
does with its ``e{k}_base`` / ``d{k}_base`` pair.

Width specs: a float ratio (``0.25`` keeps a quarter of every prunable layer's channels), a
mapping ``{layer name: ratio or absolute width}`` (``"*"`` gives the default for unlisted layers,
otherwise they keep full width), or any object implementing :class:`Slimmer`.
Layers whose output width equals the image's channel count (input normalisation, RGB heads)
are never pruned, nor are names passed in ``keep``.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
import torch_pruning as tp
from torch import nn

from ..core.errors import SlimmingError
from ..core.registry import IMPORTANCES, split_reference
from ..core.user_code import accepted
from ..data.batches import Batch, as_batch
from .importance import PRUNABLE
from .modules import EncoderDecoderPair, count_parameters

log = logging.getLogger(__name__)

WidthSpec = float | Mapping[str, float | int]
ScoreFn = Callable[[Any], torch.Tensor]
"""Torch-Pruning's importance protocol: ``importance(group) -> scores`` over the group's root channels."""


@runtime_checkable
class Slimmer(Protocol):
    """Anything that slims a module in place and reports the kept output channels per layer."""

    def slim(self, module: nn.Module, example_inputs: tuple[Any, ...], keep: Sequence[str]) -> dict[str, list[int]]: ...


def _prunable_layers(module: nn.Module) -> dict[nn.Module, str]:
    return {m: n for n, m in module.named_modules() if isinstance(m, PRUNABLE)}


def resolve_importance(importance: str | Mapping[str, Any] | ScoreFn, seed: int = 0) -> ScoreFn:
    """A registered name, ``{name, kwargs}``, or an importance object (e.g. ``tp.importance.GroupMagnitudeImportance()``)."""
    if callable(importance):
        return importance
    name, kwargs = split_reference(importance)
    factory = IMPORTANCES.get(name)
    return factory(**{**accepted(factory, {"seed": seed}), **kwargs})


# --------------------------------------------------------------------------- the slimmer


def _round_width(width: int, channels: int, multiple: int) -> int:
    """``width`` rounded to the nearest multiple of ``multiple`` in [multiple, channels]."""
    if multiple <= 1 or channels % multiple:
        return width
    return min(channels, max(multiple, int(round(width / multiple)) * multiple))


def _group_multiple(group: Any, round_to: int) -> int:
    """Widths of a group must stay divisible by every GroupNorm's groups and grouped conv's groups in it."""
    multiple = max(1, round_to)
    for item in group:
        layer = item.dep.target.module
        if isinstance(layer, nn.GroupNorm):
            multiple = math.lcm(multiple, layer.num_groups)
        elif isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)) and 1 < layer.groups < layer.in_channels:
            multiple = math.lcm(multiple, layer.groups)
    return multiple


@dataclass
class ChannelSlimmer:
    """Per-layer filter pruning over torch-pruning groups.

    Every Conv2d, ConvTranspose2d and Linear roots a group; torch-pruning's dependency graph carries the
    cut to the coupled layers (norms, depthwise convs, the consumers' inputs, both sides of added or
    concatenated skips). ``round_to`` makes every width a multiple of it (hardware-friendly widths);
    GroupNorm and grouped convs add their group counts to that multiple automatically.
    """

    width: WidthSpec = 0.5
    importance: str | Mapping[str, Any] | ScoreFn = "l1"
    seed: int = 0
    calibrate: Callable[[nn.Module], torch.Tensor] | None = None
    round_to: int = 1
    widths_requested: dict[str, int] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        _check_width_spec(self.width)
        if self.round_to < 1:
            raise SlimmingError(f"round_to must be >= 1, got {self.round_to}")
        self._score = resolve_importance(self.importance, self.seed)

    def target_width(self, name: str, channels: int) -> int:
        spec = self.width
        if isinstance(spec, Mapping):
            if name in spec:
                value = spec[name]
            elif "*" in spec:
                value = spec["*"]
            else:
                return channels
        else:
            value = spec
        width = value if isinstance(value, int) else max(1, round(channels * float(value)))
        if width > channels:
            raise SlimmingError(f"layer {name!r}: requested width {width} exceeds its {channels} channels")
        return width

    def slim(self, module: nn.Module, example_inputs: tuple[Any, ...], keep: Sequence[str]) -> dict[str, list[int]]:
        layers = _prunable_layers(module)
        with torch.enable_grad():  # torch-pruning traces through autograd, also when called under no_grad
            graph = tp.DependencyGraph().build_dependency(module, example_inputs=example_inputs, verbose=False)
        ignored = [m for m, n in layers.items() if n in set(keep)]
        if getattr(self._score, "needs_gradients", False):
            self._fill_gradients(module)
        kept: dict[str, list[int]] = {}
        for group in list(graph.get_all_groups(ignored_layers=ignored, root_module_types=PRUNABLE)):
            root = group[0].dep.target.module
            name = layers[root]
            channels = graph.get_out_channels(root)
            width = _round_width(self.target_width(name, channels), channels, _group_multiple(group, self.round_to))
            self.widths_requested[name] = width
            if width == channels:
                continue
            scores = torch.as_tensor(self._score(group)).detach().float().cpu()
            if scores.numel() != channels:
                raise SlimmingError(f"importance returned {scores.numel()} scores for the {channels} channels of {name!r}")
            keep_idx = sorted(torch.topk(scores, width).indices.tolist())
            drop_idx = sorted(set(range(channels)) - set(keep_idx))
            graph.get_pruning_group(root, group[0].dep.handler, drop_idx).prune()
            kept[name] = keep_idx
        return kept

    def _fill_gradients(self, module: nn.Module) -> None:
        if self.calibrate is None:
            raise SlimmingError("taylor importance needs gradients: pass a calibration loss (calibrate=...) to the slimmer")
        module.zero_grad(set_to_none=True)
        with torch.enable_grad():
            self.calibrate(module).backward()


def _check_width_spec(spec: Any) -> None:
    values = spec.values() if isinstance(spec, Mapping) else [spec]
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SlimmingError(f"width {value!r} must be a ratio in (0, 1] or a positive integer width")
        if isinstance(value, float) and not 0 < value <= 1:
            raise SlimmingError(f"width ratio {value} must be in (0, 1]")
        if isinstance(value, int) and value < 1:
            raise SlimmingError(f"absolute width {value} must be >= 1")


def image_width_layers(module: nn.Module, image_channels: int) -> list[str]:
    """Layers whose output width is the image's channel count: input normalisation and RGB heads."""
    return [n for m, n in _prunable_layers(module).items() if _out_channels(m) == image_channels]


def head_layers(pair: nn.Module, example_inputs: tuple[Any, ...]) -> list[str]:
    """The last prunable layer the decoder runs: its output channels are the pair's output channels."""
    layers = _prunable_layers(pair.decoder)
    order: list[str] = []
    handles = [m.register_forward_hook(lambda *_a, n=n: order.append(n)) for m, n in layers.items()]
    try:
        with torch.no_grad():
            pair(*example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return [f"decoder.{order[-1]}".rstrip(".")] if order else []


def output_layers(encoder: nn.Module, example_inputs: tuple[Any, ...]) -> list[str]:
    """The layers whose outputs become the encoder's outputs: for each output, the last prunable layer run before
    it with the same channel count and spatial size (activations and norms between keep both)."""
    layers = _prunable_layers(encoder)
    runs: list[tuple[str, tuple[int, ...]]] = []
    handles = [m.register_forward_hook(lambda _m, _i, out, n=n: runs.append((n, tuple(out.shape))))
               for m, n in layers.items()]
    try:
        with torch.no_grad():
            outputs = encoder(*example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    found = []
    for shape in _shapes(outputs):
        match = next((n for n, s in reversed(runs) if s[1:] == shape[1:] or (len(s) == 3 and s[-1] == shape[-1])), None)
        if match is not None:
            found.append(f"encoder.{match}")
    return sorted(set(found))


def _out_channels(layer: nn.Module) -> int:
    if isinstance(layer, nn.Linear):
        return layer.out_features
    return layer.out_channels


@dataclass(frozen=True)
class LayerWidth:
    """One prunable layer's output width before and after slimming, and what was asked of it."""

    name: str
    before: int
    after: int
    requested: int | None  # None: the layer is protected or follows a coupled layer

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "before": self.before, "after": self.after, "requested": self.requested}


@dataclass
class SlimResult:
    """A slimmed copy of the pair; the originals are untouched."""

    encoder: nn.Module
    decoder: nn.Module
    kept: dict[str, list[int]]
    encoder_params: tuple[int, int]  # (before, after)
    decoder_params: tuple[int, int]
    layers: list[LayerWidth] = field(default_factory=list)
    protected: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    budget: Any = None  # the BudgetSearch (cdcompress.distill.width_search) that chose the widths, if a target did

    @property
    def compression(self) -> float:
        """Teacher encoder parameters / student encoder parameters: how many times smaller (15.5 for the paper's 15.5x)."""
        return self.encoder_params[0] / self.encoder_params[1]

    @property
    def encoder_kept(self) -> float:
        """The share of the teacher encoder's parameters the student kept (1 / :attr:`compression`)."""
        return self.encoder_params[1] / self.encoder_params[0]

    @property
    def decoder_kept(self) -> float:
        """The share of the collaborator's parameters the slimmed decoder (the stage-3 start) kept."""
        return self.decoder_params[1] / self.decoder_params[0]

    def widths(self) -> dict[str, int]:
        """Absolute output width of every prunable layer (``encoder.*`` / ``decoder.*``): reproduces the architecture."""
        return {layer.name: layer.after for layer in self.layers}

    def summary(self) -> str:
        """Per-layer widths and both parameter ratios as a Markdown table."""
        lines = ["| layer | width before | after | requested |", "|---|---|---|---|"]
        for layer in self.layers:
            asked = "protected" if layer.name in self.protected else ("-" if layer.requested is None else layer.requested)
            lines.append(f"| {layer.name} | {layer.before} | {layer.after} | {asked} |")
        lines.append(f"\nencoder {self.encoder_params[0]:,} -> {self.encoder_params[1]:,} parameters "
                     f"({self.compression:.1f}x smaller); decoder {self.decoder_params[0]:,} -> "
                     f"{self.decoder_params[1]:,} ({1 / self.decoder_kept:.1f}x smaller)")
        lines += [f"warning: {w}" for w in self.warnings]
        if self.budget is not None:
            lines += ["", self.budget.summary()]
        return "\n".join(lines)


@dataclass
class Slimming:
    """How the student is cut from the teacher (one concern of :func:`cdcompress.apply`).

    ``width``: ratio, ``{layer: ratio | width}`` or a :class:`Slimmer`; ``importance``: a registered name
    (``l1``, ``l2``, ``taylor``, ``random``), ``{name, kwargs}`` or an importance object such as
    ``tp.importance.GroupMagnitudeImportance()``; ``round_to``: widths in multiples of this;
    ``keep``: layers never pruned (``encoder.x`` / ``decoder.y``; unprefixed names are the encoder's);
    ``init``: ``pruned`` keeps the teacher's strongest filters, ``random`` re-initialises them.
    ``latent``: keep every encoder output at the teacher's width (a latent interface): the layers producing the
    outputs are not slimmed and their branches are the identity, frozen, so the student's own outputs are what
    the teacher's decoder reads (no Q to keep; see docs/drop_in.md).
    ``target``: a :class:`~cdcompress.core.budget.Budget` (or its fields as a mapping, e.g. ``{"macs": "50%"}``):
    the widths are then searched to meet it, and ``width`` is not used (see :mod:`cdcompress.distill.width_search`).
    ``calibration``: the data a gradient criterion (``taylor``) scores filters on, by the pair's MSE to the
    targets: ``(inputs, targets)`` (or a :class:`~cdcompress.data.batches.Batch`), or bare images when the pair
    reconstructs its input. Required by such criteria: a made-up image scores filters for a task the pair
    does not do. Every field is checked here, so a bad value fails before any model is copied.
    """

    width: WidthSpec | Slimmer = 0.5
    importance: str | Mapping[str, Any] | ScoreFn = "l1"
    round_to: int = 1
    keep: Sequence[str] = ()
    init: str = "pruned"
    seed: int = 0
    calibration: Batch | torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)
    target: Any = None
    latent: bool = False

    def __post_init__(self) -> None:
        if self.target is not None:
            from ..core.budget import Budget

            self.target = Budget.of(self.target)
        if not isinstance(self.width, Slimmer):
            _check_width_spec(self.width)
        if not isinstance(self.latent, bool):
            raise SlimmingError(f"latent must be True or False, got {self.latent!r}")
        if self.init not in ("pruned", "random"):
            raise SlimmingError(f"init must be 'pruned' or 'random', got {self.init!r}")
        for name in ("round_to", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or (name == "round_to" and value < 1):
                raise SlimmingError(f"{name} must be an integer{' >= 1' if name == 'round_to' else ''}, got {value!r}")
        if isinstance(self.keep, str) or not all(isinstance(k, str) for k in self.keep):
            raise SlimmingError(f"keep must be a list of layer names, got {self.keep!r}; e.g. keep=['encoder.conv11']")
        if self.calibration is not None:
            self.calibration = _calibration_batch(self.calibration)
        if needs_gradients(self.importance, self.seed) and self.calibration is None:
            raise SlimmingError("importance 'taylor' needs calibration data: pass Slimming(..., calibration=(inputs, "
                                "targets)) from your training data, or images alone if the pair reconstructs its input")

    @classmethod
    def of(cls, spec: WidthSpec | Slimmer | Slimming, seed: int = 0) -> Slimming:
        """``apply(slim=...)`` accepts a bare width or slimmer as shorthand for ``Slimming(width=...)``."""
        return spec if isinstance(spec, Slimming) else cls(width=spec, seed=seed)

    def calibration_loss(self) -> Callable[[nn.Module], torch.Tensor] | None:
        """The loss a gradient criterion differentiates: the pair's MSE to the calibration targets (None without data)."""
        batch = self.calibration
        if batch is None:
            return None

        def loss(pair: nn.Module) -> torch.Tensor:
            output = pair(batch.input.cpu())
            if not isinstance(output, torch.Tensor) or output.shape != batch.target.shape:
                shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
                raise SlimmingError(f"taylor calibration: the pair outputs {shape} but the targets are "
                                    f"{tuple(batch.target.shape)}; pass calibration=(inputs, targets) with targets "
                                    "shaped like the pair's output")
            return torch.nn.functional.mse_loss(output, batch.target.cpu().to(output.dtype))

        return loss


def _calibration_batch(data: object) -> Batch:
    pair = isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)
    if not (pair or isinstance(data, (torch.Tensor, Batch))):
        raise SlimmingError(f"calibration must be images [N, C, H, W] or an (inputs, targets) pair of tensors, "
                            f"got {type(data).__name__}")
    return as_batch(data)


def needs_gradients(importance: str | Mapping[str, Any] | ScoreFn, seed: int = 0) -> bool:
    """Whether ``importance`` scores filters by gradients (``taylor``), so slimming needs calibration data."""
    return bool(getattr(resolve_importance(importance, seed), "needs_gradients", False))


def slim_pair(
    encoder: nn.Module,
    decoder: nn.Module,
    example_inputs: tuple[Any, ...],
    width: WidthSpec | Slimmer = 0.5,
    importance: str | Mapping[str, Any] | ScoreFn = "l1",
    keep: Sequence[str] = (),
    seed: int = 0,
    calibrate: Callable[[nn.Module], torch.Tensor] | None = None,
    round_to: int = 1,
    latent: bool = False,
) -> SlimResult:
    """Slim copies of ``encoder`` and ``decoder`` jointly; names in ``width``/``keep`` are prefixed
    ``encoder.`` / ``decoder.`` (unprefixed names refer to the encoder).

    The decoder's head (its last prunable layer) and layers of the image's channel count are never
    pruned, so the pair's output keeps its channels; with ``latent`` the layers producing the encoder's
    outputs are not either, so the student's outputs keep the teacher's shapes."""
    if not isinstance(example_inputs, tuple):
        # torch-pruning traces a bare batch-1 tensor as a sequence and silently prunes nothing.
        raise SlimmingError("example_inputs must be a tuple, e.g. (torch.rand(1, 3, 64, 64),)")
    pair = EncoderDecoderPair(copy.deepcopy(encoder), copy.deepcopy(decoder)).cpu().eval()
    for p in pair.parameters():
        p.requires_grad_(True)
    inputs = tuple(t.cpu() for t in example_inputs)
    before = {n: _out_channels(m) for m, n in _prunable_layers(pair).items()}
    before_groups = {n: m.num_channels // m.num_groups for n, m in pair.named_modules() if isinstance(m, nn.GroupNorm)}
    with torch.no_grad():
        output_shapes = _shapes(pair(*inputs))
        encoder_shapes = _shapes(pair.encoder(*inputs))
    image_channels = int(example_inputs[0].shape[1])
    protected = sorted(set(image_width_layers(pair, image_channels)) | set(head_layers(pair, inputs))
                       | {_qualify(n) for n in keep} | set(output_layers(pair.encoder, inputs) if latent else ()))
    unknown = sorted(set(protected) - set(before))
    if unknown:
        raise SlimmingError(f"keep names unknown layer(s) {unknown}; name Conv/ConvTranspose/Linear layers as "
                            "encoder.<name> or decoder.<name>")
    slimmer = width if isinstance(width, Slimmer) else ChannelSlimmer(_qualify_spec(width), importance, seed, calibrate,
                                                                     round_to)
    kept = slimmer.slim(pair, inputs, protected)
    requested = getattr(slimmer, "widths_requested", {})
    layers = [LayerWidth(n, before[n], _out_channels(m), requested.get(n)) for m, n in _prunable_layers(pair).items()]
    result = SlimResult(
        pair.encoder,
        pair.decoder,
        kept,
        (count_parameters(encoder), count_parameters(pair.encoder)),
        (count_parameters(decoder), count_parameters(pair.decoder)),
        layers,
        protected,
    )
    _verify(result, requested)
    result.warnings = _groupnorm_warnings(pair, before_groups)
    for warning in result.warnings:
        log.warning("%s", warning)
    with torch.no_grad():
        if _shapes(pair(*inputs)) != output_shapes:
            raise SlimmingError("slimming changed the decoder's output shape; add its output layer to keep")
        if latent and _shapes(pair.encoder(*inputs)) != encoder_shapes:
            raise SlimmingError("latent interface: the student's outputs are narrower than the teacher's; name the "
                                "layers that produce the encoder's outputs in keep (encoder.<name>)")
    for module in (result.encoder, result.decoder):
        _sync_spec(module)
        module.zero_grad(set_to_none=True)
    return result


def _groupnorm_warnings(pair: nn.Module, channels_per_group: Mapping[str, int]) -> list[str]:
    """Slimming keeps a GroupNorm's group count, so its groups get narrower; at one channel per group it has become
    an instance norm, which removes every channel's mean (an image's colour and brightness, in a U-Net)."""
    found = []
    for name, module in pair.named_modules():
        if isinstance(module, nn.GroupNorm) and module.num_channels == module.num_groups and channels_per_group[name] > 1:
            found.append(f"{name}: GroupNorm({module.num_groups}) now has one channel per group (an instance norm; "
                         f"the teacher had {channels_per_group[name]}): give the teacher fewer groups or slim less")
    return found


def _shapes(outputs: Any) -> list[tuple[int, ...]]:
    if isinstance(outputs, torch.Tensor):
        return [tuple(outputs.shape)]
    values = outputs.values() if isinstance(outputs, Mapping) else outputs
    return [shape for value in values for shape in _shapes(value)]


def _qualify(name: str) -> str:
    return name if name.startswith(("encoder.", "decoder.")) or name == "*" else f"encoder.{name}"


def _qualify_spec(spec: WidthSpec) -> WidthSpec:
    if isinstance(spec, Mapping):
        return {_qualify(k): v for k, v in spec.items()}
    return spec


def _verify(result: SlimResult, requested: Mapping[str, int]) -> None:
    """The widths asked for are the widths obtained, and the encoder really shrank."""
    before, after = result.encoder_params
    if after >= before:
        raise SlimmingError(
            f"slimming removed nothing (encoder still has {after:,} parameters); check the width spec, "
            "the kept layers and that example_inputs is a tuple"
        )
    for layer in result.layers:
        if layer.requested is not None and layer.after != layer.requested:
            raise SlimmingError(f"layer {layer.name!r} has {layer.after} channels after slimming, "
                                f"{layer.requested} were requested")


def _sync_spec(module: nn.Module) -> None:
    """Architectures that describe themselves with a spec (the VGG family) re-read their widths."""
    sync = getattr(module, "sync_spec", None)
    if callable(sync):
        sync()


def vgg_mirror_widths(encoder_widths: Mapping[str, int | float], conv_order: Sequence[str]) -> dict[str, int | float]:
    """Width spec for a VGG pair: decoder ``convXY`` outputs the width of the encoder conv before XY (unless the
    spec names that decoder layer itself: ``decoder.convXY``)."""
    spec: dict[str, int | float] = {}
    explicit = {name: value for name, value in encoder_widths.items() if name.startswith("decoder.")}
    for name, value in encoder_widths.items():
        if name in explicit:
            continue
        key = name.removeprefix("encoder.")
        spec[f"encoder.{key}"] = value
        if key in conv_order:
            index = conv_order.index(key)
            if index + 1 < len(conv_order):
                spec[f"decoder.{conv_order[index + 1]}"] = value
    if "*" in encoder_widths:
        spec["*"] = encoder_widths["*"]
    spec.update(explicit)  # a decoder layer named explicitly keeps its own width
    return spec
