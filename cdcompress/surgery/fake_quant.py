"""INT8 fake quantization of VGG encoders and decoders: the exact scheme the INT8 exporter emits, trainable.

Why: post-training quantization rounds a network that never saw rounding, and the shallow levels of a slim
student lose up to 13 dB to it. Quantization-aware training runs the forward pass with the deployed rounding
(straight-through gradients), so the weights learn to live with it; that only pays when the exported graph
rounds exactly as training did. The scheme here is onnxruntime's static QDQ scheme, value for value:

- weights: per output channel, symmetric int8 in [-127, 127], scale ``2·max|w| / 254`` (recomputed from the
  current weights at every forward, as the exporter computes it from the final ones);
- activations: per tensor, asymmetric uint8 in [0, 255], scale and zero point from a fixed range ``[rmin, rmax]``
  (widened to include 0), *calibrated* on photos and then kept: the exporter is handed these ranges;
- where the graph quantizes: an encoder's ``conv0`` output and every ReLU output; a decoder's input and every ReLU
  output but the RGB one. Padding, pooling and nearest upsampling move quantized values unchanged, so they need no
  point of their own. The convolutions touching pixels (an encoder's ``conv0``, a decoder's ``conv11``) stay float.

Bias is left float here while the exporter stores it as int32 at scale ``s_in·s_w``; the difference, at most half
of that step, is far below one output step. Everything attaches as hooks, a weight parametrization and a
``fake_quant`` submodule (whose buffers hold the ranges, so training checkpoints carry them) and detaches cleanly,
leaving the float network and its ranges (:func:`detach_fake_quant`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

#: Symmetric int8 weights (onnxruntime's QInt8 with symmetric ranges).
WEIGHT_QMIN, WEIGHT_QMAX = -127, 127
#: Asymmetric uint8 activations.
ACTIVATION_QMIN, ACTIVATION_QMAX = 0, 255
#: Default calibration percentile: the range covers this share of each tensor's values.
DEFAULT_PERCENTILE = 99.99
#: Values drawn per calibration batch and point (percentiles of a random sample; torch.quantile caps its input).
SAMPLE_VALUES = 1 << 18
SUBMODULE = "fake_quant"
INPUT = "input"

Ranges = dict[str, tuple[float, float]]


class QuantizationError(ValueError):
    """A network or range set that the INT8 scheme cannot take."""


def weight_scales(weight: torch.Tensor) -> torch.Tensor:
    """Per-output-channel scale of symmetric int8 weights, computed as onnxruntime does (float64, then float32)."""
    absmax = weight.detach().abs().flatten(1).amax(dim=1).double()
    scale = (2 * absmax / (WEIGHT_QMAX - WEIGHT_QMIN)).float()
    return torch.where(scale < torch.finfo(torch.float32).tiny, torch.ones_like(scale), scale)


def activation_qparams(rmin: float, rmax: float) -> tuple[float, int]:
    """Scale (float32) and zero point of uint8 activations for the range ``[rmin, rmax]``, as onnxruntime computes
    them: the range is widened to include 0, the zero point rounded half to even."""
    low, high = np.float32(min(rmin, 0.0)), np.float32(max(rmax, 0.0))
    scale = (np.float64(high) - np.float64(low)) / (ACTIVATION_QMAX - ACTIVATION_QMIN)
    if np.float32(scale) < np.finfo(np.float32).tiny:
        return 1.0, 0
    zero_point = int(np.round(ACTIVATION_QMIN - np.float64(low) / scale))
    return float(np.float32(scale)), min(max(zero_point, ACTIVATION_QMIN), ACTIVATION_QMAX)


class WeightFakeQuant(nn.Module):
    """Parametrization: a convolution's weight as its per-channel int8 rounding (straight-through gradient)."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.is_meta:  # shape-only passes (MAC counting) carry no values to round
            return weight
        scale = weight_scales(weight).to(weight.device)
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, WEIGHT_QMIN, WEIGHT_QMAX)


class ActivationFakeQuant(nn.Module):
    """Per-tensor uint8 fake quantization with a fixed range; while ``observing`` it records values instead."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("rmin", torch.zeros(()))
        self.register_buffer("rmax", torch.zeros(()))
        self.observed: list[torch.Tensor] | None = None

    @property
    def calibrated(self) -> bool:
        return bool(self.rmax > self.rmin)

    def qparams(self) -> tuple[float, int]:
        return activation_qparams(float(self.rmin), float(self.rmax))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_meta:  # shape-only passes (MAC counting) carry no values to round
            return x
        if self.observed is not None:
            self.observed.append(_sample(x.detach()))
            return x
        if not self.calibrated:
            raise QuantizationError("fake quantization has no calibrated range; run calibrate(...) first")
        scale, zero_point = self.qparams()
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, ACTIVATION_QMIN, ACTIVATION_QMAX)

    def output_hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return self(output)

    def input_hook(self, module: nn.Module, inputs: tuple) -> tuple:
        return (self(inputs[0]), *inputs[1:])

    def set_range(self, rmin: float, rmax: float) -> None:
        self.rmin.fill_(rmin)
        self.rmax.fill_(rmax)


def _sample(x: torch.Tensor) -> torch.Tensor:
    flat = x.float().reshape(-1)
    if flat.numel() <= SAMPLE_VALUES:
        return flat.cpu()
    generator = torch.Generator(device=flat.device).manual_seed(flat.numel())
    index = torch.randint(flat.numel(), (SAMPLE_VALUES,), generator=generator, device=flat.device)
    return flat[index].cpu()


# ------------------------------------------------------------------------------------------- which points

def _is_encoder(net: nn.Module) -> bool:
    """A VGG-family network (``models/vgg.py``: its forward runs ``net.plan``, module names in order) is an encoder
    when it starts with the 1x1 input normalisation ``conv0``, a decoder when it ends with the RGB ``conv11``. Read
    from that structure: network surgery sits below the architectures and does not import them."""
    plan = getattr(net, "plan", None)
    if not isinstance(plan, list) or not plan or not hasattr(net, "spec"):
        raise QuantizationError(f"INT8 fake quantization takes VGG-family encoders and decoders, got {type(net).__name__}")
    return plan[0] == "conv0"


def pixel_convs(net: nn.Module) -> list[str]:
    """The convolutions that stay float: the encoder's input normalisation, the decoder's RGB output."""
    return ["conv0"] if _is_encoder(net) else ["conv11"]


def quant_points(net: nn.Module) -> list[str]:
    """Where the INT8 graph quantizes activations, in forward order (see the module docstring)."""
    relus = [n for n in net.plan if n.startswith("relu")]
    if _is_encoder(net):
        return ["conv0", *relus]
    return [INPUT, *(r for r in relus if r != "relu1_1")]


def quantized_convs(net: nn.Module) -> list[str]:
    return [n for n in net.plan if n.startswith("conv") and n not in pixel_convs(net)]


# ------------------------------------------------------------------------------------------- attach / detach

def is_fake_quantized(net: nn.Module) -> bool:
    return isinstance(getattr(net, SUBMODULE, None), nn.ModuleDict)


def attach_fake_quant(net: nn.Module, ranges: Mapping[str, tuple[float, float]] | None = None) -> nn.Module:
    """Make ``net`` (in place) run as its INT8 graph will: weights and activations fake-quantized. ``ranges`` (from
    an earlier calibration or a saved model) sets the activation ranges; without them, :func:`calibrate` first."""
    if is_fake_quantized(net):
        raise QuantizationError("network is already fake-quantized")
    points = quant_points(net)
    quantizers = nn.ModuleDict({p: ActivationFakeQuant() for p in points})
    reference = next(net.parameters())
    net.add_module(SUBMODULE, quantizers.to(reference.device))
    for point, quantizer in quantizers.items():
        if point == INPUT:
            getattr(net, net.plan[0]).register_forward_pre_hook(quantizer.input_hook, prepend=True)
        else:  # prepend: feature taps hooked later (distillation losses) see the quantized value, as the graph has it
            getattr(net, point).register_forward_hook(quantizer.output_hook, prepend=True)
    for name in quantized_convs(net):
        parametrize.register_parametrization(getattr(net, name), "weight", WeightFakeQuant())
    if ranges is not None:
        set_ranges(net, ranges)
    return net


def detach_fake_quant(net: nn.Module) -> Ranges:
    """Remove the fake quantization from ``net`` (in place), leaving its float weights; returns the ranges."""
    if not is_fake_quantized(net):
        raise QuantizationError("network is not fake-quantized")
    found = ranges_of(net)
    for module in net.modules():
        for hooks in (module._forward_hooks, module._forward_pre_hooks):
            for key in [k for k, hook in hooks.items() if isinstance(getattr(hook, "__self__", None), ActivationFakeQuant)]:
                del hooks[key]
    for name in quantized_convs(net):
        _unparametrize(getattr(net, name))
    delattr(net, SUBMODULE)
    return found


def _unparametrize(conv: nn.Module) -> None:
    """Give ``conv`` its plain float weight back. Not ``remove_parametrizations``: that deletes the ``weight``
    property from the parametrized class, which deep copies share, so detaching a copy would break the original."""
    original = conv.parametrizations["weight"].original
    conv.__class__ = type(conv).__bases__[0]
    del conv._modules["parametrizations"]
    conv.register_parameter("weight", original)


def quantizers(net: nn.Module) -> dict[str, ActivationFakeQuant]:
    if not is_fake_quantized(net):
        raise QuantizationError("network is not fake-quantized; attach_fake_quant(...) first")
    return dict(getattr(net, SUBMODULE).items())


def ranges_of(net: nn.Module) -> Ranges:
    return {p: (float(q.rmin), float(q.rmax)) for p, q in quantizers(net).items()}


def set_ranges(net: nn.Module, ranges: Mapping[str, tuple[float, float]]) -> None:
    found = quantizers(net)
    missing, unknown = set(found) - set(ranges), set(ranges) - set(found)
    if missing or unknown:
        raise QuantizationError(f"activation ranges do not fit the network: missing {sorted(missing)}, "
                                f"unknown {sorted(unknown)}")
    for point, (rmin, rmax) in ranges.items():
        if not (np.isfinite(rmin) and np.isfinite(rmax) and rmax > rmin):
            raise QuantizationError(f"activation range of {point} is not a finite interval: [{rmin}, {rmax}]")
        found[point].set_range(rmin, rmax)


@contextmanager
def observing(net: nn.Module, percentile: float = DEFAULT_PERCENTILE) -> Iterator[None]:
    """Inside the block, forwards of ``net`` run in float and record activations; on leaving, every point's range is
    set to its ``[low, high]`` percentiles of what was seen (``100 - percentile`` and ``percentile``)."""
    if not 50 < percentile <= 100:
        raise QuantizationError(f"calibration percentile must be in (50, 100], got {percentile}")
    found = quantizers(net)
    parametrized = [getattr(net, n).parametrizations.weight for n in quantized_convs(net)]
    for q in found.values():
        q.observed = []
    try:
        with _float_weights(parametrized):
            yield
        for point, q in found.items():
            if not q.observed:
                raise QuantizationError(f"calibration saw no activations at {point}; forward some photos inside the block")
            values = torch.cat(q.observed)
            low, high = torch.quantile(values, torch.tensor([1 - percentile / 100, percentile / 100])).tolist()
            if not high > min(low, 0.0):
                high = float(values.abs().max()) or 1.0  # an all-zero tensor still needs a valid range
            q.set_range(low, high)
    finally:
        for q in found.values():
            q.observed = None


@contextmanager
def _float_weights(parametrized: Iterable[parametrize.ParametrizationList]) -> Iterator[None]:
    """Calibrate on the float network, as the exporter's calibration runs the float32 graph."""
    lists = list(parametrized)
    saved = [p[0] for p in lists]
    try:
        for p in lists:
            p[0] = nn.Identity()
        yield
    finally:
        for p, module in zip(lists, saved, strict=True):
            p[0] = module


def calibrate(net: nn.Module, inputs: Iterable[torch.Tensor], percentile: float = DEFAULT_PERCENTILE) -> Ranges:
    """Set ``net``'s activation ranges from forwards of ``inputs`` (photos for an encoder, features for a decoder)."""
    with torch.no_grad(), observing(net, percentile):
        for x in inputs:
            net(x)
    return ranges_of(net)
