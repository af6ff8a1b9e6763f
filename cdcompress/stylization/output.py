"""Turning a result canvas into what the caller asked for: a tensor, a ``.png``/``.npy`` file, a grid.

Colour preservation and clipping are applied band by band on the way out, so a tiled result is
finished without ever holding the whole float image; the file encoders are in :mod:`cdcompress.data.images`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..core.errors import CDCompressError
from ..data.images import BAND_BYTES, save_output
from .canvas import Canvas, canvas_bands, resize_hwc, to_hwc, to_nchw

#: Grid panels are box-downscaled by an integer factor to at most this height.
GRID_MAX_HEIGHT = 2048
#: Rec. 601 luma weights, for colour preservation (luminance-only transfer).
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def check_output_path(path: str | Path | None, what: str) -> Path | None:
    """``path`` as a Path if it can take a result (``.png`` or ``.npy``, not a folder); checked before any work."""
    if path is None:
        return None
    path = Path(path)
    if path.suffix.lower() not in (".png", ".npy"):
        raise CDCompressError(f"{what} {path}: must end in .png (or .npy for float32 values); change the suffix")
    if path.is_dir():
        raise CDCompressError(f"{what} {path} is a directory; give a file name ending in .png")
    return path


def _keep_colour(result: np.ndarray, content: np.ndarray) -> np.ndarray:
    """Luminance-only transfer: the content's colours with the result's luma (Gatys et al., 2016)."""
    return content + ((result - content) @ _LUMA)[..., None]


def _finished_bands(result: Canvas, content: Canvas, preserve_color: bool) -> Iterator[np.ndarray]:
    width = result.shape[1]
    for top, band in canvas_bands(result):
        if preserve_color:
            band = _keep_colour(band, content.read((top, top + band.shape[0]), (0, width)))
        yield np.clip(band, 0.0, 1.0)


def _finished_tensor(result: Canvas, content: Canvas, preserve_color: bool) -> torch.Tensor:
    height, width = result.shape[:2]
    out = np.empty((height, width, 3), np.float32)
    top = 0
    for band in _finished_bands(result, content, preserve_color):
        out[top : top + band.shape[0]] = band
        top += band.shape[0]
    return to_nchw(out)


def _box(block: np.ndarray, factor: int, width: int) -> np.ndarray:
    """Box-downscale an ``(n * factor) x (width * factor) x 3`` block by ``factor``."""
    if factor == 1:
        return block
    return block.reshape(block.shape[0] // factor, factor, width, factor, 3).mean(axis=(1, 3))


def _grid_bands(content: Canvas, style: torch.Tensor, result: Canvas,
                preserve_color: bool) -> tuple[int, int, Iterator[np.ndarray]]:
    """content | style | result, side by side at a common height of at most ``GRID_MAX_HEIGHT``."""
    height, width = content.shape[:2]
    factor = -(-height // GRID_MAX_HEIGHT)
    ph, pw = height // factor, width // factor
    sh, sw = style.shape[-2:]
    style_panel = np.clip(resize_hwc(to_hwc(style), ph, max(1, round(sw * ph / sh))), 0, 1)
    rows = max(1, BAND_BYTES // (width * factor * 12))

    def bands() -> Iterator[np.ndarray]:
        for top in range(0, ph, rows):
            bottom = min(ph, top + rows)
            span, cols = (top * factor, bottom * factor), (0, pw * factor)
            source, res = content.read(span, cols), result.read(span, cols)
            if preserve_color:
                res = _keep_colour(res, source)
            panels = [_box(np.clip(source, 0, 1), factor, pw), style_panel[top:bottom], _box(np.clip(res, 0, 1), factor, pw)]
            yield np.concatenate(panels, axis=1)

    return ph, 2 * pw + style_panel.shape[1], bands()


def _write_outputs(out: Path | None, grid: Path | None, content: Canvas, style: torch.Tensor, result: Canvas,
                   preserve_color: bool) -> None:
    height, width = result.shape[:2]
    if out is not None:
        save_output(out, height, width, _finished_bands(result, content, preserve_color))
    if grid is not None:
        gh, gw, bands = _grid_bands(content, style, result, preserve_color)
        save_output(grid, gh, gw, bands)


def finish(content: Canvas, style: torch.Tensor, result: Canvas, out: Path | None, grid: Path | None,
           preserve_color: bool) -> torch.Tensor | Path:
    """Write ``out`` and ``grid`` where given; return ``out``, or else the finished ``[1, 3, H, W]`` tensor."""
    _write_outputs(out, grid, content, style, result, preserve_color)
    if out is not None:
        return out
    return _finished_tensor(result, content, preserve_color)
