"""Whether a job runs untiled or in tiles, and how large the tiles and the scratch files are.

Kept apart from the computation so cost reports and max-size searches (``cdcompress eval cost``)
ask the same memory model ``stylize`` decides with, without running anything. The per-level
halos and working-set estimates come from :mod:`.tiling`; this module applies them to a job.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import CDCompressError
from .job import StylizeJob
from .tiling import (
    DEFAULT_MAX_MEMORY,
    MEMORY_HEADROOM,
    align_up,
    format_bytes,
    minimum_budget,
    parse_memory,
    plan_tiles,
    resident_bytes,
    tile_for_budget,
    window_bytes,
)

#: Features are cached between passes when they take at most this many bytes per image pixel
#: (re-encoding costs more than reading them back; level 1's 64 B/px is cheaper to recompute).
CACHE_MAX_BYTES_PER_PIXEL = 32.0


@dataclass(frozen=True)
class TilingPlan:
    """Per level: core tile size and whether pass-1 features are cached on disk."""

    tiles: dict[int, int]
    cache: dict[int, bool]

    def describe(self) -> str:
        low, high = min(self.tiles.values()), max(self.tiles.values())
        cached = ",".join(str(k) for k, on in self.cache.items() if on)
        return f"tiled ({low if low == high else f'{low}-{high}'} px{f', cache L{cached}' if cached else ''})"


def tile_count(job: StylizeJob, plan: TilingPlan, height: int, width: int, style_hw: tuple[int, int]) -> int:
    """Tiles a tiled run computes over all levels and both passes (style statistics included)."""
    total = 0
    for level in job.levels:
        geo = job.geometry(level)
        s, t = geo.stride, plan.tiles[level]
        pad = (align_up(height, s), align_up(width, s))
        halo2 = geo.decoder_halo if plan.cache[level] else geo.chain_halo
        total += len(plan_tiles(*pad, t, geo.stats_halo, s)) + len(plan_tiles(*pad, t, halo2, s))
        total += len(plan_tiles(align_up(style_hw[0], s), align_up(style_hw[1], s), t, geo.stats_halo, s))
    return total


def scratch_bytes(job: StylizeJob, plan: TilingPlan, height: int, width: int, content_on_disk: bool) -> int:
    """Disk a tiled run needs in ``workdir``: image canvases plus the largest cached feature map."""
    images = (3 if content_on_disk else 2) * height * width * 12
    cached = [
        align_up(height, g.stride) * align_up(width, g.stride) * g.feature_bytes_per_pixel
        for k in job.levels if plan.cache[k] and (g := job.geometries[k]) is not None
    ]
    return int(images + max(cached, default=0))


def untiled_bytes(job: StylizeJob, height: int, width: int, style_hw: tuple[int, int]) -> float:
    """Estimated peak of the untiled computation on top of the current resident size."""
    work = 0.0
    for level in job.levels:
        geo = job.geometry(level)
        padded = align_up(height, geo.stride) * align_up(width, geo.stride)
        style = align_up(style_hw[0], geo.stride) * align_up(style_hw[1], geo.stride)
        work = max(work, window_bytes(geo, max(padded, style)))
    return work + 4 * 12 * height * width + MEMORY_HEADROOM


def plan_tiling(job: StylizeJob, height: int, width: int, style_hw: tuple[int, int], tile: int | None,
                max_memory: int | str | None, cache_features: bool | None) -> TilingPlan | None:
    """``None`` for the untiled computation, else tile sizes per level (from ``tile`` or the budget)."""
    if tile == 0:
        return None
    if tile is not None and tile < 0:
        raise CDCompressError(f"tile {tile} must be a positive number of pixels, or 0 for untiled")
    geos = {k: job.geometry(k) for k in job.levels} if tile is not None else {}
    budget = parse_memory(max_memory if max_memory is not None else DEFAULT_MAX_MEMORY)
    if tile is None:
        if all(job.geometries[k] is None for k in job.levels):
            return None  # nothing to plan with: untiled, as the backend cannot be tiled anyway
        if resident_bytes() + untiled_bytes(job, height, width, style_hw) <= budget:
            return None
        geos = {k: job.geometry(k) for k in job.levels}
    cache = {
        k: cache_features if cache_features is not None else g.feature_bytes_per_pixel <= CACHE_MAX_BYTES_PER_PIXEL
        for k, g in geos.items()
    }
    if tile is not None:
        return TilingPlan({k: align_up(tile, g.stride) for k, g in geos.items()}, cache)
    available = budget - resident_bytes() - MEMORY_HEADROOM
    tiles = {}
    for k, g in geos.items():
        halo = max(g.stats_halo, g.decoder_halo if cache[k] else g.chain_halo)
        chosen = tile_for_budget(g, halo, available, max(height, width, *style_hw))
        if chosen is None:
            need = minimum_budget(g, halo) + budget - available
            raise CDCompressError(
                f"max memory {format_bytes(budget)} is too small: level {k} needs about {format_bytes(need)} even with "
                "the smallest tile; raise --max-memory"
            )
        tiles[k] = chosen
    return TilingPlan(tiles, cache)
