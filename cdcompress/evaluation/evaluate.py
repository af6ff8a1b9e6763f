"""Evaluation of models on real images: reconstruction quality and style distance per level."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ImageError
from ..data.images import IMAGE_SUFFIXES, list_images, load_image
from ..models.format import CDModel
from .gram import content_distance, eval_levels, style_distances
from .metrics import psnr, ssim
from .settings import DEFAULT_CROP_MULTIPLE, DEFAULT_STYLE_MAX_SIDE


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


# ----------------------------------------------------------------------------- style distance


@dataclass
class StyleResult:
    content: str
    style: str
    width: int
    height: int
    gram: dict[str, float]  # "conv{k}" -> squared Frobenius distance of Gram matrices (result vs style)
    content_distance: float  # mean squared relu{content_level}_1 difference (result vs content)

    def as_dict(self) -> dict:
        return asdict(self)


def image_files(folder: str | Path, what: str) -> list[Path]:
    """Images directly inside ``folder`` (sorted), or a one-line error naming the option."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"{what} {folder}: no such directory; pass a folder of images")
    files = list_images(folder, recursive=False)
    if not files:
        raise ImageError(f"{what} {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return files


def load_scaled(path: str | Path, max_side: int | None, crop_multiple: int = DEFAULT_CROP_MULTIPLE) -> torch.Tensor:
    """Load an image, downscale its long side to ``max_side`` (never up) and crop to ``crop_multiple``."""
    image = load_image(path)
    h, w = image.shape[-2:]
    if max_side and max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = (max(crop_multiple, round(h * scale)), max(crop_multiple, round(w * scale)))
        image = F.interpolate(image, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    h, w = image.shape[-2:]
    return image[..., : h // crop_multiple * crop_multiple, : w // crop_multiple * crop_multiple].contiguous()


def style_evaluation(
    model: CDModel,
    contents: Sequence[str | Path],
    styles: Sequence[str | Path],
    eval_encoder: nn.Module,
    *,
    method: str = "wct",
    levels: Sequence[int] | None = None,
    alpha: float = 1.0,
    max_side: int | None = DEFAULT_STYLE_MAX_SIDE,
    gram_levels: Sequence[int] | None = None,
    content_level: int | None = None,
) -> list[StyleResult]:
    """Stylize every (content, style) pair with ``model`` and measure it with ``eval_encoder``.

    Gram distances are per ``relu{k}_1`` of the evaluation encoder (all it reaches by default);
    the content distance is at ``content_level`` (default: the deepest Gram level).
    """
    from ..stylization import stylize  # stylize imports the model format; keep import-time light

    chosen = eval_levels(eval_encoder, gram_levels)
    content_level = content_level or chosen[-1]
    eval_levels(eval_encoder, [content_level])
    style_images = {str(s): load_scaled(s, max_side) for s in styles}
    results = []
    for content_path in contents:
        content = load_scaled(content_path, max_side)
        for style_path, style in style_images.items():
            result = stylize(model, content, style, method=method, levels=levels, alpha=alpha, tile=0)
            grams = style_distances(eval_encoder, result, style, chosen)
            results.append(StyleResult(
                str(content_path), style_path, content.shape[-1], content.shape[-2],
                {f"conv{k}": v for k, v in grams.items()},
                content_distance(eval_encoder, result, content, content_level),
            ))
    return results


def mean_style(results: Sequence[StyleResult]) -> dict[str, float]:
    """Eq. 7: the mean over pairs, per Gram level, plus the mean content distance."""
    keys = list(results[0].gram)
    means = {k: sum(r.gram[k] for r in results) / len(results) for k in keys}
    means["content"] = sum(r.content_distance for r in results) / len(results)
    return means


def format_style_table(results: Sequence[StyleResult]) -> str:
    keys = list(results[0].gram)
    head = "| content | style | size | " + " | ".join(f"Gram {k}" for k in keys) + " | content dist |"
    lines = [head, "|---|---|---:|" + "---:|" * (len(keys) + 1)]
    for r in results:
        cells = " | ".join(f"{r.gram[k]:.4g}" for k in keys)
        lines.append(f"| {Path(r.content).name} | {Path(r.style).name} | {r.width}x{r.height} | {cells} | "
                     f"{r.content_distance:.4g} |")
    means = mean_style(results)
    lines.append("| **mean** | | | " + " | ".join(f"**{means[k]:.4g}**" for k in keys) + f" | **{means['content']:.4g}** |")
    return "\n".join(lines)
