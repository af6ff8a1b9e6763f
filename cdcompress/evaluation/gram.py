"""Style and content distances measured by a fixed evaluation encoder (paper Eq. 7).

Teacher and student must be judged by the same ruler, so the encoder that measures is chosen
explicitly and never the one being evaluated by default. Gram matrices are taken at ``relu{k}_1``
with the normalisation ``G = F Fᵀ / (C·H·W)`` (Johnson et al.), in float64, so images of different
sizes are comparable and the sums stay exact enough to see a distance of zero as zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..core.errors import CDCompressError
from ..models.format import CDModel


def gram(features: torch.Tensor) -> torch.Tensor:
    """``[N, C, H, W]`` -> ``[N, C, C]`` float64 Gram matrices, normalised by ``C·H·W``."""
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w).double()
    return flat @ flat.transpose(1, 2) / (c * h * w)


def gram_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Squared Frobenius distance between the Gram matrices of two feature maps (batch mean)."""
    return float(((gram(a) - gram(b)) ** 2).sum(dim=(1, 2)).mean())


def evaluation_encoder(model: CDModel, max_level: int | None = None) -> nn.Module:
    """The deepest encoder of ``model`` (cut at ``max_level`` if given), used as a frozen ruler."""
    if not model.encoders:
        raise CDCompressError("the evaluation encoder model has no encoder; pass a model with one as --eval-encoder")
    deepest = max(model.encoders)
    level = min(deepest, max_level) if max_level else deepest
    encoder = model.encoder(level).eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    return encoder


def eval_levels(encoder: nn.Module, levels: Sequence[int] | None) -> list[int]:
    """Validate requested Conv levels against what the evaluation encoder reaches."""
    deepest = encoder.spec.level
    chosen = sorted(set(levels)) if levels else list(range(1, deepest + 1))
    too_deep = [k for k in chosen if not 1 <= k <= deepest]
    if too_deep:
        raise CDCompressError(
            f"evaluation levels {too_deep} are out of reach: the evaluation encoder stops at relu{deepest}_1; "
            "choose levels up to it or a deeper --eval-encoder"
        )
    return chosen


@torch.no_grad()
def tap_features(encoder: nn.Module, image: torch.Tensor, levels: Sequence[int]) -> dict[int, torch.Tensor]:
    """``relu{k}_1`` features of ``image`` for each level ``k`` in one pass."""
    device = next(encoder.parameters()).device
    found = encoder.features(image.to(device), [f"relu{k}_1" for k in levels])
    return {k: found[f"relu{k}_1"] for k in levels}


def style_distances(encoder: nn.Module, result: torch.Tensor, style: torch.Tensor, levels: Sequence[int]) -> dict[int, float]:
    """Gram distance per level between a stylized result and its style image (sizes may differ)."""
    fr, fs = tap_features(encoder, result, levels), tap_features(encoder, style, levels)
    return {k: gram_distance(fr[k], fs[k]) for k in levels}


def content_distance(encoder: nn.Module, result: torch.Tensor, content: torch.Tensor, level: int) -> float:
    """Mean squared difference of ``relu{level}_1`` features between result and content (same size)."""
    if result.shape != content.shape:
        raise CDCompressError(f"result {tuple(result.shape)} and content {tuple(content.shape)} differ in size")
    fr, fc = tap_features(encoder, result, [level])[level], tap_features(encoder, content, [level])[level]
    return float(((fr.double() - fc.double()) ** 2).mean())
