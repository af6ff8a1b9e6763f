"""Where encoders and decoders run: PyTorch modules here, exported engines elsewhere.

Stylization only needs, per level, ``encode(image) -> features`` and ``decode(features) -> image``,
and for exact tiling the architectures behind them (``specs(level)``: the halos follow from them).
Keeping that behind a small protocol lets the same WCT/AdaIN/tiling code drive a PyTorch
:class:`~cdcompress.models.format.CDModel` or an exported ONNX/TensorRT bundle.
"""

from __future__ import annotations

import copy
from typing import Protocol, runtime_checkable

import torch

from ..core.device import resolve_device
from ..core.errors import CDCompressError
from ..models.format import CDModel
from ..models.vgg import VGGDecoder, VGGEncoder, VGGSpec, fused_inference
from ..surgery.drop_in import DropInEncoder
from .settings import PRECISION_NAMES


@runtime_checkable
class UntiledBackend(Protocol):
    """Per-level encoder/decoder pairs on [0, 1] RGB NCHW float32 tensors: all an untiled run needs.

    Outputs are CPU tensors unless the backend has a ``device`` attribute naming where they stay
    (a GPU :class:`TorchBackend`); the stylization pipeline then keeps the whole cascade there.
    """

    @property
    def levels(self) -> list[int]: ...

    def encode(self, level: int, image: torch.Tensor) -> torch.Tensor: ...

    def decode(self, level: int, features: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Backend(UntiledBackend, Protocol):
    """An :class:`UntiledBackend` that also declares its architectures, so it can be tiled exactly.

    ``specs`` is required of a backend. ``stylize`` still accepts an object with only the untiled
    part (one written before ``specs`` existed) and runs it untiled; asking it for tiles is a
    one-line error that names the missing method.
    """

    def specs(self, level: int) -> tuple[VGGSpec, VGGSpec] | None:
        """The (encoder, decoder) architectures at ``level``, or None when unknown (then only untiled runs)."""
        ...


#: Inference precisions (names in :data:`~cdcompress.stylization.settings.PRECISION_NAMES`): the networks' dtype.
PRECISIONS: dict[str, torch.dtype] = dict(zip(PRECISION_NAMES, (torch.float32, torch.float16, torch.bfloat16), strict=True))


class TorchBackend:
    """Runs a :class:`CDModel` with PyTorch (inference mode, on ``device``).

    ``channels_last`` (default) stores activations as NHWC: oneDNN's convolutions on the narrow
    layers of slim students run about 1.8x faster that way on CPU (measured on the released 16x
    level-5 encoder at 1024²), while wide teachers are unaffected. Only the inputs are converted
    (convolutions propagate the layout; the model's own weights are left as they are). Results
    keep that layout (logical NCHW shape either way); the WCT map and the canvases read any strides.
    Forwards run under :func:`~cdcompress.models.vgg.fused_inference` (same numbers, no padded copies).

    Results stay on ``device``: on a GPU the statistics, WCT maps and the cascade run there too and
    only the finished image comes back. ``precision`` ``fp16``/``bf16`` runs the networks in half
    precision (the model is converted once); results are handed back as float32.
    """

    def __init__(self, model: CDModel, device: str | torch.device = "cpu", channels_last: bool = True,
                 precision: str = "fp32") -> None:
        if precision not in PRECISIONS:
            raise CDCompressError(f"precision {precision!r} is not supported; use one of {', '.join(PRECISIONS)}")
        self.device = resolve_device(device)
        self.dtype = PRECISIONS[precision]
        if not _already(model, self.device, self.dtype):
            model = copy.deepcopy(model)  # the caller's model stays where and as it was (CDModel.to moves in place)
        self.model = model.to(self.device, self.dtype).eval()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    @property
    def levels(self) -> list[int]:
        return self.model.levels

    def specs(self, level: int) -> tuple[VGGSpec, VGGSpec] | None:
        """The VGG specs of the level's encoder and decoder; None for other module families."""
        enc, dec = self.model.encoder(level), self.model.decoder(level)
        enc = enc.student if isinstance(enc, DropInEncoder) else enc  # its appended 1x1 maps add no halo
        if isinstance(enc, VGGEncoder) and isinstance(dec, VGGDecoder):
            return enc.spec, dec.spec
        return None

    def _run(self, module: torch.nn.Module, tensor: torch.Tensor) -> torch.Tensor:
        inputs = tensor.to(self.device, self.dtype)
        inputs = _nhwc(inputs) if self.memory_format == torch.channels_last else inputs.contiguous()
        with fused_inference():
            return module(inputs).float()

    @torch.inference_mode()
    def encode(self, level: int, image: torch.Tensor) -> torch.Tensor:
        return self._run(self.model.encoder(level), image)

    @torch.inference_mode()
    def decode(self, level: int, features: torch.Tensor) -> torch.Tensor:
        return self._run(self.model.decoder(level), features)


def _already(model: CDModel, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether every tensor of ``model`` already has ``device`` and ``dtype`` (then moving it changes nothing)."""
    def same(t: torch.Tensor) -> bool:
        return t.device.type == device.type and (device.index is None or t.device.index == device.index) and (
            not t.is_floating_point() or t.dtype == dtype)

    return all(same(t) for module in model.modules() for t in (*module.parameters(), *module.buffers()))


def _nhwc(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` with exact NHWC strides. ``contiguous(memory_format=channels_last)`` accepts any
    stride on size-1 axes, and oneDNN then misses the layout (measured 2x slower convolutions)."""
    n, c, h, w = tensor.shape
    if tensor.stride() == (h * w * c, 1, w * c, c):
        return tensor
    return tensor.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
