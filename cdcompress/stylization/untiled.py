"""The reference computation: each level of the cascade on whole tensors.

Tiled runs must reproduce this result; it is also what runs whenever the image fits the memory
budget. Sides that are not multiples of a level's stride are reflection-padded at the bottom/right
for that level and cropped back, exactly as the tiled windows see them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .job import StylizeJob
from .tiling import align_up
from .wct import FeatureStats


def pad_to_stride(image: torch.Tensor, stride: int) -> torch.Tensor:
    """Reflection-pad the bottom/right so both sides are multiples of ``stride`` (what every level's encoder needs)."""
    h, w = image.shape[-2:]
    ph, pw = align_up(h, stride) - h, align_up(w, stride) - w
    return F.pad(image, (0, pw, 0, ph), mode="reflect") if ph or pw else image


def _style_stats_untiled(job: StylizeJob, level: int, style: torch.Tensor) -> FeatureStats:
    return FeatureStats.of(job.backend.encode(level, pad_to_stride(style, job.stride(level))))


def _level_untiled(job: StylizeJob, level: int, image: torch.Tensor, style_stats: FeatureStats) -> torch.Tensor:
    h, w = image.shape[-2:]
    features = job.backend.encode(level, pad_to_stride(image, job.stride(level)))
    mapping = job.transform(FeatureStats.of(features), style_stats)
    features = mapping.apply(features)
    return job.backend.decode(level, features)[..., :h, :w]


def stylize_untiled(job: StylizeJob, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """The reference computation on whole tensors (unclamped result, on the host).

    The cascade runs where the backend's outputs live: on a GPU backend the images, features,
    statistics and maps stay on the device and only the result comes back.
    """
    device = getattr(job.backend, "device", torch.device("cpu"))
    image, style = content.to(device), style.to(device)
    for level in job.levels:
        image = _level_untiled(job, level, image, _style_stats_untiled(job, level, style))
    return image.cpu()
