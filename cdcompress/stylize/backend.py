"""Where encoders and decoders run: PyTorch modules here, exported engines elsewhere.

Stylization only needs, per level, ``encode(image) -> features`` and ``decode(features) -> image``.
Keeping that behind a small protocol lets the same WCT/AdaIN/tiling code drive a PyTorch
:class:`~cdcompress.models.format.CDModel` or an exported ONNX/TensorRT bundle.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from ..models.format import CDModel


@runtime_checkable
class Backend(Protocol):
    """Per-level encoder/decoder pairs on [0, 1] RGB NCHW float32 tensors (CPU tensors in and out)."""

    @property
    def levels(self) -> list[int]: ...

    def encode(self, level: int, image: torch.Tensor) -> torch.Tensor: ...

    def decode(self, level: int, features: torch.Tensor) -> torch.Tensor: ...


class TorchBackend:
    """Runs a :class:`CDModel` with PyTorch (inference mode, on ``device``)."""

    def __init__(self, model: CDModel, device: str | torch.device = "cpu") -> None:
        self.model = model.to(device).eval()
        self.device = torch.device(device)

    @property
    def levels(self) -> list[int]:
        return self.model.levels

    @torch.inference_mode()
    def encode(self, level: int, image: torch.Tensor) -> torch.Tensor:
        return self.model.encoder(level)(image.to(self.device)).cpu()

    @torch.inference_mode()
    def decode(self, level: int, features: torch.Tensor) -> torch.Tensor:
        return self.model.decoder(level)(features.to(self.device)).cpu()
