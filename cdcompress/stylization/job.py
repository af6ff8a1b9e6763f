"""What a stylization is asked to do, checked once before any pixel is computed.

A :class:`StylizeJob` is the backend plus the resolved method, levels, alpha and per-level tiling
geometry; planning, cost estimates and both computations read it. The inputs are checked against
it here too (sizes, style loading), so every user error surfaces before the slow part starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..core.errors import CDCompressError, ImageError, ModelFormatError
from ..data.images import image_size, load_image
from ..models.format import CDModel
from ..models.format import load as load_model
from .adain import adain_map
from .backend import Backend, TorchBackend, UntiledBackend
from .settings import METHODS, default_levels
from .tiling import LevelGeometry, level_geometry
from .wct import EIG_FLOOR, AffineMap, FeatureStats, wct_map

ImageInput = torch.Tensor | str | Path


def as_backend(model: CDModel | UntiledBackend | str | Path) -> UntiledBackend:
    """A backend for a model directory, a loaded :class:`CDModel` or an existing backend."""
    if isinstance(model, CDModel):
        return TorchBackend(model)
    if isinstance(model, str | Path):
        return TorchBackend(load_model(model))
    if isinstance(model, UntiledBackend):
        return model
    raise TypeError(f"expected a CDModel, a Backend or a model directory, got {type(model).__name__}")


@dataclass
class StylizeJob:
    """Resolved settings shared by every level (build it with :func:`make_job`)."""

    backend: UntiledBackend
    method: str
    levels: tuple[int, ...]
    alpha: float
    eig_floor: float
    geometries: dict[int, LevelGeometry | None] = field(default_factory=dict)

    def stride(self, level: int) -> int:
        geo = self.geometries.get(level)
        return geo.stride if geo else 2 ** (level - 1)

    def geometry(self, level: int) -> LevelGeometry:
        """The level's tiling geometry; a one-line error when the backend does not declare it."""
        geo = self.geometries.get(level)
        if geo is not None:
            return geo
        if not isinstance(self.backend, Backend):
            raise CDCompressError(
                f"the backend ({type(self.backend).__name__}) has no specs(level) method declaring its level-{level} "
                "architecture, which exact tiling needs; stylize untiled (--tile 0) or add specs() (see "
                "cdcompress.stylization.Backend)"
            )
        raise CDCompressError(
            f"the backend does not describe its level-{level} architecture, which exact tiling needs; "
            "stylize untiled (--tile 0) or use a backend whose specs(level) returns its encoder/decoder VGG specs"
        )

    def transform(self, content: FeatureStats, style: FeatureStats) -> AffineMap:
        if self.method == "adain":
            return adain_map(content, style, self.alpha)
        return wct_map(content, style, self.alpha, self.eig_floor)


def make_job(backend: UntiledBackend, method: str, levels: Sequence[int] | None, alpha: float,
             eig_floor: float = EIG_FLOOR) -> StylizeJob:
    """Validate the stylization settings against ``backend`` once, before any pixel is read.

    The job is what planning (:func:`~cdcompress.stylization.plan.plan_tiling`,
    :func:`~cdcompress.stylization.plan.untiled_bytes`) and cost estimates need."""
    if method not in METHODS:
        raise CDCompressError(f"method {method!r} is not supported; use one of {', '.join(METHODS)}")
    levels = tuple(levels) if levels else default_levels(method, backend.levels)
    if not levels or len(set(levels)) != len(levels):
        raise CDCompressError(f"levels {levels}: give each level once, e.g. 5,4,3,2,1")
    missing = [k for k in levels if k not in backend.levels]
    if missing:
        raise ModelFormatError(
            f"the model has no encoder/decoder pair for level(s) {missing} (its levels: "
            f"{','.join(map(str, backend.levels)) or 'none'}); choose --levels among those, or leave --levels out to "
            "use them all"
        )
    if not 0.0 <= alpha <= 1.0:
        raise CDCompressError(f"alpha {alpha} must be within [0, 1] (0 keeps the content, 1 is full style)")
    geometries: dict[int, LevelGeometry | None] = dict.fromkeys(levels)
    if isinstance(backend, Backend):  # without specs() the backend runs untiled only (StylizeJob.geometry)
        for level in levels:
            specs = backend.specs(level)
            geometries[level] = level_geometry(*specs) if specs else None
    return StylizeJob(backend, method, levels, float(alpha), eig_floor, geometries)


def _check_size(job: StylizeJob, height: int, width: int, what: str) -> None:
    need = 2 * max(job.stride(k) for k in job.levels)
    if min(height, width) < need:
        raise ImageError(
            f"{what} is {width}x{height}; levels {','.join(map(str, job.levels))} need at least {need} px per side; "
            "use a larger image or shallower --levels"
        )


def _as_image_tensor(image: torch.Tensor, what: str) -> torch.Tensor:
    if image.dim() == 3:
        image = image[None]
    if image.dim() != 4 or image.shape[:2] != (1, 3):
        raise ImageError(f"{what} tensor has shape {tuple(image.shape)}; expected [1, 3, H, W] RGB in [0, 1]")
    return image.detach().float().cpu().contiguous()


def _describe(image: ImageInput, role: str) -> str:
    """``role`` plus the file name when the image came from a file, so errors say which file."""
    return f"{role} {image}" if isinstance(image, str | Path) else role


def load_style(job: StylizeJob, style: ImageInput, style_size: int | None) -> torch.Tensor:
    """The style as a ``[1, 3, H, W]`` tensor, its long side resized to ``style_size``, checked against the levels."""
    image = _as_image_tensor(style, "style") if isinstance(style, torch.Tensor) else load_image(style)
    if style_size is not None:
        if style_size < 1:
            raise CDCompressError(f"style size {style_size} must be a positive number of pixels")
        h, w = image.shape[-2:]
        scale = style_size / max(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        image = F.interpolate(image, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    _check_size(job, *image.shape[-2:], _describe(style, "style image"))
    return image


def check_content(job: StylizeJob, content: ImageInput) -> tuple[ImageInput, int, int]:
    """``(content, height, width)``, checked against the levels: a tensor normalised to ``[1, 3, H, W]``
    on the host, or the path as given (its size read from the header; the pixels are decoded later)."""
    if isinstance(content, torch.Tensor):
        content = _as_image_tensor(content, "content")
        height, width = content.shape[-2:]
    else:
        height, width = image_size(content)
    _check_size(job, height, width, _describe(content, "content image"))
    return content, height, width
