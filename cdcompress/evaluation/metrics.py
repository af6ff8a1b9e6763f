"""Image-quality metrics on [0, 1] tensors: PSNR and SSIM (Wang et al. 2004, Gaussian window)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F


def psnr(output: torch.Tensor, target: torch.Tensor, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over all pixels and channels (``inf`` if identical)."""
    mse = F.mse_loss(output.double(), target.double()).item()
    return math.inf if mse == 0 else 10.0 * math.log10(peak**2 / mse)


@torch.no_grad()
def mean_psnr(predict: Callable[[torch.Tensor], torch.Tensor] | None,
              pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Mean PSNR (dB) of ``predict(input)``, clamped to [0, 1], against each pair's target; ``predict=None`` scores
    the input itself (a noisy input's floor). The one held-out score: learning curves, the collaborator check,
    refits, denoising and the INT8 gate all call it, so their numbers agree."""
    scores = [psnr(x if predict is None else predict(x).float().clamp(0, 1), y.float()) for x, y in pairs]
    return sum(scores) / len(scores)


def reconstruction_psnr(encoder: Callable[[torch.Tensor], Any], decoder: Callable[[Any], torch.Tensor],
                        images: Sequence[torch.Tensor]) -> float:
    """An autoencoder's held-out score: :func:`mean_psnr` of ``decoder(encoder(x))`` against each ``x``."""
    return mean_psnr(lambda x: decoder(encoder(x)), [(x, x) for x in images])


def _gaussian_window(size: int, sigma: float, channels: int) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(output: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5) -> float:
    """Mean structural similarity over valid windows and channels (data range 1)."""
    x, y = output.double(), target.double()
    if x.dim() == 3:
        x, y = x[None], y[None]
    channels = x.shape[1]
    size = min(window, x.shape[-1], x.shape[-2])
    size -= 1 - size % 2  # odd window that fits the image
    kernel = _gaussian_window(size, sigma, channels).to(x.device)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=channels)

    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean().item()
