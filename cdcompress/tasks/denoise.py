"""Photo denoising as a distillation task: deterministic noisy/clean pairs, held-out pairs, PSNR, a teacher loop.

Every training batch is a pure function of ``(seed, step)`` -- the clean crop comes from
:class:`~cdcompress.data.batches.CropSampler` and the Gaussian noise from a generator seeded by the same
pair -- so a teacher run, a CD run and a baseline run see exactly the same data, and any run can
be re-created from its settings alone. Held-out pairs are whole photos (resized, centre-cropped to
the model's stride) with fixed-seed noise, so PSNR numbers are comparable across runs.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.batches import DATA_SOURCES, Batch, CropSampler, DataError, rank_slice, resize_shorter
from ..data.images import load_image
from ..evaluation.metrics import psnr

DEFAULT_SIGMA = 0.1
"""Noise standard deviation on [0, 1] images (about 25.5 on the 0..255 scale, a common benchmark level)."""

_NOISE_SALT = 0x5EED_D0153
"""Keeps the noise stream apart from the crop stream, which is also keyed by (seed, step)."""

Pair = tuple[torch.Tensor, torch.Tensor]
"""``(noisy, clean)``, both ``[B, 3, H, W]`` in [0, 1]."""


def noise_generator(seed: int, step: int) -> torch.Generator:
    """The generator of the noise added at ``step`` of a run seeded ``seed``."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7_919 + _NOISE_SALT) % 2**62)


def add_noise(clean: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """``clean`` plus Gaussian noise of std ``sigma``, clamped back to [0, 1] like a real saved image."""
    noise = torch.randn(clean.shape, generator=generator, dtype=clean.dtype)
    return (clean + sigma * noise).clamp(0, 1)


@dataclass
class NoisyPairs:
    """Infinite, re-creatable ``(noisy, clean)`` crop batches: ``batch(step)`` is fixed by ``(seed, step)``.

    Iterating yields steps 0, 1, 2, ...; a fresh iterator (or a fresh object with the same
    settings) starts over with identical batches.
    """

    paths: Sequence[str | Path]
    batch_size: int = 8
    resize: int = 256
    crop: int = 64
    sigma: float = DEFAULT_SIGMA
    seed: int = 0
    _sampler: CropSampler = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.sigma) and self.sigma >= 0):
            raise DataError(f"noise sigma must be a finite number >= 0, got {self.sigma}")
        if self.batch_size < 1:
            raise DataError(f"batch size must be at least 1, got {self.batch_size}")
        self._sampler = CropSampler(list(self.paths), batch_size=self.batch_size, resize=self.resize, crop=self.crop,
                                    seed=self.seed)

    def batch(self, step: int) -> Pair:
        if step < 0:
            raise DataError(f"step must be >= 0, got {step}")
        clean = self._sampler.shard(step, 0, 1)
        return add_noise(clean, self.sigma, noise_generator(self.seed, step)), clean

    def __iter__(self) -> Iterator[Pair]:
        return (self.batch(step) for step in itertools.count())

    def shard(self, step: int, rank: int, world: int) -> Pair:
        """This process's slice of the step's pair batch: resume and torchrun need no replay of earlier steps."""
        part = rank_slice(Batch(*self.batch(step)), rank, world)
        return part.input, part.target


@DATA_SOURCES.register("noisy-pairs")
def noisy_pairs(paths: Sequence[Path], batch_size: int, resize: int, crop: int, seed: int,
                sigma: float = DEFAULT_SIGMA) -> NoisyPairs:
    """Recipes' ``data.source: {name: noisy-pairs, kwargs: {sigma: 0.1}}``: the denoising task's (noisy, clean) batches."""
    return NoisyPairs(paths, batch_size=batch_size, resize=resize, crop=crop, sigma=sigma, seed=seed)


def center_crop_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """The central region whose height and width are the largest multiples of ``multiple``."""
    h, w = image.shape[-2:]
    th, tw = h - h % multiple, w - w % multiple
    if th == 0 or tw == 0:
        raise DataError(f"image {w}x{h} is smaller than the model stride {multiple}; use a larger image")
    top, left = (h - th) // 2, (w - tw) // 2
    return image[..., top : top + th, left : left + tw]


def heldout_pairs(paths: Sequence[str | Path], size: int = 256, multiple: int = 4, sigma: float = DEFAULT_SIGMA,
                  seed: int = 1234) -> list[Pair]:
    """One fixed ``(noisy, clean)`` pair per photo: shorter side ``size``, centre-cropped to ``multiple``."""
    if not paths:
        raise DataError("no held-out photos; pass at least one image path")
    pairs = []
    for index, path in enumerate(paths):
        clean = center_crop_multiple(resize_shorter(load_image(path), size), multiple)
        pairs.append((add_noise(clean, sigma, noise_generator(seed, index)), clean))
    return pairs


Denoiser = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def denoise(model: Denoiser, noisy: torch.Tensor) -> torch.Tensor:
    """The model's clean estimate, clamped to [0, 1] as it would be saved."""
    return model(noisy).clamp(0, 1)


def mean_psnr(model: Denoiser | None, pairs: Sequence[Pair]) -> float:
    """Mean PSNR (dB) over held-out pairs; ``model=None`` scores the noisy input itself (the floor to beat)."""
    scores = [psnr(noisy if model is None else denoise(model, noisy), clean) for noisy, clean in pairs]
    return sum(scores) / len(scores)


def pair_model(encoder: nn.Module, decoder: nn.Module) -> nn.Sequential:
    """``decoder(encoder(x))`` as one module (the U-Net decoder takes the encoder's feature tuple)."""
    return nn.Sequential(encoder, decoder)


@dataclass
class TeacherLog:
    losses: list[float]
    seconds: float


def train_denoiser(model: nn.Module, pairs: Iterable[Pair], steps: int, lr: float = 1e-3,
                   log: Callable[[int, float], None] | None = None, log_every: int = 100) -> TeacherLog:
    """Plain Adam on pixel MSE (the PSNR objective) with a cosine learning-rate decay to 5% of ``lr``."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=0.05 * lr)
    model.train()
    losses, start = [], time.perf_counter()
    for step, (noisy, clean) in enumerate(itertools.islice(pairs, steps)):
        loss = F.mse_loss(model(noisy), clean)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if log is not None and (step + 1) % log_every == 0:
            log(step + 1, sum(losses[-log_every:]) / log_every)
    model.eval()
    return TeacherLog(losses, time.perf_counter() - start)
