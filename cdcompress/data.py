"""Training batches from image folders, reproducible from (seed, step) alone.

Batch ``i`` is a pure function of the seed and ``i``: the epoch permutation is seeded by the
epoch number and every crop/flip by the sample's global index. Resuming a run therefore needs
only the step counter -- no sampler state -- and data loader workers cannot change the data.
Images are resized so the shorter side is ``resize`` (paper: 300), then randomly cropped to
``crop`` (paper: 256) and flipped. Undecodable files are skipped and counted, never fatal.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .errors import CDCompressError, ImageError
from .images import list_images, load_image

log = logging.getLogger(__name__)


MIN_TRAIN_SIDE = 32
"""Shorter sides below this are skipped: upscaling a thumbnail to the crop size teaches nothing but blur."""


class DataError(CDCompressError):
    """A dataset that cannot provide training batches."""


def resize_shorter(image: torch.Tensor, size: int) -> torch.Tensor:
    h, w = image.shape[-2:]
    scale = size / min(h, w)
    if scale == 1:
        return image
    new = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(image, size=new, mode="bilinear", align_corners=False, antialias=scale < 1).clamp(0, 1)


def _generator(*keys: int) -> torch.Generator:
    seed = 0
    for key in keys:
        seed = (seed * 1_000_003 + int(key) + 1) % (2**62)
    return torch.Generator().manual_seed(seed)


@dataclass
class CropSampler(Dataset):
    """Deterministic random crops: ``self[step]`` is the batch for that optimisation step."""

    paths: Sequence[Path]
    batch_size: int = 16
    resize: int = 300
    crop: int = 256
    flip: bool = True
    seed: int = 0
    cache_size: int = 64
    min_side: int = MIN_TRAIN_SIDE
    skipped: dict[str, str] = field(default_factory=dict, init=False)
    _cache: OrderedDict = field(default_factory=OrderedDict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.paths = [Path(p) for p in self.paths]
        if not self.paths:
            raise DataError("no training images; point the data folder at JPEG/PNG files")
        if self.crop > self.resize:
            raise DataError(f"crop {self.crop} is larger than resize {self.resize}; lower crop or raise resize")

    def __len__(self) -> int:
        return 2**31 - 1

    def __getitem__(self, step: int) -> torch.Tensor:
        return self.shard(step, 0, 1)

    def shard(self, step: int, rank: int, world: int) -> torch.Tensor:
        """This process's slice of the step's global batch (the whole batch when ``world`` is 1)."""
        if self.batch_size % world:
            raise DataError(f"batch {self.batch_size} is not divisible by {world} processes; pick a multiple")
        per = self.batch_size // world
        first = step * self.batch_size + rank * per
        return torch.cat([self.sample(first + j) for j in range(per)])

    def sample(self, index: int) -> torch.Tensor:
        """The ``index``-th training crop ([1, 3, crop, crop]); skips unreadable files deterministically."""
        first = self._position_for(index)
        for offset in range(len(self.paths)):  # unreadable: the next file in a fixed order, so every file is tried
            image = self._image(self.paths[(first + offset) % len(self.paths)])
            if image is not None:
                return self._crop(image, _generator(self.seed, index, offset))
        raise DataError(f"none of the {len(self.paths)} training images could be decoded; check the data folder")

    def _position_for(self, index: int) -> int:
        epoch, position = divmod(index, len(self.paths))
        order = torch.randperm(len(self.paths), generator=_generator(self.seed, epoch, -1))
        return int(order[position])

    def _image(self, path: Path) -> torch.Tensor | None:
        if path in self._cache:
            self._cache.move_to_end(path)
            return self._cache[path]
        if str(path) in self.skipped:
            return None
        try:
            image = load_image(path)
            height, width = image.shape[-2:]
            if min(height, width) < self.min_side:
                raise ImageError(f"{path}: {width}x{height} is too small to train on (at least {self.min_side} px per side)")
            image = resize_shorter(image, self.resize)
        except ImageError as exc:
            self.skipped[str(path)] = str(exc)
            log.warning("skipping training image: %s", exc)
            return None
        self._cache[path] = image
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return image

    def _crop(self, image: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        h, w = image.shape[-2:]
        size = min(self.crop, h, w)
        top = int(torch.randint(0, h - size + 1, (1,), generator=gen))
        left = int(torch.randint(0, w - size + 1, (1,), generator=gen))
        patch = image[..., top : top + size, left : left + size]
        if size != self.crop:
            patch = F.interpolate(patch, size=(self.crop, self.crop), mode="bilinear", align_corners=False)
        if self.flip and bool(torch.rand((), generator=gen) < 0.5):
            patch = patch.flip(-1)
        return patch.contiguous()


def image_paths(folders: Sequence[str | Path] | str | Path) -> list[Path]:
    """All images below one or more folders (recursive, sorted); a missing folder is an error."""
    folders = [folders] if isinstance(folders, (str, Path)) else list(folders)
    paths: list[Path] = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(f"{folder}: data folder does not exist; check the path")
        found = list_images(folder)
        if not found:
            raise DataError(f"{folder}: no images (.jpg/.png/...) found; add training images or fix the path")
        paths += found
    return paths


def batches(
    sampler: CropSampler, start: int, stop: int, workers: int = 0, rank: int = 0, world: int = 1
) -> Iterator[torch.Tensor]:
    """This process's batches for steps ``start`` .. ``stop - 1``, optionally decoded by worker processes."""
    steps = _Steps(sampler, range(start, stop), rank, world)
    if workers <= 0:
        yield from (steps[i] for i in range(len(steps)))
        return
    yield from DataLoader(steps, batch_size=None, num_workers=workers, persistent_workers=False)


class _Steps(Dataset):
    def __init__(self, sampler: CropSampler, steps: range, rank: int, world: int) -> None:
        self.sampler, self.steps, self.rank, self.world = sampler, steps, rank, world

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.sampler.shard(self.steps[i], self.rank, self.world)


def skimage_photos(folder: str | Path) -> list[Path]:
    """Write scikit-image's bundled colour photos to ``folder`` as PNGs (the offline default data)."""
    import numpy as np
    from PIL import Image
    from skimage import data as skdata

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina", "cat")
    written = []
    for name in names:
        loader = getattr(skdata, name, None)
        if loader is None:
            continue
        try:
            array = np.asarray(loader())
        except Exception as exc:  # a photo missing from this scikit-image build is not fatal
            log.warning("scikit-image photo %s unavailable: %s", name, exc)
            continue
        if array.ndim != 3 or array.shape[2] != 3:
            continue
        path = folder / f"{name}.png"
        if not path.exists():
            Image.fromarray(array.astype("uint8")).save(path)
        written.append(path)
    if not written:
        raise DataError("scikit-image ships no colour photos in this install; pass a data folder instead")
    return written
