"""Noisy/clean training pairs (the ``noisy-pairs`` data source): the denoising task's data.

Every batch is a pure function of ``(seed, step)`` -- the clean crop comes from :class:`~cdcompress.data.batches.
CropSampler` and the Gaussian noise from a generator seeded by the same pair -- so a teacher run, a CD run and a
baseline run see exactly the same data, and any run can be re-created from its settings alone.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core.registry import DATA_SOURCES
from .batches import Batch, CropSampler, DataError, rank_slice

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
