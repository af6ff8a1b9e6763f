"""``stylize``: WCT / AdaIN cascades over any backend, untiled or tiled with the exact same result.

Per level the content is encoded, a per-pixel affine map is built from global feature statistics
(content and style) and applied, and the result is decoded. Untiled, that is done on whole
tensors. Tiled, two passes make it exact at bounded memory: pass 1 encodes haloed tiles and
accumulates the content statistics (optionally caching the core features on disk); pass 2 applies
the map and decodes haloed tiles (from cached features, or re-encoding), writing each tile's core
into a disk-backed canvas that feeds the next level. Images whose sides are not multiples of a
level's stride are reflection-padded at the bottom/right for that level and cropped back, in both
modes, so the two agree everywhere.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..allocator import retained_heap
from ..errors import CDCompressError, ImageError, ModelFormatError
from ..images import load_image
from ..models.format import CDModel
from ..models.format import load as load_model
from .adain import adain_map
from .backend import Backend, TorchBackend
from .canvas import (
    BAND_BYTES,
    Canvas,
    DiskCanvas,
    MemoryCanvas,
    canvas_bands,
    decode_to_canvas,
    image_size,
    read_padded,
    resize_hwc,
    save_output,
    to_hwc,
    to_nchw,
)
from .settings import DEFAULT_LEVELS, METHODS
from .tiling import (
    DEFAULT_MAX_MEMORY,
    MEMORY_HEADROOM,
    LevelGeometry,
    Tile,
    align_up,
    backend_specs,
    format_bytes,
    level_geometry,
    minimum_budget,
    parse_memory,
    plan_tiles,
    resident_bytes,
    tile_for_budget,
    window_bytes,
)
from .wct import EIG_FLOOR, AffineMap, FeatureStats, wct_map

Method = Literal["wct", "adain"]
#: Grid panels are box-downscaled by an integer factor to at most this height.
GRID_MAX_HEIGHT = 2048
#: Features are cached between passes when they take at most this many bytes per image pixel
#: (re-encoding costs more than reading them back; level 1's 64 B/px is cheaper to recompute).
CACHE_MAX_BYTES_PER_PIXEL = 32.0
#: Rec. 601 luma weights, for colour preservation (luminance-only transfer).
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

ImageInput = torch.Tensor | str | Path


# ----------------------------------------------------------------------------- setup


def as_backend(model: CDModel | Backend | str | Path) -> Backend:
    """A :class:`Backend` for a model directory, a loaded :class:`CDModel` or an existing backend."""
    if isinstance(model, CDModel):
        return TorchBackend(model)
    if isinstance(model, str | Path):
        return TorchBackend(load_model(model))
    if isinstance(model, Backend):
        return model
    raise TypeError(f"expected a CDModel, a Backend or a model directory, got {type(model).__name__}")


@dataclass
class StylizeJob:
    """Resolved settings shared by every level (build it with :func:`make_job`)."""

    backend: Backend
    method: str
    levels: tuple[int, ...]
    alpha: float
    eig_floor: float
    geometries: dict[int, LevelGeometry | None] = field(default_factory=dict)

    def stride(self, level: int) -> int:
        geo = self.geometries.get(level)
        return geo.stride if geo else 2 ** (level - 1)

    def transform(self, content: FeatureStats, style: FeatureStats) -> AffineMap:
        if self.method == "adain":
            return adain_map(content, style, self.alpha)
        return wct_map(content, style, self.alpha, self.eig_floor)


def make_job(backend: Backend, method: str, levels: Sequence[int] | None, alpha: float,
             eig_floor: float = EIG_FLOOR) -> StylizeJob:
    """Validate the stylization settings against ``backend`` once, before any pixel is read.

    The job is what planning (:func:`plan_tiling`, :func:`untiled_bytes`) and cost estimates need."""
    if method not in METHODS:
        raise CDCompressError(f"method {method!r} is not supported; use one of {', '.join(METHODS)}")
    levels = tuple(levels) if levels else DEFAULT_LEVELS[method]
    if not levels or len(set(levels)) != len(levels):
        raise CDCompressError(f"levels {levels}: give each level once, e.g. 5,4,3,2,1")
    missing = [k for k in levels if k not in backend.levels]
    if missing:
        raise ModelFormatError(
            f"the model has no encoder/decoder pair for level(s) {missing} (usable levels: {backend.levels or 'none'}); "
            "choose --levels among those or use a model that has them"
        )
    if not 0.0 <= alpha <= 1.0:
        raise CDCompressError(f"alpha {alpha} must be within [0, 1] (0 keeps the content, 1 is full style)")
    geometries = {}
    for level in levels:
        specs = backend_specs(backend, level)
        geometries[level] = level_geometry(*specs) if specs else None
    return StylizeJob(backend, method, levels, float(alpha), eig_floor, geometries)


def _check_size(job: StylizeJob, height: int, width: int, what: str) -> None:
    need = 2 * max(job.stride(k) for k in job.levels)
    if min(height, width) < need:
        raise ImageError(
            f"{what} is {width}x{height}; levels {','.join(map(str, job.levels))} need at least {need} px per side; "
            "use a larger image or shallower --levels"
        )


def _as_image_tensor(image: torch.Tensor, what: str) -> torch.Tensor:
    if image.dim() == 3:
        image = image[None]
    if image.dim() != 4 or image.shape[:2] != (1, 3):
        raise ImageError(f"{what} tensor has shape {tuple(image.shape)}; expected [1, 3, H, W] RGB in [0, 1]")
    return image.detach().float().cpu().contiguous()


def _describe(image: ImageInput, role: str) -> str:
    """``role`` plus the file name when the image came from a file, so errors say which file."""
    return f"{role} {image}" if isinstance(image, str | Path) else role


def _load_style(style: ImageInput, style_size: int | None) -> torch.Tensor:
    image = _as_image_tensor(style, "style") if isinstance(style, torch.Tensor) else load_image(style)
    if style_size is not None:
        if style_size < 1:
            raise CDCompressError(f"style size {style_size} must be a positive number of pixels")
        h, w = image.shape[-2:]
        scale = style_size / max(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        image = F.interpolate(image, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    return image


# ----------------------------------------------------------------------------- untiled


def _pad_to_stride(image: torch.Tensor, stride: int) -> torch.Tensor:
    h, w = image.shape[-2:]
    ph, pw = align_up(h, stride) - h, align_up(w, stride) - w
    return F.pad(image, (0, pw, 0, ph), mode="reflect") if ph or pw else image


def _style_stats_untiled(job: StylizeJob, level: int, style: torch.Tensor) -> FeatureStats:
    return FeatureStats.of(job.backend.encode(level, _pad_to_stride(style, job.stride(level))))


def _level_untiled(job: StylizeJob, level: int, image: torch.Tensor, style_stats: FeatureStats) -> torch.Tensor:
    h, w = image.shape[-2:]
    features = job.backend.encode(level, _pad_to_stride(image, job.stride(level)))
    mapping = job.transform(FeatureStats.of(features), style_stats)
    features = mapping.apply(features)
    return job.backend.decode(level, features)[..., :h, :w]


def stylize_untiled(job: StylizeJob, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """The reference computation on whole tensors (unclamped result, on the host).

    The cascade runs where the backend's outputs live: on a GPU backend the images, features,
    statistics and maps stay on the device and only the result comes back.
    """
    device = getattr(job.backend, "device", torch.device("cpu"))
    image, style = content.to(device), style.to(device)
    for level in job.levels:
        image = _level_untiled(job, level, image, _style_stats_untiled(job, level, style))
    return image.cpu()


# ----------------------------------------------------------------------------- tiled


@dataclass(frozen=True)
class TilingPlan:
    """Per level: core tile size and whether pass-1 features are cached on disk."""

    tiles: dict[int, int]
    cache: dict[int, bool]

    def describe(self) -> str:
        low, high = min(self.tiles.values()), max(self.tiles.values())
        cached = ",".join(str(k) for k, on in self.cache.items() if on)
        return f"tiled ({low if low == high else f'{low}-{high}'} px{f', cache L{cached}' if cached else ''})"


def _core_slices(tile: Tile, stride: int) -> tuple[slice, slice]:
    """Where a tile's core lies inside its window's feature map."""
    (r0, r1), (wr0, _) = tile.rows.core, tile.rows.window
    (c0, c1), (wc0, _) = tile.cols.core, tile.cols.window
    return slice((r0 - wr0) // stride, (r1 - wr0) // stride), slice((c0 - wc0) // stride, (c1 - wc0) // stride)


def _accumulate(job: StylizeJob, level: int, source: Canvas, tile: int, cache: DiskCanvas | None, bar: tqdm) -> FeatureStats:
    """Pass 1: encoder over haloed tiles; core features feed the statistics (and the cache)."""
    geo = _geometry(job, level)
    s = geo.stride
    height, width = align_up(source.shape[0], s), align_up(source.shape[1], s)
    stats = FeatureStats(geo.feature_channels)
    for t in plan_tiles(height, width, tile, geo.stats_halo, s):
        window = read_padded(source, t.rows.window, t.cols.window)
        rows, cols = _core_slices(t, s)
        core = job.backend.encode(level, to_nchw(window))[..., rows, cols]
        stats.update(core)
        if cache is not None:
            cache.write(t.rows.core[0] // s, t.cols.core[0] // s, to_hwc(core))
        bar.update()
    return stats


def _write_core(target: Canvas, tile: Tile, decoded: torch.Tensor) -> None:
    rows, cols = _core_slices(tile, 1)
    height, width = target.shape[:2]
    (r0, r1), (c0, c1) = tile.rows.core, tile.cols.core
    keep_r, keep_c = min(r1, height) - r0, min(c1, width) - c0  # drop the stride padding
    core = decoded[0, :, rows, cols][:, :keep_r, :keep_c]
    target.write(r0, c0, core.permute(1, 2, 0).cpu().numpy())


def _level_tiled(job: StylizeJob, level: int, source: Canvas, target: Canvas, style_stats: FeatureStats,
                 plan: TilingPlan, scratch: Path, bar: tqdm) -> None:
    geo = _geometry(job, level)
    s, tile = geo.stride, plan.tiles[level]
    height, width = align_up(source.shape[0], s), align_up(source.shape[1], s)
    cache = None
    if plan.cache[level]:
        cache = DiskCanvas(scratch / f"features{level}.f32", (height // s, width // s, geo.feature_channels))
    mapping = job.transform(_accumulate(job, level, source, tile, cache, bar), style_stats)
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


def _geometry(job: StylizeJob, level: int) -> LevelGeometry:
    geo = job.geometries.get(level)
    if geo is None:
        raise CDCompressError(
            f"the backend does not describe its level-{level} architecture, which exact tiling needs; "
            "stylize untiled (--tile 0) or use a backend with encoder_spec/decoder_spec"
        )
    return geo


def _tile_count(job: StylizeJob, plan: TilingPlan, height: int, width: int, style_hw: tuple[int, int]) -> int:
    total = 0
    for level in job.levels:
        geo = _geometry(job, level)
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


def stylize_tiled(job: StylizeJob, content: Canvas, style: torch.Tensor, plan: TilingPlan, scratch: Path,
                  progress: bool) -> Canvas:
    """Run every level tile by tile; returns the (unclamped) result canvas inside ``scratch``."""
    height, width = content.shape[:2]
    style_canvas = MemoryCanvas.from_tensor(style)
    buffers: list[Canvas] = []
    source: Canvas = content
    total = _tile_count(job, plan, height, width, tuple(style.shape[-2:]))
    with tqdm(total=total, unit="tile", desc="stylize", disable=None if progress else True, leave=False) as bar:
        for i, level in enumerate(job.levels):
            if len(buffers) < 2:
                buffers.append(DiskCanvas(scratch / f"image{i}.f32", (height, width, 3)))
            target = buffers[i % 2]
            bar.set_description(f"stylize L{level}")
            style_stats = _accumulate(job, level, style_canvas, plan.tiles[level], None, bar)
            _level_tiled(job, level, source, target, style_stats, plan, scratch, bar)
            source = target
    return source


# ----------------------------------------------------------------------------- planning


def untiled_bytes(job: StylizeJob, height: int, width: int, style_hw: tuple[int, int]) -> float:
    """Estimated peak of the untiled computation on top of the current resident size."""
    work = 0.0
    for level in job.levels:
        geo = _geometry(job, level)
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
    geos = {k: _geometry(job, k) for k in job.levels} if tile is not None else {}
    budget = parse_memory(max_memory if max_memory is not None else DEFAULT_MAX_MEMORY)
    if tile is None:
        if all(job.geometries[k] is None for k in job.levels):
            return None  # nothing to plan with: untiled, as the backend cannot be tiled anyway
        if resident_bytes() + untiled_bytes(job, height, width, style_hw) <= budget:
            return None
        geos = {k: _geometry(job, k) for k in job.levels}
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


# ----------------------------------------------------------------------------- output


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


def _check_output_path(path: str | Path | None, what: str) -> Path | None:
    if path is None:
        return None
    path = Path(path)
    if path.suffix.lower() not in (".png", ".npy"):
        raise CDCompressError(f"{what} {path}: must end in .png (or .npy for float32 values); change the suffix")
    if path.is_dir():
        raise CDCompressError(f"{what} {path} is a directory; give a file name ending in .png")
    return path


# ----------------------------------------------------------------------------- API


def stylize(
    model: CDModel | Backend | str | Path,
    content: ImageInput,
    style: ImageInput,
    *,
    method: Method | str = "wct",
    levels: Sequence[int] | None = None,
    alpha: float = 1.0,
    preserve_color: bool = False,
    style_size: int | None = None,
    tile: int | None = None,
    max_memory: int | str | None = None,
    cache_features: bool | None = None,
    out: str | Path | None = None,
    grid: str | Path | None = None,
    eig_floor: float = EIG_FLOOR,
    workdir: str | Path | None = None,
    progress: bool = False,
) -> torch.Tensor | Path:
    """Stylize ``content`` with ``style`` using ``model``'s encoder/decoder pairs.

    ``content``/``style`` are ``[1, 3, H, W]`` tensors in [0, 1] or image paths. ``method`` is
    ``"wct"`` (cascade over ``levels``, default 5,4,3,2,1) or ``"adain"`` (default level 4).
    ``alpha`` blends stylized and content features. ``style_size`` resizes the style's long side.

    Tiling: ``tile=0`` computes untiled; ``tile=N`` uses N-pixel tiles; ``None`` (default) stays
    untiled when the estimate fits ``max_memory`` (default 4 GiB, e.g. ``"8GiB"``) and otherwise
    picks the largest tiles that fit. Tiled results equal untiled ones (same float computation per
    pixel), with scratch files in ``workdir`` (default: the system temp dir).

    Returns the result as a ``[1, 3, H, W]`` tensor in [0, 1], or, with ``out`` (``.png`` or
    ``.npy``), writes it there and returns the path. ``grid`` also writes content | style | result.
    """
    out_path, grid_path = _check_output_path(out, "out"), _check_output_path(grid, "grid")
    with torch.inference_mode():
        backend = as_backend(model)
        job = make_job(backend, str(method), levels, alpha, eig_floor)
        style_t = _load_style(style, style_size)
        _check_size(job, *style_t.shape[-2:], _describe(style, "style image"))
        if isinstance(content, torch.Tensor):
            content = _as_image_tensor(content, "content")
            height, width = content.shape[-2:]
        else:
            height, width = image_size(content)
        _check_size(job, height, width, _describe(content, "content image"))
        plan = plan_tiling(job, height, width, tuple(style_t.shape[-2:]), tile, max_memory, cache_features)
        if progress:
            mode = plan.describe() if plan else "untiled"
            levels_text = ",".join(map(str, job.levels))
            tqdm.write(f"stylize: {width}x{height}, {job.method} levels {levels_text}, {mode}", file=sys.stderr)
        if plan is None:
            content_t = content if isinstance(content, torch.Tensor) else load_image(content)
            with retained_heap():  # untiled only: tiled runs must keep to their memory budget
                result: Canvas = MemoryCanvas.from_tensor(stylize_untiled(job, content_t, style_t))
            return _finish(MemoryCanvas.from_tensor(content_t), style_t, result, out_path, grid_path, preserve_color)
        return _stylize_tiled_files(job, content, (height, width), style_t, plan, workdir, out_path, grid_path,
                                    preserve_color, progress)


def _finish(content: Canvas, style: torch.Tensor, result: Canvas, out: Path | None, grid: Path | None,
            preserve_color: bool) -> torch.Tensor | Path:
    _write_outputs(out, grid, content, style, result, preserve_color)
    if out is not None:
        return out
    return _finished_tensor(result, content, preserve_color)


def _stylize_tiled_files(job: StylizeJob, content: torch.Tensor | str | Path, size: tuple[int, int], style: torch.Tensor,
                         plan: TilingPlan,
                         workdir: str | Path | None, out: Path | None, grid: Path | None, preserve_color: bool,
                         progress: bool) -> torch.Tensor | Path:
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cdcompress-stylize-", dir=workdir) as tmp:
        scratch = Path(tmp)
        on_disk = not isinstance(content, torch.Tensor)
        need, free = scratch_bytes(job, plan, *size, on_disk), shutil.disk_usage(scratch).free
        if need > free:
            raise CDCompressError(
                f"tiled stylization needs about {format_bytes(need)} of scratch space in {scratch.parent}, "
                f"only {format_bytes(free)} free; pass --workdir on a larger disk"
            )
        if isinstance(content, torch.Tensor):
            content_canvas: Canvas = MemoryCanvas.from_tensor(content)
        else:
            content_canvas = decode_to_canvas(content, lambda shape: DiskCanvas(scratch / "content.f32", shape))
        result = stylize_tiled(job, content_canvas, style, plan, scratch, progress)
        return _finish(content_canvas, style, result, out, grid, preserve_color)
