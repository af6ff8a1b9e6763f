"""The exact tiled computation: the untiled result at memory bounded by the tile, not the image.

Per level, two passes. Pass 1 encodes haloed tiles and accumulates the content statistics
(optionally caching the core features on disk); pass 2 applies the map and decodes haloed tiles
(from the cached features, or re-encoding), writing each tile's core into a disk-backed canvas that
feeds the next level. The halos (from :mod:`.tiling`) make every core equal the untiled one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..core.progress import Progress
from .canvas import Canvas, DiskCanvas, MemoryCanvas, read_padded, to_hwc, to_nchw
from .job import StylizeJob
from .plan import TilingPlan, tile_count
from .tiling import Tile, align_up, plan_tiles
from .wct import FeatureStats


def core_slices(tile: Tile, stride: int) -> tuple[slice, slice]:
    """Where a tile's core lies inside its window's feature map."""
    (r0, r1), (wr0, _) = tile.rows.core, tile.rows.window
    (c0, c1), (wc0, _) = tile.cols.core, tile.cols.window
    return slice((r0 - wr0) // stride, (r1 - wr0) // stride), slice((c0 - wc0) // stride, (c1 - wc0) // stride)


def accumulate_stats(job: StylizeJob, level: int, source: Canvas, tile: int, cache: DiskCanvas | None,
                     bar: Progress) -> FeatureStats:
    """Pass 1: encoder over haloed tiles; core features feed the statistics (and the cache)."""
    geo = job.geometry(level)
    s = geo.stride
    height, width = align_up(source.shape[0], s), align_up(source.shape[1], s)
    stats = FeatureStats(geo.feature_channels)
    for t in plan_tiles(height, width, tile, geo.stats_halo, s):
        window = read_padded(source, t.rows.window, t.cols.window)
        rows, cols = core_slices(t, s)
        core = job.backend.encode(level, to_nchw(window))[..., rows, cols]
        stats.update(core)
        if cache is not None:
            cache.write(t.rows.core[0] // s, t.cols.core[0] // s, to_hwc(core))
        bar.update()
    return stats


def _write_core(target: Canvas, tile: Tile, decoded: torch.Tensor) -> None:
    rows, cols = core_slices(tile, 1)
    height, width = target.shape[:2]
    (r0, r1), (c0, c1) = tile.rows.core, tile.cols.core
    keep_r, keep_c = min(r1, height) - r0, min(c1, width) - c0  # drop the stride padding
    core = decoded[0, :, rows, cols][:, :keep_r, :keep_c]
    target.write(r0, c0, core.permute(1, 2, 0).cpu().numpy())


def _level_tiled(job: StylizeJob, level: int, source: Canvas, target: Canvas, style_stats: FeatureStats,
                 plan: TilingPlan, scratch: Path, bar: Progress) -> None:
    geo = job.geometry(level)
    s, tile = geo.stride, plan.tiles[level]
    height, width = align_up(source.shape[0], s), align_up(source.shape[1], s)
    cache = None
    if plan.cache[level]:
        cache = DiskCanvas(scratch / f"features{level}.f32", (height // s, width // s, geo.feature_channels))
    mapping = job.transform(accumulate_stats(job, level, source, tile, cache, bar), style_stats)
    if cache is not None:
        for t in plan_tiles(height, width, tile, geo.decoder_halo, s):
            (r0, r1), (c0, c1) = t.rows.window, t.cols.window
            features = to_nchw(cache.read((r0 // s, r1 // s), (c0 // s, c1 // s)))
            _write_core(target, t, job.backend.decode(level, mapping.apply(features)))
            bar.update()
        cache.path.unlink()
        return
    for t in plan_tiles(height, width, tile, geo.chain_halo, s):
        window = to_nchw(read_padded(source, t.rows.window, t.cols.window))
        features = mapping.apply(job.backend.encode(level, window))
        _write_core(target, t, job.backend.decode(level, features))
        bar.update()


def stylize_tiled(job: StylizeJob, content: Canvas, style: torch.Tensor, plan: TilingPlan, scratch: Path,
                  progress: bool) -> Canvas:
    """Run every level tile by tile; returns the (unclamped) result canvas inside ``scratch``."""
    height, width = content.shape[:2]
    style_canvas = MemoryCanvas.from_tensor(style)
    buffers: list[Canvas] = []
    source: Canvas = content
    total = tile_count(job, plan, height, width, tuple(style.shape[-2:]))
    with Progress(total, "stylize", "tile", enabled=progress, leave=False) as bar:
        for i, level in enumerate(job.levels):
            if len(buffers) < 2:
                buffers.append(DiskCanvas(scratch / f"image{i}.f32", (height, width, 3)))
            target = buffers[i % 2]
            bar.set_description(f"stylize L{level}")
            style_stats = accumulate_stats(job, level, style_canvas, plan.tiles[level], None, bar)
            _level_tiled(job, level, source, target, style_stats, plan, scratch, bar)
            source = target
    return source
