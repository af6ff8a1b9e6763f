"""Images and feature maps that live on disk, read and written a window at a time.

A :class:`DiskCanvas` is a raw float32 ``H x W x C`` file. Each access maps only the rows it needs
and unmaps them again, so the pages count against the OS page cache, not this process's resident
memory: peak RSS stays proportional to the tile, however large the image. Image files are decoded
into a canvas and encoded from its bands by :mod:`cdcompress.data.images`, for the same reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..data.images import BAND_BYTES, WritableCanvas


class Canvas(WritableCanvas, Protocol):
    """An ``H x W x C`` float32 array that can be read and written by rectangles."""

    shape: tuple[int, int, int]

    def read(self, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray: ...


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


def canvas_bands(canvas: Canvas, rows_per_band: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """``(top, band)`` over the whole canvas, a bounded number of rows at a time."""
    height, width, channels = canvas.shape
    rows = rows_per_band or max(1, BAND_BYTES // (width * channels * 4))
    for top in range(0, height, rows):
        yield top, canvas.read((top, min(height, top + rows)), (0, width))


def resize_hwc(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Antialiased bilinear resize of a small in-memory ``H x W x 3`` float image."""
    tensor = to_nchw(image)
    out = torch.nn.functional.interpolate(tensor, size=(height, width), mode="bilinear", antialias=True,
                                          align_corners=False)
    return to_hwc(out)
