"""``stylize``: WCT / AdaIN cascades over any backend, untiled or tiled with the exact same result.

Per level the content is encoded, a per-pixel affine map is built from global feature statistics
(content and style) and applied, and the result is decoded. This module only ties the steps
together: the job and its input checks (:mod:`.job`), the untiled-or-tiled decision
(:mod:`.plan`), the two computations (:mod:`.untiled`, :mod:`.tiled`) and the outputs (:mod:`.output`).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..core.allocator import retained_heap
from ..core.errors import CDCompressError
from ..data.images import decode_to_canvas, load_image
from ..models.format import CDModel
from .backend import UntiledBackend
from .canvas import Canvas, DiskCanvas, MemoryCanvas
from .job import ImageInput, StylizeJob, as_backend, check_content, load_style, make_job
from .output import check_output_path, finish
from .plan import TilingPlan, plan_tiling, scratch_bytes
from .tiled import stylize_tiled
from .tiling import format_bytes
from .untiled import stylize_untiled
from .wct import EIG_FLOOR


def stylize(
    model: CDModel | UntiledBackend | str | Path,
    content: ImageInput,
    style: ImageInput,
    *,
    method: str = "wct",
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
    ``"wct"`` (cascade over ``levels``, default every level the model has, coarse to fine: 5,4,3,2,1 for a
    full model) or ``"adain"`` (default level 4).
    ``alpha`` blends stylized and content features. ``style_size`` resizes the style's long side.

    Tiling: ``tile=0`` computes untiled; ``tile=N`` uses N-pixel tiles; ``None`` (default) stays
    untiled when the estimate fits ``max_memory`` (default 4 GiB, e.g. ``"8GiB"``) and otherwise
    picks the largest tiles that fit. Tiled results equal untiled ones (same float computation per
    pixel), with scratch files in ``workdir`` (default: the system temp dir).

    Returns the result as a ``[1, 3, H, W]`` tensor in [0, 1], or, with ``out`` (``.png`` or
    ``.npy``), writes it there and returns the path. ``grid`` also writes content | style | result.
    """
    out_path, grid_path = check_output_path(out, "out"), check_output_path(grid, "grid")
    with torch.inference_mode():
        job = make_job(as_backend(model), method, levels, alpha, eig_floor)
        style_t = load_style(job, style, style_size)
        content, height, width = check_content(job, content)
        plan = plan_tiling(job, height, width, tuple(style_t.shape[-2:]), tile, max_memory, cache_features)
        if progress:
            mode = plan.describe() if plan else "untiled"
            levels_text = ",".join(map(str, job.levels))
            tqdm.write(f"stylize: {width}x{height}, {job.method} levels {levels_text}, {mode}", file=sys.stderr)
        if plan is None:
            content_t = content if isinstance(content, torch.Tensor) else load_image(content)
            with retained_heap():  # untiled only: tiled runs must keep to their memory budget
                result: Canvas = MemoryCanvas.from_tensor(stylize_untiled(job, content_t, style_t))
            return finish(MemoryCanvas.from_tensor(content_t), style_t, result, out_path, grid_path, preserve_color)
        return _stylize_tiled_files(job, content, (height, width), style_t, plan, workdir, out_path, grid_path,
                                    preserve_color, progress)


def _stylize_tiled_files(job: StylizeJob, content: ImageInput, size: tuple[int, int], style: torch.Tensor,
                         plan: TilingPlan,
                         workdir: str | Path | None, out: Path | None, grid: Path | None, preserve_color: bool,
                         progress: bool) -> torch.Tensor | Path:
    """The tiled run inside a scratch folder: content decoded into a disk canvas unless given as a tensor."""
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
        return finish(content_canvas, style, result, out, grid, preserve_color)
