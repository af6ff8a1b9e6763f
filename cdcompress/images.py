"""Reading and writing images as float tensors in [0, 1], NCHW RGB.

Every input mode Pillow decodes (grayscale, palette, RGBA, 16-bit, CMYK, EXIF-rotated) is
normalised to 8-bit-equivalent RGB; anything undecodable is one :class:`ImageError` line.
Pillow's decompression-bomb guard (~179 Mpx) is raised on purpose to :data:`MAX_IMAGE_PIXELS`
so ultra-resolution inputs (16384x16384 = 268 Mpx) decode; larger images are refused clearly.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: Largest image decoded, in pixels (32768x32768, 3 GiB as 8-bit RGB): above it a file is refused.
MAX_IMAGE_PIXELS = 1 << 30
_GUARD_LOCK = threading.RLock()
#: What Pillow raises for a file it cannot decode (callers turn these into one-line ImageErrors).
DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _too_large(path: Path, size: tuple[int, int]) -> ImageError:
    w, h = size
    return ImageError(
        f"{path}: {w}x{h} is {w * h / 1e6:.0f} Mpx, above cdcompress's bound of {MAX_IMAGE_PIXELS / 1e6:.0f} Mpx "
        "(cdcompress.images.MAX_IMAGE_PIXELS); downscale or split the image"
    )


def decode_error(path: str | Path, exc: BaseException) -> ImageError:
    """The one-line :class:`ImageError` for a decoding failure ``exc`` of ``path``."""
    if isinstance(exc, Image.DecompressionBombError):
        return ImageError(f"{path}: image exceeds cdcompress's bound of {MAX_IMAGE_PIXELS / 1e6:.0f} Mpx; downscale it")
    return ImageError(f"{path}: cannot decode image ({exc}); use a valid JPEG/PNG file")


@contextmanager
def open_image(path: str | Path) -> Iterator[Image.Image]:
    """Open ``path`` lazily with the decompression-bomb guard set to :data:`MAX_IMAGE_PIXELS`.

    Decode inside the ``with`` block (some formats check sizes again while loading); the guard is
    process-wide in Pillow, so it is set under a lock and restored on exit.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such image file; check the path")
    with _GUARD_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, MAX_IMAGE_PIXELS
        try:
            try:
                img = Image.open(path)
            except DECODE_ERRORS as exc:
                raise decode_error(path, exc) from None
            with img:
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise _too_large(path, img.size)
                yield img
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def load_image(path: str | Path, crop_multiple: int = 1) -> torch.Tensor:
    """Decode ``path`` to a ``[1, 3, H, W]`` float tensor in [0, 1].

    ``crop_multiple`` crops from the top-left so H and W are multiples of it (encoders with
    pooling need multiples of their stride to reconstruct every pixel).
    """
    path = Path(path)
    with open_image(path) as img:
        try:
            array = to_rgb_array(ImageOps.exif_transpose(img))
        except DECODE_ERRORS as exc:
            raise decode_error(path, exc) from None
    tensor = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()
    return crop_to_multiple(tensor, crop_multiple, path)


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """Any Pillow mode -> float32 HxWx3 in [0, 1]; 16-bit data keeps its precision."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        data = np.asarray(img, dtype=np.float32)
        scale = 65535.0 if data.max() > 255 or img.mode.startswith("I;16") else 255.0
        gray = np.clip(data / scale, 0.0, 1.0)
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode == "F":
        gray = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite on white: transparent pixels have no defined colour otherwise.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def crop_to_multiple(image: torch.Tensor, multiple: int, source: str | Path = "image") -> torch.Tensor:
    if multiple <= 1:
        return image
    h, w = image.shape[-2:]
    h2, w2 = h - h % multiple, w - w % multiple
    if h2 == 0 or w2 == 0:
        raise ImageError(f"{source}: {w}x{h} pixels is smaller than the required multiple {multiple}; use a larger image")
    return image[..., :h2, :w2]


def center_square(image: torch.Tensor, side: int | None = None) -> torch.Tensor:
    """The centred ``side``² crop (default: the largest square), so photos of any orientation line up in grids
    and batch into equal shapes."""
    h, w = image.shape[-2:]
    side = min(h, w) if side is None else side
    top, left = (h - side) // 2, (w - side) // 2
    return image[..., top : top + side, left : left + side]


def save_image(image: torch.Tensor, path: str | Path) -> Path:
    """Write a ``[1, 3, H, W]`` or ``[3, H, W]`` tensor (clamped to [0, 1]) as an 8-bit image."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = to_uint8(image)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    Image.fromarray(array).save(tmp)
    tmp.replace(path)
    return path


def unit_to_uint8(values: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> 8-bit, rounded to nearest (every PNG cdcompress writes goes through here)."""
    return (np.clip(values, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """A ``[1, 3, H, W]`` / ``[3, H, W]`` tensor in [0, 1] as an 8-bit HxWx3 array."""
    if image.dim() == 4:
        image = image[0]
    return unit_to_uint8(image.detach().float().permute(1, 2, 0).cpu().numpy())


def list_images(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Image files in ``folder`` (below it, with ``recursive``), sorted for reproducibility."""
    folder = Path(folder)
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
