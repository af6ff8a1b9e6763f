"""A residual autoencoder of the latent-diffusion kind, the pair issue 25 reported training poorly.

Its shape is what makes it a distinct test of slimming and distillation (docs/residual_pairs.md):

* :class:`ResEncoder`: a stem conv, per level a pre-activation residual block (GroupNorm -> SiLU ->
  conv, twice, plus an *identity* skip) and a stride-2 conv downsampling, a GroupNorm mid block, then
  GroupNorm -> SiLU -> conv to ``latent`` channels and ``tanh`` (a bounded latent). The identity skips
  tie the stem, every block's last conv and every GroupNorm on a level into one residual stream that
  slimming must cut with the same channel indices.
* :class:`ResDecoder`: the mirror: a conv from the latent, a mid block, per level a nearest x2 upsampling
  with a conv and a residual block, and GroupNorm -> SiLU -> conv to the image.

Input sides must be multiples of ``2 ** (len(widths) - 1)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..core.errors import CDCompressError
from ..core.registry import ARCHITECTURES

DEFAULT_WIDTHS = (32, 64)
DEFAULT_LATENT = 4
DEFAULT_GROUPS = 8
"""GroupNorm(8) as in the latent-diffusion VAEs (which use 32 groups at 4x these widths): at 1/2 width every
group keeps two or more channels, so the student's norms stay group norms."""


class ResAEShapeError(CDCompressError):
    """Residual autoencoder widths, groups or latent that do not fit together."""


def _check_config(widths: Sequence[int], latent: int, groups: int) -> tuple[int, ...]:
    widths = tuple(int(w) for w in widths)
    if not widths or latent < 1:
        raise ResAEShapeError(f"residual autoencoder needs at least one width and a latent, got {widths}, {latent}")
    if groups < 1 or any(w < 1 or w % groups for w in widths):
        raise ResAEShapeError(f"widths {widths} must be positive multiples of GroupNorm groups={groups}")
    return widths


class ResBlock(nn.Module):
    """Pre-activation residual block with an identity skip: ``x + conv(act(gn(conv(act(gn(x))))))``.

    Each activation is its own module so a forward hook on it (an embedding tap) sees one call."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm1, self.act1 = nn.GroupNorm(groups, channels), nn.SiLU()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2, self.act2 = nn.GroupNorm(groups, channels), nn.SiLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act1(self.norm1(x)))
        return x + self.conv2(self.act2(self.norm2(h)))


class ResEncoder(nn.Module):
    """Image -> ``tanh`` latent of ``latent`` channels at ``1 / 2 ** (len(widths) - 1)`` resolution."""

    def __init__(self, widths: Sequence[int] = DEFAULT_WIDTHS, latent: int = DEFAULT_LATENT,
                 groups: int = DEFAULT_GROUPS, channels: int = 3) -> None:
        super().__init__()
        self.widths = _check_config(widths, latent, groups)
        self.stem = nn.Conv2d(channels, self.widths[0], 3, padding=1)
        self.blocks = nn.ModuleList(ResBlock(w, groups) for w in self.widths)
        self.downs = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1)
                                   for a, b in zip(self.widths, self.widths[1:], strict=False))
        self.mid = ResBlock(self.widths[-1], groups)
        self.norm_out, self.act_out = nn.GroupNorm(groups, self.widths[-1]), nn.SiLU()
        self.to_latent = nn.Conv2d(self.widths[-1], latent, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index < len(self.downs):
                x = self.downs[index](x)
        x = self.mid(x)
        return torch.tanh(self.to_latent(self.act_out(self.norm_out(x))))


class ResDecoder(nn.Module):
    """``tanh`` latent -> image, mirroring :class:`ResEncoder`."""

    def __init__(self, widths: Sequence[int] = DEFAULT_WIDTHS, latent: int = DEFAULT_LATENT,
                 groups: int = DEFAULT_GROUPS, channels: int = 3) -> None:
        super().__init__()
        self.widths = _check_config(widths, latent, groups)
        deep = list(reversed(self.widths))
        self.from_latent = nn.Conv2d(latent, deep[0], 3, padding=1)
        self.mid = ResBlock(deep[0], groups)
        self.ups = nn.ModuleList(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(a, b, 3, padding=1))
                                 for a, b in zip(deep, deep[1:], strict=False))
        self.blocks = nn.ModuleList(ResBlock(w, groups) for w in deep[1:])
        self.norm_out, self.act_out = nn.GroupNorm(groups, deep[-1]), nn.SiLU()
        self.head = nn.Conv2d(deep[-1], channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid(self.from_latent(z))
        for up, block in zip(self.ups, self.blocks, strict=True):
            x = block(up(x))
        return self.head(self.act_out(self.norm_out(x)))




def fit_autoencoder(encoder: nn.Module, decoder: nn.Module, batches: Sequence[torch.Tensor], lr: float = 2e-3,
                    seed: int = 0) -> list[float]:
    """Train the pair as a plain autoencoder (MSE, Adam, cosine decay) on ``batches``, one step each.

    Gives a teacher pretrained-like weights in minutes on CPU, so tests and benchmarks can distil a
    trained residual pair without shipping weights. Returns the per-step losses."""
    torch.manual_seed(seed)
    params = [*encoder.parameters(), *decoder.parameters()]
    optimizer = torch.optim.Adam(params, lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, len(batches)))
    encoder.train(), decoder.train()
    losses = []
    for images in batches:
        loss = nn.functional.mse_loss(decoder(encoder(images)), images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    encoder.eval(), decoder.eval()
    return losses


#: The registered built-ins (``resae-encoder`` / ``resae-decoder``; no arguments give the teacher's default shapes):
#: what they build remembers the name and kwargs, so a saved student names its teacher's factory.
resae_encoder = ARCHITECTURES.add("resae-encoder", ResEncoder)
resae_decoder = ARCHITECTURES.add("resae-decoder", ResDecoder)
