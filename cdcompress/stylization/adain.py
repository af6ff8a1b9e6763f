"""Adaptive instance normalisation (Huang & Belongie, 2017) as a per-pixel affine map.

AdaIN matches each channel's mean and standard deviation to the style's. Those are the diagonal of
the same statistics WCT uses, so AdaIN shares the tiled accumulation and the affine application.
"""

from __future__ import annotations

import torch

from .wct import AffineMap, FeatureStats, blend

#: Added to variances before the square root, as in the reference AdaIN code.
ADAIN_EPS = 1e-5


def adain_map(content: FeatureStats, style: FeatureStats, alpha: float = 1.0, eps: float = ADAIN_EPS) -> AffineMap:
    """Per-channel ``(f - mean_c) * std_s / std_c + mean_s``, blended with the content by ``alpha``."""
    if content.channels != style.channels:
        raise ValueError(f"content has {content.channels} feature channels, style {style.channels}")
    if alpha == 0:
        return AffineMap.identity(content.channels)
    scale = ((style.variance() + eps) / (content.variance() + eps)).sqrt()
    return blend(torch.diag(scale), style.mean() - scale * content.mean(), alpha)
