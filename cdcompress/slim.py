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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
import torch_pruning as tp
from torch import nn

from .errors import CDCompressError

IMPORTANCE_CRITERIA = ("l1", "l2", "random", "taylor")
WidthSpec = float | Mapping[str, float | int]


class SlimmingError(CDCompressError):
    """Slimming could not produce the requested widths."""


@runtime_checkable
class Slimmer(Protocol):
    """Anything that slims a module in place and reports the kept output channels per layer."""

    def slim(self, module: nn.Module, example_inputs: tuple[Any, ...], keep: Sequence[str]) -> dict[str, list[int]]: ...


class EncoderDecoderPair(nn.Module):
    """``decoder(encoder(x))`` as one module, so one dependency graph couples both sides."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x: torch.Tensor) -> Any:
        return self.decoder(self.encoder(x))


def _prunable_layers(module: nn.Module) -> dict[nn.Module, str]:
    return {m: n for n, m in module.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))}


def _out_filter_norms(layer: nn.Module, p: int) -> torch.Tensor:
    """Per-output-filter Lp norm of a layer's weight (the paper's L1 filter pruning for p=1)."""
    weight = layer.weight.detach()
    if isinstance(layer, nn.ConvTranspose2d):
        weight = weight.transpose(0, 1)
    return weight.flatten(1).abs().pow(p).sum(1).pow(1.0 / p)


def _taylor_scores(layer: nn.Module) -> torch.Tensor:
    if layer.weight.grad is None:
        raise SlimmingError("taylor importance needs gradients: pass a calibration loss (calibrate=...) to the slimmer")
    weight, grad = layer.weight.detach(), layer.weight.grad.detach()
    if isinstance(layer, nn.ConvTranspose2d):
        weight, grad = weight.transpose(0, 1), grad.transpose(0, 1)
    return (weight * grad).flatten(1).sum(1).abs()


@dataclass
class ChannelSlimmer:
    """Per-layer filter pruning over torch-pruning groups.

    Importance of a channel is computed from the output filters that produce it only (summed over
    coupled producers, e.g. both sides of a residual add) -- not torch-pruning's default group
    reduction, which mixes in the consumers' input weights and keeps different filters than the
    paper's per-filter L1 criterion.
    """

    width: WidthSpec = 0.5
    importance: str = "l1"
    seed: int = 0
    calibrate: Callable[[nn.Module], torch.Tensor] | None = None
    widths_requested: dict[str, int] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        if self.importance not in IMPORTANCE_CRITERIA:
            raise SlimmingError(f"unknown importance {self.importance!r}; choose one of {IMPORTANCE_CRITERIA}")
        _check_width_spec(self.width)

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
        graph = tp.DependencyGraph().build_dependency(module, example_inputs=example_inputs, verbose=False)
        ignored = [m for m, n in layers.items() if n in set(keep)]
        if self.importance == "taylor":
            self._fill_gradients(module)
        generator = torch.Generator().manual_seed(self.seed)
        kept: dict[str, list[int]] = {}
        for group in list(graph.get_all_groups(ignored_layers=ignored, root_module_types=(nn.Conv2d, nn.Linear))):
            root = group[0].dep.target.module
            name = layers[root]
            channels = graph.get_out_channels(root)
            width = self.target_width(name, channels)
            self.widths_requested[name] = width
            if width == channels:
                continue
            scores = self._group_scores(graph, group, channels, generator)
            keep_idx = sorted(torch.topk(scores, width).indices.tolist())
            drop_idx = sorted(set(range(channels)) - set(keep_idx))
            graph.get_pruning_group(root, group[0].dep.handler, drop_idx).prune()
            kept[name] = keep_idx
        return kept

    def _group_scores(self, graph: tp.DependencyGraph, group: Any, channels: int, gen: torch.Generator) -> torch.Tensor:
        if self.importance == "random":
            return torch.rand(channels, generator=gen)
        total = torch.zeros(channels)
        for item in group:
            dep, idxs = item.dep, item.idxs
            layer = dep.target.module
            if not graph.is_out_channel_pruning_fn(dep.handler) or not isinstance(layer, tuple(_PRUNABLE)):
                continue
            if self.importance == "taylor":
                scores = _taylor_scores(layer)
            else:
                scores = _out_filter_norms(layer, 1 if self.importance == "l1" else 2)
            root_idxs = item.root_idxs
            total[root_idxs] += scores[idxs].cpu()
        return total

    def _fill_gradients(self, module: nn.Module) -> None:
        if self.calibrate is None:
            raise SlimmingError("taylor importance needs gradients: pass a calibration loss (calibrate=...) to the slimmer")
        module.zero_grad(set_to_none=True)
        with torch.enable_grad():
            self.calibrate(module).backward()


_PRUNABLE = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


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


def _out_channels(layer: nn.Module) -> int:
    if isinstance(layer, nn.Linear):
        return layer.out_features
    return layer.out_channels


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass
class SlimResult:
    """A slimmed copy of the pair; the originals are untouched."""

    encoder: nn.Module
    decoder: nn.Module
    kept: dict[str, list[int]]
    encoder_params: tuple[int, int]  # (before, after)
    decoder_params: tuple[int, int]

    @property
    def compression(self) -> float:
        return self.encoder_params[0] / self.encoder_params[1]


def slim_pair(
    encoder: nn.Module,
    decoder: nn.Module,
    example_inputs: tuple[Any, ...],
    width: WidthSpec | Slimmer = 0.5,
    importance: str = "l1",
    keep: Sequence[str] = (),
    seed: int = 0,
    calibrate: Callable[[nn.Module], torch.Tensor] | None = None,
) -> SlimResult:
    """Slim copies of ``encoder`` and ``decoder`` jointly; names in ``width``/``keep`` are prefixed
    ``encoder.`` / ``decoder.`` (unprefixed names refer to the encoder)."""
    if not isinstance(example_inputs, tuple):
        # torch-pruning traces a bare batch-1 tensor as a sequence and silently prunes nothing.
        raise SlimmingError("example_inputs must be a tuple, e.g. (torch.rand(1, 3, 64, 64),)")
    pair = EncoderDecoderPair(copy.deepcopy(encoder), copy.deepcopy(decoder)).cpu().eval()
    for p in pair.parameters():
        p.requires_grad_(True)
    image_channels = int(example_inputs[0].shape[1])
    protected = set(image_width_layers(pair, image_channels)) | {_qualify(n) for n in keep}
    slimmer = width if isinstance(width, Slimmer) else ChannelSlimmer(_qualify_spec(width), importance, seed, calibrate)
    kept = slimmer.slim(pair, tuple(t.cpu() for t in example_inputs), sorted(protected))
    result = SlimResult(
        pair.encoder,
        pair.decoder,
        kept,
        (count_parameters(encoder), count_parameters(pair.encoder)),
        (count_parameters(decoder), count_parameters(pair.decoder)),
    )
    _verify(result, slimmer)
    for module in (result.encoder, result.decoder):
        _sync_spec(module)
        module.zero_grad(set_to_none=True)
    return result


def _qualify(name: str) -> str:
    return name if name.startswith(("encoder.", "decoder.")) or name == "*" else f"encoder.{name}"


def _qualify_spec(spec: WidthSpec) -> WidthSpec:
    if isinstance(spec, Mapping):
        return {_qualify(k): v for k, v in spec.items()}
    return spec


def _verify(result: SlimResult, slimmer: Slimmer) -> None:
    before, after = result.encoder_params
    if after >= before:
        raise SlimmingError(
            f"slimming removed nothing (encoder still has {after:,} parameters); check the width spec, "
            "the kept layers and that example_inputs is a tuple"
        )
    if isinstance(slimmer, ChannelSlimmer):
        layers = {n: m for m, n in _prunable_layers(EncoderDecoderPair(result.encoder, result.decoder)).items()}
        for name, width in slimmer.widths_requested.items():
            got = _out_channels(layers[name])
            if got != width:
                raise SlimmingError(f"layer {name!r} has {got} channels after slimming, {width} were requested")


def _sync_spec(module: nn.Module) -> None:
    """Architectures that describe themselves with a spec (the VGG family) re-read their widths."""
    sync = getattr(module, "sync_spec", None)
    if callable(sync):
        sync()


def vgg_mirror_widths(encoder_widths: Mapping[str, int | float], conv_order: Sequence[str]) -> dict[str, int | float]:
    """Width spec for a VGG pair: decoder ``convXY`` outputs the width of the encoder conv before XY."""
    spec: dict[str, int | float] = {}
    for name, value in encoder_widths.items():
        key = name.removeprefix("encoder.")
        spec[f"encoder.{key}"] = value
        if key in conv_order:
            index = conv_order.index(key)
            if index + 1 < len(conv_order):
                spec[f"decoder.{conv_order[index + 1]}"] = value
    if "*" in encoder_widths:
        spec["*"] = encoder_widths["*"]
    return spec
