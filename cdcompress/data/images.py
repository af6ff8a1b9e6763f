"""All image file I/O: whole images as float tensors in [0, 1] (NCHW RGB), or streamed a band of rows at a time.

Every input mode Pillow decodes (grayscale, palette, RGBA, 16-bit, CMYK, EXIF-rotated) is
normalised to 8-bit-equivalent RGB; anything undecodable is one :class:`ImageError` line.
Files are opened with the reader of their format directly (:func:`open_image`), so cdcompress's own
bound :data:`MAX_IMAGE_PIXELS` replaces Pillow's process-wide decompression-bomb guard (~179 Mpx) for
ultra-resolution inputs (16384x16384 = 268 Mpx) without changing Pillow's setting for the process.

Images too large to hold as floats are decoded band by band into a caller's canvas
(:func:`decode_to_canvas`) and written from row bands (:func:`save_output`, PNG as a stream), so
the float image never exists in memory; the canvases themselves live in ``stylize.canvas``.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Literal, Protocol, TypeVar

import numpy as np
import torch
from PIL import (
    BmpImagePlugin,  # noqa: F401  (imported to register the readers in Image.OPEN)
    GifImagePlugin,  # noqa: F401
    Image,
    ImageOps,
    JpegImagePlugin,  # noqa: F401
    PngImagePlugin,  # noqa: F401
    PpmImagePlugin,  # noqa: F401
    TiffImagePlugin,  # noqa: F401
    UnidentifiedImageError,
    WebPImagePlugin,  # noqa: F401
)

from ..core.atomic import staged_file
from ..core.errors import CDCompressError, ImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: Largest image decoded, in pixels (32768x32768, 3 GiB as 8-bit RGB): above it a file is refused.
MAX_IMAGE_PIXELS = 1 << 30
#: Pillow readers tried, in order: raster formats only (PostScript/EPS would run Ghostscript, fonts/icons are
#: not photos).
READ_FORMATS = ("PNG", "JPEG", "BMP", "WEBP", "TIFF", "GIF", "PPM")
#: What Pillow raises for a file it cannot decode (callers turn these into one-line ImageErrors).
DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)
#: Rows decoded, converted or encoded per step when streaming whole images.
BAND_BYTES = 32 << 20
#: zlib level for PNG outputs; above ``PNG_FAST_PIXELS`` level 1 (~3x faster, ~20 % larger files).
PNG_LEVEL, PNG_FAST_PIXELS = 6, 64 << 20
_EXIF_ORIENTATION = 0x0112


def _too_large(path: Path, size: tuple[int, int]) -> ImageError:
    w, h = size
    return ImageError(
        f"{path}: {w}x{h} is {w * h / 1e6:.0f} Mpx, above cdcompress's bound of {MAX_IMAGE_PIXELS / 1e6:.0f} Mpx "
        "(cdcompress.data.images.MAX_IMAGE_PIXELS); downscale or split the image"
    )


def decode_error(path: str | Path, exc: BaseException) -> ImageError:
    """The one-line :class:`ImageError` for a decoding failure ``exc`` of ``path``."""
    if isinstance(exc, Image.DecompressionBombError):  # a frame or tile beyond Pillow's own guard while decoding
        return ImageError(f"{path}: image exceeds Pillow's decompression-bomb bound for its format ({exc}); downscale it "
                          "or save it as PNG/JPEG")
    return ImageError(f"{path}: cannot decode image ({exc}); use a valid JPEG/PNG file")


def _open_reader(path: Path) -> Image.Image:
    """``Image.open`` minus its process-wide bomb check: the reader that accepts the file's first bytes.

    Readers parse the header only (size, mode); the caller bounds the size before any pixel is decoded.
    """
    with open(path, "rb") as fh:
        prefix = fh.read(16)
    for name in READ_FORMATS:
        if name not in Image.OPEN:  # a Pillow built without this codec
            continue
        factory, accept = Image.OPEN[name]
        accepted = accept(prefix) if accept else True
        if not accepted or isinstance(accepted, str):  # a str: Pillow's "cannot read this variant" note
            continue
        try:
            return factory(os.fspath(path), os.fspath(path))  # a path: the reader owns (and closes) the file
        except (SyntaxError, IndexError, TypeError, struct.error):
            continue  # as Image.open does: not this format after all
    raise UnidentifiedImageError(f"cannot identify image file {str(path)!r}")


@contextmanager
def open_image(path: str | Path) -> Iterator[Image.Image]:
    """Open ``path`` lazily, refusing sizes above :data:`MAX_IMAGE_PIXELS` before any pixel is decoded.

    Decode inside the ``with`` block. No global state is touched and no lock is held, so threads decode
    concurrently (Pillow's ``MAX_IMAGE_PIXELS`` is process-wide; changing it would also need a lock).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such image file; check the path")
    try:
        img = _open_reader(path)
    except DECODE_ERRORS as exc:
        raise decode_error(path, exc) from None
    with img:
        if img.width * img.height > MAX_IMAGE_PIXELS:
            raise _too_large(path, img.size)
        yield img


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


def crop_to_multiple(image: torch.Tensor, multiple: int, source: str | Path = "image",
                     anchor: Literal["top-left", "center"] = "top-left") -> torch.Tensor:
    """The largest region whose height and width are multiples of ``multiple`` (a model's stride): the top-left
    one (what :func:`load_image` keeps) or the centred one (held-out photos). Too small an image is one
    :class:`ImageError` line naming ``source``."""
    if anchor not in ("top-left", "center"):
        raise ValueError(f"anchor must be 'top-left' or 'center', got {anchor!r}")
    if multiple <= 1:
        return image
    h, w = image.shape[-2:]
    h2, w2 = h - h % multiple, w - w % multiple
    if h2 == 0 or w2 == 0:
        raise ImageError(f"{source}: {w}x{h} pixels is smaller than the required multiple {multiple}; use a larger image")
    top, left = ((h - h2) // 2, (w - w2) // 2) if anchor == "center" else (0, 0)
    return image[..., top : top + h2, left : left + w2]


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
    array = to_uint8(image)
    with staged_file(path) as staging:
        Image.fromarray(array).save(staging)
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


# ----------------------------------------------------------------------------- streamed input


class WritableCanvas(Protocol):
    """Where :func:`decode_to_canvas` puts the pixels: an ``H x W x C`` array written by rectangles."""

    def write(self, top: int, left: int, values: np.ndarray) -> None: ...


CanvasT = TypeVar("CanvasT", bound=WritableCanvas)


def _header_orientation(img: Image.Image) -> int:
    """EXIF orientation known without decoding pixels (Pillow's PNG ``getexif`` would decode the image;
    an eXIf chunk placed after the pixel data is only seen once decoded)."""
    if img.format == "PNG":
        raw = img.info.get("exif")
        if not raw:
            return 1
        exif = Image.Exif()
        exif.load(raw)
        return int(exif.get(_EXIF_ORIENTATION, 1))
    return int(img.getexif().get(_EXIF_ORIENTATION, 1))


def image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` after EXIF rotation, read from the header only."""
    with open_image(path) as img:
        width, height = img.size
        try:
            transposed = _header_orientation(img) in (5, 6, 7, 8)
        except DECODE_ERRORS as exc:
            raise decode_error(path, exc) from None
    return (width, height) if transposed else (height, width)


def decode_to_canvas(path: str | Path, make_canvas: Callable[[tuple[int, int, int]], CanvasT]) -> CanvasT:
    """Decode an image file into ``make_canvas(shape)`` band by band (RGB float32 in [0, 1], same values as
    ``load_image``).

    The 8-bit decoded image is held once (3 bytes per pixel); the float conversion never is.
    """
    path = Path(path)
    with open_image(path) as img:
        try:
            img.load()
            if img.getexif().get(_EXIF_ORIENTATION, 1) != 1:
                img = ImageOps.exif_transpose(img)
            canvas = make_canvas((img.height, img.width, 3))
            if img.mode in ("I", "F"):  # 32-bit data: the [0, 1] scaling depends on the whole image
                canvas.write(0, 0, to_rgb_array(img))
                return canvas
            rows = max(1, BAND_BYTES // (img.width * 12))
            for top in range(0, img.height, rows):
                bottom = min(img.height, top + rows)
                canvas.write(top, 0, to_rgb_array(img.crop((0, top, img.width, bottom))))
        except DECODE_ERRORS as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise  # a scratch-disk problem, not the image's
            raise decode_error(path, exc) from None
    return canvas


# ----------------------------------------------------------------------------- streamed output


def _paeth_filter(band: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """PNG filter type 4 for every row of an ``h x (w*3)`` uint8 band (``previous``: the row above it)."""
    raw = band.astype(np.int16)
    up = np.vstack([previous[None].astype(np.int16), raw[:-1]])
    left = np.zeros_like(raw)
    left[:, 3:] = raw[:, :-3]
    up_left = np.zeros_like(raw)
    up_left[:, 3:] = up[:, :-3]
    p = left + up - up_left
    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - up_left)
    predictor = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))
    filtered = ((raw - predictor) & 0xFF).astype(np.uint8)
    return np.hstack([np.full((band.shape[0], 1), 4, np.uint8), filtered])


def _chunk(fh: BinaryIO, kind: bytes, data: bytes) -> None:
    fh.write(struct.pack(">I", len(data)) + kind + data)
    fh.write(struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def write_png(path: str | Path, height: int, width: int, bands: Iterable[np.ndarray], level: int = 6) -> Path:
    """Stream ``uint8`` RGB row bands (``h x width x 3``, top to bottom) into an 8-bit PNG file."""
    path = Path(path)
    compressor = zlib.compressobj(level)
    previous = np.zeros(width * 3, np.uint8)
    written = 0
    with staged_file(path) as staging, open(staging, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n")
        _chunk(fh, b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        for band in bands:
            flat = band.reshape(band.shape[0], width * 3)
            data = compressor.compress(_paeth_filter(flat, previous).tobytes())
            previous, written = flat[-1], written + band.shape[0]
            if data:
                _chunk(fh, b"IDAT", data)
        _chunk(fh, b"IDAT", compressor.flush())
        _chunk(fh, b"IEND", b"")
        if written != height:
            raise AssertionError(f"PNG stream got {written} rows, expected {height}")
    return path


def write_npy(path: str | Path, height: int, width: int, bands: Iterable[np.ndarray]) -> Path:
    """Stream float32 row bands into an ``H x W x 3`` ``.npy`` file (for exact comparisons)."""
    path = Path(path)
    with staged_file(path) as staging, open(staging, "wb") as fh:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                  "shape": (height, width, 3)}
        np.lib.format.write_array_header_2_0(fh, header)
        for band in bands:
            fh.write(np.ascontiguousarray(band, dtype=np.float32).tobytes())
    return path


def save_output(path: str | Path, height: int, width: int, bands: Iterable[np.ndarray]) -> Path:
    """Write float RGB bands as ``.png`` (8-bit) or ``.npy`` (float32), chosen by the suffix."""
    suffix = Path(path).suffix.lower()
    if suffix == ".png":
        level = PNG_LEVEL if height * width <= PNG_FAST_PIXELS else 1
        return write_png(path, height, width, (unit_to_uint8(b) for b in bands), level)
    if suffix == ".npy":
        return write_npy(path, height, width, bands)
    raise CDCompressError(f"{path}: outputs are written as .png (or .npy for float32 values); change the suffix")
