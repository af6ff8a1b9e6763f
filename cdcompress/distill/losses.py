"""Loss terms of the three stages: reconstruction, style transfer (AdaIN) and embedding.

Every loss returns a dict of named scalar terms so the trainer can log each one; the caller
weights and sums them. Teacher features come from a frozen encoder through forward hooks, so
any architecture can serve as the perceptual/evaluation network.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..surgery.embed import OUTPUT, FeatureTaps, flatten_outputs


class FeatureExtractor(nn.Module):
    """A frozen network returning ``{tap: feature}`` for the named submodules (and ``output``)."""

    def __init__(self, network: nn.Module, taps: Sequence[str]) -> None:
        super().__init__()
        self.network = network
        self.taps = list(taps)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        inner = [t for t in self.taps if not t.startswith(OUTPUT)]
        with FeatureTaps(self.network, inner) as tapped:
            outputs = self.network(x)
        found = dict(tapped.features)
        found.update(flatten_outputs(outputs))
        return {t: found[t] for t in self.taps}


def feature_mse(ours: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Per-tap MSE, keyed ``{prefix}/{tap}``."""
    return {f"{prefix}/{tap}": F.mse_loss(ours[tap], target[tap].detach()) for tap in target}


def reconstruction_terms(
    output: torch.Tensor,
    image: torch.Tensor,
    perceptual: FeatureExtractor | None,
    lambda_p: float,
    image_features: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Pixel MSE + lambda_p * Σ_taps MSE(φ(output), φ(image)) on frozen-teacher features φ."""
    terms = {"pixel": F.mse_loss(output, image)}
    if perceptual is not None and lambda_p > 0:
        if image_features is None:
            with torch.no_grad():
                image_features = perceptual(image)
        per_tap = feature_mse(perceptual(output), image_features, "perceptual")
        terms["perceptual"] = lambda_p * sum(per_tap.values())
    return terms


def mean_std(feature: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel mean and standard deviation of an NCHW map."""
    flat = feature.flatten(2)
    return flat.mean(-1)[..., None, None], (flat.var(-1, unbiased=False) + eps).sqrt()[..., None, None]


def adain(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Adaptive instance normalisation: content statistics replaced by the style's."""
    c_mean, c_std = mean_std(content)
    s_mean, s_std = mean_std(style)
    return (content - c_mean) / c_std * s_std + s_mean


def style_transfer_terms(
    output_features: Mapping[str, torch.Tensor],
    target: torch.Tensor,
    style_features: Mapping[str, torch.Tensor],
    content_tap: str,
    lambda_s: float,
) -> dict[str, torch.Tensor]:
    """AdaIN's loss: content MSE to the AdaIN target + lambda_s * Σ_taps (mean, std) matching."""
    style = torch.zeros((), device=target.device)
    for tap, feature in style_features.items():
        o_mean, o_std = mean_std(output_features[tap])
        s_mean, s_std = mean_std(feature.detach())
        style = style + F.mse_loss(o_mean, s_mean) + F.mse_loss(o_std, s_std)
    return {"content": F.mse_loss(output_features[content_tap], target.detach()), "style": lambda_s * style}


def total(terms: Mapping[str, torch.Tensor], exclude: Iterable[str] = ()) -> torch.Tensor:
    """Sum of top-level terms (``name/tap`` details and ``exclude`` are reporting only)."""
    skip = set(exclude)
    return sum(v for k, v in terms.items() if "/" not in k and k not in skip)


def detach_terms(terms: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in terms.items()}
