"""Images and feature maps that live on disk, read and written a window at a time.

A :class:`DiskCanvas` is a raw float32 ``H x W x C`` file. Each access maps only the rows it needs
and unmaps them again, so the pages count against the OS page cache, not this process's resident
memory: peak RSS stays proportional to the tile, however large the image. Inputs are decoded into
a canvas band by band and outputs are encoded from one (PNG written as a stream), for the same reason.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import CDCompressError
from ..images import DECODE_ERRORS, decode_error, open_image, to_rgb_array, unit_to_uint8

#: Rows decoded, converted or encoded per step when streaming whole images.
BAND_BYTES = 32 << 20
#: zlib level for PNG outputs; above ``PNG_FAST_PIXELS`` level 1 (~3x faster, ~20 % larger files).
PNG_LEVEL, PNG_FAST_PIXELS = 6, 64 << 20
_EXIF_ORIENTATION = 0x0112


class Canvas(Protocol):
    """An ``H x W x C`` float32 array that can be read and written by rectangles."""

    shape: tuple[int, int, int]

    def read(self, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray: ...

    def write(self, top: int, left: int, values: np.ndarray) -> None: ...


class MemoryCanvas:
    """A canvas over an in-memory array (used for small images and tensors given by the caller)."""

    def __init__(self, array: np.ndarray) -> None:
        if array.ndim != 3:
            raise ValueError(f"canvas arrays are H x W x C, got shape {array.shape}")
        self.array = array
        self.shape = tuple(array.shape)

    @classmethod
    def from_tensor(cls, image: torch.Tensor) -> MemoryCanvas:
        """``[1, C, H, W]`` or ``[C, H, W]`` tensor -> canvas (a strided view, no copy)."""
        image = image[0] if image.dim() == 4 else image
        return cls(image.detach().float().cpu().permute(1, 2, 0).numpy())

    def read(self, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        return np.array(self.array[rows[0] : rows[1], cols[0] : cols[1]], dtype=np.float32)

    def write(self, top: int, left: int, values: np.ndarray) -> None:
        self.array[top : top + values.shape[0], left : left + values.shape[1]] = values


class DiskCanvas:
    """A float32 ``H x W x C`` array in a (sparse) file, mapped one row band per access."""

    def __init__(self, path: str | Path, shape: tuple[int, int, int]) -> None:
        self.path = Path(path)
        self.shape = (int(shape[0]), int(shape[1]), int(shape[2]))
        self._row_bytes = self.shape[1] * self.shape[2] * 4
        with open(self.path, "wb") as fh:
            fh.truncate(self.shape[0] * self._row_bytes)

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self._row_bytes

    def _band(self, rows: tuple[int, int], mode: str) -> np.memmap:
        return np.memmap(self.path, np.float32, mode, offset=rows[0] * self._row_bytes,
                         shape=(rows[1] - rows[0], self.shape[1], self.shape[2]))

    def read(self, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        band = self._band(rows, "r")
        try:
            return np.array(band[:, cols[0] : cols[1]])
        finally:
            del band

    def write(self, top: int, left: int, values: np.ndarray) -> None:
        band = self._band((top, top + values.shape[0]), "r+")
        try:
            band[:, left : left + values.shape[1]] = values  # no msync: readers map the same page cache
        finally:
            del band


def reflect_index(index: np.ndarray, size: int) -> np.ndarray:
    """Indices past the end mirrored like ``torch`` reflection padding (edge pixel not repeated)."""
    return np.where(index < size, index, 2 * (size - 1) - index)


def read_padded(canvas: Canvas, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """Read a window that may extend past the bottom/right edge into a virtual reflection padding.

    This is what ``F.pad(image, mode="reflect")`` to a multiple of the stride produces, without
    ever materialising the padded image.
    """
    height, width = canvas.shape[:2]
    if rows[1] <= height and cols[1] <= width:
        return canvas.read(rows, cols)
    row_idx = reflect_index(np.arange(*rows), height)
    col_idx = reflect_index(np.arange(*cols), width)
    r0, c0 = int(row_idx.min()), int(col_idx.min())
    block = canvas.read((r0, int(row_idx.max()) + 1), (c0, int(col_idx.max()) + 1))
    return block[row_idx - r0][:, col_idx - c0]


def to_nchw(window: np.ndarray) -> torch.Tensor:
    """``[1, 3, h, w]`` view of an HWC window (channels-last strides: no transposing copy)."""
    # Add the batch axis before permuting: its stride must be h*w*c, or oneDNN does not see NHWC.
    return torch.from_numpy(np.ascontiguousarray(window))[None].permute(0, 3, 1, 2)


def to_hwc(tensor: torch.Tensor) -> np.ndarray:
    """HWC host array of a ``[1, C, h, w]`` tensor on any device."""
    return tensor[0].permute(1, 2, 0).cpu().numpy()


# ----------------------------------------------------------------------------- input


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


def decode_to_canvas(path: str | Path, make_canvas: Callable[[tuple[int, int, int]], Canvas]) -> Canvas:
    """Decode an image file into a canvas band by band (RGB float32 in [0, 1], same values as ``load_image``).

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


# ----------------------------------------------------------------------------- output


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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    compressor = zlib.compressobj(level)
    previous = np.zeros(width * 3, np.uint8)
    written = 0
    try:
        with open(tmp, "wb") as fh:
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
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_npy(path: str | Path, height: int, width: int, bands: Iterable[np.ndarray]) -> Path:
    """Stream float32 row bands into an ``H x W x 3`` ``.npy`` file (for exact comparisons)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                      "shape": (height, width, 3)}
            np.lib.format.write_array_header_2_0(fh, header)
            for band in bands:
                fh.write(np.ascontiguousarray(band, dtype=np.float32).tobytes())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def canvas_bands(canvas: Canvas, rows_per_band: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """``(top, band)`` over the whole canvas, a bounded number of rows at a time."""
    height, width, channels = canvas.shape
    rows = rows_per_band or max(1, BAND_BYTES // (width * channels * 4))
    for top in range(0, height, rows):
        yield top, canvas.read((top, min(height, top + rows)), (0, width))


def save_output(path: str | Path, height: int, width: int, bands: Iterable[np.ndarray]) -> Path:
    """Write float RGB bands as ``.png`` (8-bit) or ``.npy`` (float32), chosen by the suffix."""
    suffix = Path(path).suffix.lower()
    if suffix == ".png":
        level = PNG_LEVEL if height * width <= PNG_FAST_PIXELS else 1
        return write_png(path, height, width, (unit_to_uint8(b) for b in bands), level)
    if suffix == ".npy":
        return write_npy(path, height, width, bands)
    raise CDCompressError(f"{path}: outputs are written as .png (or .npy for float32 values); change the suffix")


def resize_hwc(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Antialiased bilinear resize of a small in-memory ``H x W x 3`` float image."""
    tensor = to_nchw(image)
    out = torch.nn.functional.interpolate(tensor, size=(height, width), mode="bilinear", antialias=True,
                                          align_corners=False)
    return to_hwc(out)
