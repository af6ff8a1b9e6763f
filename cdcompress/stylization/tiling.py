"""Tile geometry for exact tiled encoding/decoding, and the memory budget that sizes tiles.

A VGG encoder tile is exact if its window extends past the tile's core by at least the distance
over which the tile's own border (reflection padding where the full image has real pixels)
contaminates the output. That distance follows from the architecture: each 3x3 convolution
widens it by one pixel at its scale, an aligned 2x2 pooling halves it (rounding up), and a 2x
upsampling doubles it. Window origins on multiples of the encoder stride keep poolings aligned
with the untiled computation; at the true image border a tile sees the image's own border, so the
network's reflection padding applies exactly as in the full image.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..core.errors import CDCompressError
from ..models.vgg import VGGSpec

#: Conservative float32 working set: peak RSS of one conv layer is ~``4 * (cin + 2 * max(cin, cout))``
#: bytes per pixel of its scale (padded input, output, activation); this factor covers allocator slack.
MEMORY_SAFETY = 1.5
#: Fixed allowance on top of the process's resident size for per-tile bookkeeping (float64 chunks, PNG bands).
MEMORY_HEADROOM = 256 << 20
#: Default ``max_memory`` when neither a tile nor a budget is given.
DEFAULT_MAX_MEMORY = 4 << 30


def align_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


# ----------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class LevelGeometry:
    """Stride and exactness margins of one level's encoder/decoder pair, in input pixels."""

    level: int
    stride: int
    encoder_margin: int  # pixels at a window edge where encoder features differ from the untiled ones
    decoder_margin: int  # same for the decoder alone, from the edge of a feature window
    chain_margin: int  # encoder then decoder from the same image window
    feature_channels: int
    bytes_per_pixel: float  # estimated float32 working set per window pixel (see MEMORY_SAFETY)

    @property
    def stats_halo(self) -> int:
        """Halo for pass 1 (encoder only): encoder features of the core are bit-identical."""
        return align_up(self.encoder_margin, self.stride)

    @property
    def chain_halo(self) -> int:
        """Halo for pass 2 re-encoding: the decoded core equals the untiled result."""
        return align_up(self.chain_margin, self.stride)

    @property
    def decoder_halo(self) -> int:
        """Halo (in image pixels, a multiple of the stride) for pass 2 from cached features."""
        return align_up(self.decoder_margin, self.stride)

    @property
    def feature_bytes_per_pixel(self) -> float:
        return 4.0 * self.feature_channels / self.stride**2


def _encoder_ops(spec: VGGSpec) -> list[tuple[str, int, int]]:
    """(op, cin, cout) in order; ``pool`` halves resolution, ``conv`` is a padded 3x3 convolution."""
    ops: list[tuple[str, int, int]] = []
    cin, stage = 3, 1
    for name, width in zip(spec.convs, spec.widths, strict=True):
        if int(name[4]) != stage:
            stage = int(name[4])
            ops.append(("pool", cin, cin))
        ops.append(("conv", cin, width))
        cin = width
    return ops


def _decoder_ops(spec: VGGSpec) -> list[tuple[str, int, int]]:
    ops: list[tuple[str, int, int]] = []
    names = spec.convs
    for i in range(len(names) - 1, -1, -1):
        cout = spec.widths[i - 1] if i > 0 else 3
        ops.append(("conv", spec.widths[i], cout))
        if names[i].endswith("1") and names[i] != "conv11":
            ops.append(("up", cout, cout))
    return ops


def encoder_margin(spec: VGGSpec) -> int:
    """Contaminated border width (input pixels) of an encoder run on a stride-aligned window."""
    margin, scale = 0, 1  # margin counted in pixels of the current scale
    for op, _, _ in _encoder_ops(spec):
        if op == "conv":
            margin += 1
        else:
            margin, scale = -(-margin // 2), scale * 2
    return margin * scale


def decoder_margin(spec: VGGSpec, feature_margin: int = 0) -> int:
    """Contaminated border width (output pixels) of a decoder whose input already has ``feature_margin``."""
    margin, scale = feature_margin, spec.stride
    for op, _, _ in _decoder_ops(spec):
        if op == "conv":
            margin += 1
        else:
            margin, scale = margin * 2, scale // 2
    return margin * scale


def _peak_conv_bytes(ops: list[tuple[str, int, int]], scale: int, grow: bool) -> float:
    peak = 0.0
    for op, cin, cout in ops:
        if op == "conv":
            peak = max(peak, 4.0 * (cin + 2 * max(cin, cout)) / scale**2)
        elif grow:
            scale *= 2
        else:
            scale //= 2
            peak = max(peak, (cin + 4.0 * cout) / scale**2)  # nearest 2x upsampling: input and 4x output
    return peak


def level_geometry(encoder: VGGSpec, decoder: VGGSpec) -> LevelGeometry:
    """Margins and working-set estimate of a level from its encoder and decoder architectures."""
    if encoder.level != decoder.level:
        raise ValueError(f"encoder level {encoder.level} does not match decoder level {decoder.level}")
    stride = encoder.stride
    enc_margin = encoder_margin(encoder)
    channels = decoder.out_channels  # what the decoder reads: the encoder's own width, or a drop-in student's teacher width
    held = 2 * 12 + 3 * 4.0 * channels / stride**2 + 2 * 12  # window in/out (numpy + torch), 3 feature copies
    work = max(_peak_conv_bytes(_encoder_ops(encoder), 1, grow=True), _peak_conv_bytes(_decoder_ops(decoder), stride, grow=False))
    return LevelGeometry(
        level=encoder.level,
        stride=stride,
        encoder_margin=enc_margin,
        decoder_margin=decoder_margin(decoder),
        chain_margin=decoder_margin(decoder, -(-enc_margin // stride)),
        feature_channels=channels,
        bytes_per_pixel=held + work,
    )


# ----------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class Span:
    """A 1-D tile: ``core`` is the part it owns, ``window`` the part it computes (both half-open)."""

    core: tuple[int, int]
    window: tuple[int, int]


@dataclass(frozen=True)
class Tile:
    rows: Span
    cols: Span

    @property
    def window_pixels(self) -> int:
        return (self.rows.window[1] - self.rows.window[0]) * (self.cols.window[1] - self.cols.window[0])


def spans(length: int, tile: int, halo: int, align: int) -> list[Span]:
    """Cover ``[0, length)`` with near-equal cores (multiples of ``align``) grown by ``halo`` inside the image."""
    if length % align or tile < align or halo % align:
        raise ValueError(f"length {length}, tile {tile} and halo {halo} must be multiples of {align} (tile >= {align})")
    count = -(-length // tile)
    size = align_up(-(-length // count), align)
    out = []
    for start in range(0, length, size):
        end = min(start + size, length)
        out.append(Span((start, end), (max(0, start - halo), min(length, end + halo))))
    return out


def plan_tiles(height: int, width: int, tile: int, halo: int, align: int) -> list[Tile]:
    """Row-major tiles over a (stride-padded) ``height x width`` image."""
    rows, cols = spans(height, tile, halo, align), spans(width, tile, halo, align)
    return [Tile(r, c) for r in rows for c in cols]


# ----------------------------------------------------------------------------- memory

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def parse_memory(text: str | int) -> int:
    """``"4GiB"`` / ``"512MiB"`` / ``"4G"`` (binary) / ``"4GB"`` (decimal) / bytes -> bytes."""
    if isinstance(text, int):
        if text <= 0:
            raise CDCompressError(f"memory size {text} must be positive")
        return text
    match = _SIZE.match(str(text))
    if not match:
        raise CDCompressError(f"memory size {text!r}: expected a number with a unit such as 4GiB, 512MiB or 8GB")
    number, prefix, suffix = float(match[1]), match[2].lower(), match[3].lower()
    power = "kmgt".index(prefix) + 1 if prefix else 0
    base = 1000 if suffix == "b" and prefix else 1024
    size = int(number * base**power)
    if size <= 0:
        raise CDCompressError(f"memory size {text!r} must be positive")
    return size


def format_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def resident_bytes() -> int:
    """This process's current resident set size (0 where /proc is unavailable)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * 4096
    except (OSError, ValueError, IndexError):
        return 0


def window_bytes(geometry: LevelGeometry, window_pixels: int) -> float:
    return MEMORY_SAFETY * geometry.bytes_per_pixel * window_pixels


def tile_for_budget(geometry: LevelGeometry, halo: int, budget: float, limit: int) -> int | None:
    """Largest core size (multiple of the stride, at most ``limit``) whose square window fits ``budget`` bytes."""
    if budget <= 0:
        return None
    side = math.isqrt(int(budget / (MEMORY_SAFETY * geometry.bytes_per_pixel)))
    tile = (side - 2 * halo) // geometry.stride * geometry.stride
    if tile < geometry.stride:
        return None
    return min(tile, align_up(limit, geometry.stride))


def minimum_budget(geometry: LevelGeometry, halo: int) -> float:
    """Bytes the smallest sensible tile (2 strides plus halos) needs at this level."""
    return window_bytes(geometry, (2 * geometry.stride + 2 * halo) ** 2)
