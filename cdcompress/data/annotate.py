"""Labels on image grids: a header strip with a title line and one title per column, drawn above the grid.

The grid's own pixels are left exactly as they are (the header is concatenated above them), so a labelled picture
still shows what the model produced. Text is drawn with Pillow's default font (no font files): as large as
``font_size`` where it fits, smaller for narrow columns (down to :data:`MIN_FONT`), wrapped at spaces, and cut with
"…" only where a single word is wider than its column even then.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

#: Smallest font size tried before words are cut (pixels); larger sizes are used whenever the words fit.
MIN_FONT = 8
#: Header background and text colour (8-bit grey levels).
BACKGROUND, INK = 255, 24


@cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _width(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, text: str) -> float:
    return font.getlength(text)


def _cut(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, word: str, room: float) -> str:
    """``word`` itself where it fits in ``room`` pixels, else its longest head that fits followed by "…"."""
    if _width(font, word) <= room:
        return word
    while word and _width(font, word + "…") > room:
        word = word[:-1]
    return word + "…" if word else ""


def _wrap(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, text: str, room: float) -> list[str]:
    """``text`` broken at spaces into lines at most ``room`` pixels wide (a word too wide alone is cut)."""
    lines: list[str] = []
    for word in text.split():
        if lines and _width(font, f"{lines[-1]} {word}") <= room:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(_cut(font, word, room))
    return lines or [""]


@dataclass(frozen=True)
class HeaderLayout:
    """Where the header's text goes: the font size, the wrapped title and column-title lines and the pixel sizes."""

    font_size: int
    line_height: int
    pad: int
    title_lines: tuple[str, ...]
    column_lines: tuple[tuple[str, ...], ...]

    @property
    def height(self) -> int:
        rows = len(self.title_lines) + max((len(c) for c in self.column_lines), default=0)
        gap = self.pad if self.title_lines and self.column_lines else 0
        return 2 * self.pad + gap + rows * self.line_height


def header_layout(width: int, titles: Sequence[str] = (), title: str = "", font_size: int = 16) -> HeaderLayout:
    """The layout of a header ``width`` pixels wide over ``len(titles)`` equal columns: the largest font size up to
    ``font_size`` at which every word of every column title fits its column (at least :data:`MIN_FONT`)."""
    column = width / len(titles) if titles else float(width)
    words = [w for t in titles for w in t.split()]
    size = font_size
    while size > MIN_FONT:
        pad = max(2, size // 3)
        if all(_width(_font(size), w) <= column - 2 * pad for w in words):
            break
        size -= 1
    font, pad = _font(size), max(2, size // 3)
    box = font.getbbox("Ág|")
    return HeaderLayout(size, int(box[3]) + max(1, size // 5), pad,
                        tuple(_wrap(font, title, width - 2 * pad)) if title.strip() else (),
                        tuple(tuple(_wrap(font, t, column - 2 * pad)) for t in titles))


def header_height(width: int, titles: Sequence[str] = (), title: str = "", font_size: int = 16) -> int:
    """Rows of pixels :func:`with_header` adds above a grid ``width`` pixels wide (0 without titles)."""
    if not titles and not title.strip():
        return 0
    return header_layout(width, titles, title, font_size).height


def header_strip(width: int, titles: Sequence[str] = (), title: str = "", font_size: int = 16) -> np.ndarray:
    """The header itself as an 8-bit ``header_height x width x 3`` array: the title line(s) centred across the
    whole width, then each column's title centred over its column."""
    layout = header_layout(width, titles, title, font_size)
    canvas = Image.new("RGB", (width, layout.height), (BACKGROUND,) * 3)
    draw, font = ImageDraw.Draw(canvas), _font(layout.font_size)
    y = layout.pad
    for line in layout.title_lines:
        draw.text(((width - _width(font, line)) / 2, y), line, font=font, fill=(INK,) * 3)
        y += layout.line_height
    y += layout.pad if layout.title_lines and layout.column_lines else 0
    column = width / len(titles) if titles else float(width)
    for index, lines in enumerate(layout.column_lines):
        for row, line in enumerate(lines):
            x = index * column + (column - _width(font, line)) / 2
            draw.text((x, y + row * layout.line_height), line, font=font, fill=(INK,) * 3)
    return np.asarray(canvas)


def with_header(grid: torch.Tensor, titles: Sequence[str] = (), title: str = "", font_size: int = 16) -> torch.Tensor:
    """``grid`` (``[1, 3, H, W]`` or ``[3, H, W]``, values in [0, 1]) with a header above it: ``title`` on top,
    then ``titles[i]`` over the i-th of ``len(titles)`` equal-width columns. The grid's values are unchanged below
    the header; without titles the grid itself comes back."""
    height = header_height(grid.shape[-1], titles, title, font_size)
    if height == 0:
        return grid
    strip = torch.from_numpy(header_strip(grid.shape[-1], titles, title, font_size).copy()).permute(2, 0, 1)
    strip = (strip.to(device=grid.device, dtype=grid.dtype) / 255).expand(*grid.shape[:-3], -1, -1, -1)
    return torch.cat([strip, grid], dim=-2)
