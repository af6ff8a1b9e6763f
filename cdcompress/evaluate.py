"""Evaluation of models on real images: autoencoder reconstruction quality per level."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .images import load_image
from .metrics import psnr, ssim
from .models.format import CDModel

#: Crop inputs to multiples of the deepest VGG stride so every level sees the same pixels.
DEFAULT_CROP_MULTIPLE = 16


@dataclass
class ReconResult:
    image: str
    level: int
    width: int
    height: int
    psnr_db: float
    ssim: float

    def as_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def reconstruct(model: CDModel, level: int, image: torch.Tensor) -> torch.Tensor:
    """encoder(level) -> decoder(level), clamped to the valid image range."""
    device = next(model.decoder(level).parameters()).device
    return model.decoder(level)(model.encoder(level)(image.to(device))).clamp(0, 1).cpu()


def reconstruction(
    model: CDModel, level: int, images: Iterable[str | Path], crop_multiple: int = DEFAULT_CROP_MULTIPLE
) -> list[ReconResult]:
    """PSNR/SSIM of the level-``level`` autoencoder on each image (top-left cropped to ``crop_multiple``)."""
    results = []
    for path in images:
        x = load_image(path, crop_multiple)
        y = reconstruct(model, level, x)
        results.append(ReconResult(str(path), level, x.shape[-1], x.shape[-2], psnr(y, x), ssim(y, x)))
    return results


def format_recon_table(results: list[ReconResult]) -> str:
    lines = ["| image | level | size | PSNR (dB) | SSIM |", "|---|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.image} | {r.level} | {r.width}x{r.height} | {r.psnr_db:.2f} | {r.ssim:.4f} |")
    if len(results) > 1:
        mean_psnr = sum(r.psnr_db for r in results) / len(results)
        mean_ssim = sum(r.ssim for r in results) / len(results)
        lines.append(f"| mean | | | {mean_psnr:.2f} | {mean_ssim:.4f} |")
    return "\n".join(lines)
