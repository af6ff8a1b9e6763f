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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..core.errors import CDCompressError, ImageError
from ..core.registry import DATA_SOURCES
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


@dataclass
class Batch:
    """One training batch: what the encoder sees and what the decoder must produce.

    Autoencoding data (style transfer's reconstruction) has ``target is input``; paired image-to-image
    data (denoising, colourisation) brings its own targets.
    """

    input: torch.Tensor
    target: torch.Tensor

    @property
    def paired(self) -> bool:
        return self.target is not self.input

    def to(self, device: torch.device | str) -> Batch:
        moved = self.input.to(device)
        return Batch(moved, moved if not self.paired else self.target.to(device))

    def __getitem__(self, index: slice) -> Batch:
        part = self.input[index]
        return Batch(part, part if not self.paired else self.target[index])

    def __len__(self) -> int:
        return int(self.input.shape[0])


def as_batch(item: object) -> Batch:
    """A loader's item as a :class:`Batch`: a tensor, an ``(input, target)`` pair, or a dict with
    ``input``/``image`` (and optionally ``target``). A ``(images, labels)`` pair from a classification
    loader is refused: labels are not images."""
    if isinstance(item, Batch):
        return item
    if isinstance(item, torch.Tensor):
        return Batch(item, item)
    if isinstance(item, Mapping):
        source = item.get("input", item.get("image"))
        if isinstance(source, torch.Tensor):
            target = item.get("target", source)
            return _checked(Batch(source, target) if isinstance(target, torch.Tensor) else Batch(source, source))
    if isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(t, torch.Tensor) for t in item):
        return _checked(Batch(item[0], item[1]))
    if isinstance(item, (tuple, list)) and len(item) == 1 and isinstance(item[0], torch.Tensor):
        return Batch(item[0], item[0])
    raise DataError(f"a training batch must be an image tensor [N, C, H, W], an (input, target) pair of them or a dict "
                    f"with 'input'/'target'; the data yielded {_describe(item)}")


def _checked(batch: Batch) -> Batch:
    if batch.input.dim() != 4 or batch.target.dim() != 4 or batch.target.shape[0] != batch.input.shape[0]:
        raise DataError(f"(input, target) batch shapes {list(batch.input.shape)} and {list(batch.target.shape)}: both must be "
                        "[N, C, H, W] image tensors with the same N (class labels cannot be targets)")
    return batch


def _describe(item: object) -> str:
    if isinstance(item, torch.Tensor):
        return f"a tensor of shape {list(item.shape)}"
    if isinstance(item, (tuple, list)):
        return f"a {type(item).__name__} of ({', '.join(_describe(x) for x in item)})"
    return f"a {type(item).__name__}"


def batches(
    data: object, start: int, stop: int, workers: int = 0, rank: int = 0, world: int = 1
) -> Iterator[Batch]:
    """This process's batches for steps ``start`` .. ``stop - 1``.

    ``data`` is any of:

    * a sampler with ``shard(step, rank, world)`` (:class:`CropSampler`): batch ``i`` is a pure function
      of ``i``, so resume needs no state and ``workers`` decode in parallel;
    * a zero-argument callable returning an iterable (a loader *factory*): called at the start and
      again whenever an epoch ends;
    * a re-iterable (``DataLoader``, list of tensors): iterated again whenever an epoch ends;
    * a one-shot iterator (a generator): used once; running out before ``stop`` is an error.

    Resuming at ``start`` skips ``start`` batches of a fresh iteration, which is exact when the
    iterable yields the same sequence every time (a factory or loader with a fixed seed). Under
    torchrun each process takes its ``1/world`` slice of every batch, so N processes see the global batch.
    """
    if callable(getattr(data, "shard", None)):
        yield from _sampled(data, start, stop, workers, rank, world)
        return
    stream = _cycled(data)
    for _ in range(start):
        if next(stream, None) is None:
            raise DataError(f"the data ran out while skipping to step {start}; a resumed run needs the same data")
    for step in range(start, stop):
        item = next(stream, None)
        if item is None:
            raise DataError(f"the data ran out after {step} batches ({stop} steps asked); pass a re-iterable loader "
                            "(DataLoader, list) or a factory returning one, or lower steps")
        yield rank_slice(as_batch(item), rank, world)


def _sampled(sampler: object, start: int, stop: int, workers: int, rank: int, world: int) -> Iterator[Batch]:
    steps = _Steps(sampler, range(start, stop), rank, world)
    if workers <= 0:
        yield from (as_batch(steps[i]) for i in range(len(steps)))
        return
    yield from (as_batch(b) for b in DataLoader(steps, batch_size=None, num_workers=workers, persistent_workers=False))


def _cycled(data: object) -> Iterator[object]:
    """Items of ``data`` epoch after epoch (a one-shot iterator yields its items once)."""
    if callable(data) and not isinstance(data, (Iterable, torch.Tensor)):
        make = data
    elif isinstance(data, Iterable) and not isinstance(data, Iterator):
        make = lambda: data  # noqa: E731 - a re-iterable is its own factory
    elif isinstance(data, Iterator):
        yield from data
        return
    else:
        raise DataError(f"training data must be a sampler, an iterable of batches (DataLoader, list, generator) or a "
                        f"factory returning one; got {type(data).__name__}")
    while True:
        empty = True
        for item in make():
            empty = False
            yield item
        if empty:
            raise DataError("the training data yielded no batches; check the loader/dataset is not empty")


def rank_slice(batch: Batch, rank: int, world: int) -> Batch:
    """This process's ``1/world`` of a global batch (equal slices, in rank order)."""
    if world == 1:
        return batch
    if len(batch) % world:
        raise DataError(f"batch {len(batch)} is not divisible by {world} processes; pick a multiple")
    per = len(batch) // world
    return batch[rank * per : (rank + 1) * per]


class _Steps(Dataset):
    def __init__(self, sampler: object, steps: range, rank: int, world: int) -> None:
        self.sampler, self.steps, self.rank, self.world = sampler, steps, rank, world

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, i: int) -> object:
        return self.sampler.shard(self.steps[i], self.rank, self.world)




@DATA_SOURCES.register("images")
def image_crops(paths: Sequence[Path], batch_size: int, resize: int, crop: int, seed: int) -> CropSampler:
    """The paper's data: resized, randomly cropped and flipped photos, each image its own target."""
    return CropSampler(paths, batch_size=batch_size, resize=resize, crop=crop, seed=seed)


#: scikit-image's colour photos in the order :func:`skimage_photos` writes them; the last two are the held-out set
#: (``skimage-heldout``). ``data.cat()`` is the same array as ``data.chelsea()``: a photo whose pixels an earlier one
#: has is skipped, so the held-out cat (``cat.png``, or ``chelsea.png`` where ``cat`` is missing) is never trained on.
SKIMAGE_PHOTOS = ("astronaut", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina", "cat",
                  "chelsea")
SKIMAGE_HELD_OUT = 2


def skimage_photos(folder: str | Path) -> list[Path]:
    """Write scikit-image's bundled colour photos to ``folder`` as PNGs (the offline default data), one per content."""
    import numpy as np
    from PIL import Image
    from skimage import data as skdata

    from .holdout import array_digest

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written, seen = [], set()
    for name in SKIMAGE_PHOTOS:
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
        array = array.astype("uint8")
        digest = array_digest(array)
        if digest in seen:  # the same photo under another name (cat is chelsea)
            continue
        seen.add(digest)
        path = folder / f"{name}.png"
        if not path.exists():
            Image.fromarray(array).save(path)
        written.append(path)
    if not written:
        raise DataError("scikit-image ships no colour photos in this install; pass a data folder instead")
    return written


def skimage_split(folder: str | Path) -> tuple[list[Path], list[Path]]:
    """scikit-image's photos as ``(train, held_out)``: the last :data:`SKIMAGE_HELD_OUT` are held out, and no two
    photos share their pixels."""
    photos = skimage_photos(folder)
    if len(photos) <= SKIMAGE_HELD_OUT:
        raise DataError(f"scikit-image ships only {len(photos)} colour photos here, too few to hold "
                        f"{SKIMAGE_HELD_OUT} out; pass a data folder instead")
    return photos[:-SKIMAGE_HELD_OUT], photos[-SKIMAGE_HELD_OUT:]
