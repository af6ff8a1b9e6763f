"""``cdcompress stylize``: WCT / AdaIN style transfer, exactly tiled for images of any size."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from ..core.errors import CDCompressError
from ..stylization.settings import METHODS, PRECISION_NAMES
from .options import parse_levels


@click.command("stylize")
@click.option("--model", "model_ref", default=None, help="Model directory (or built-in architecture, random weights).")
@click.option("--bundle", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Instead of --model: a `cdcompress export` bundle, run with onnxruntime.")
@click.option("--content", type=click.Path(path_type=Path), required=True, help="Content image (any size).")
@click.option("--style", type=click.Path(path_type=Path), required=True, help="Style image.")
@click.option("--method", type=click.Choice(METHODS), default="wct", show_default=True,
              help="wct: whitening-colouring cascade; adain: channel mean/std matching.")
@click.option("--levels", default=None,
              help="Comma-separated levels, coarse to fine [wct: every level the model has, e.g. 5,4,3,2,1; adain: 4].")
@click.option("--alpha", type=click.FloatRange(0.0, 1.0), default=1.0, show_default=True,
              help="Style strength: 0 keeps the content (autoencoder only), 1 is full style.")
@click.option("--preserve-color", is_flag=True, help="Keep the content's colours (transfer luminance only).")
@click.option("--style-size", type=click.IntRange(min=1), default=None, help="Resize the style's long side to N px.")
@click.option("--tile", type=click.IntRange(min=0), default=None,
              help="Tile size in px (0: untiled). Default: untiled if it fits --max-memory, else the largest tile that does.")
@click.option("--max-memory", default="4GiB", show_default=True,
              help="Peak memory budget that picks untiled vs. the tile size, e.g. 4GiB, 512MiB.")
@click.option("--no-cache", is_flag=True, help="Re-encode tiles in pass 2 instead of caching pass-1 features on disk.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory for tiled scratch files (default: system temp).")
@click.option("--device", default="cpu", show_default=True,
              help="Where --model runs: cpu, cuda or cuda:N (--max-memory still bounds host memory).")
@click.option("--precision", type=click.Choice(PRECISION_NAMES), default="fp32", show_default=True,
              help="Network precision for --model: fp16 (GPU) or bf16 (GPU, or CPUs with AVX-512 BF16) trade a little "
                   "accuracy for speed; statistics and WCT maps stay in full precision.")
@click.option("--grid", is_flag=True, help="Also write content | style | result side by side as <out>_grid.png.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output .png (or .npy for float32). Default: <content>_<style>.png here.")
def stylize_command(model_ref: str | None, bundle: Path | None, content: Path, style: Path, method: str,
                    levels: str | None, alpha: float, preserve_color: bool, style_size: int | None, tile: int | None,
                    max_memory: str, no_cache: bool, workdir: Path | None, device: str, precision: str, grid: bool,
                    out: Path | None) -> None:
    """Stylize CONTENT with STYLE using MODEL's encoder/decoder pairs (teacher or student).

    Large images are tiled with halos wide enough that the result equals the untiled computation,
    keeping memory bounded by the tile (scratch files go to --workdir).
    """
    from ..core.device import resolve_device
    from ..models.resolve import resolve_model
    from ..stylization.backend import TorchBackend
    from ..stylization.pipeline import stylize
    from ..stylization.tiling import parse_memory

    budget = parse_memory(max_memory)  # validate before the (slow) model load
    if (model_ref is None) == (bundle is None):
        raise CDCompressError("pass exactly one of --model DIR and --bundle DIR")
    if bundle is not None:
        from ..export.runtime import OnnxBackend

        if device != "cpu" or precision != "fp32":
            raise CDCompressError("--device and --precision apply to --model; a bundle runs on onnxruntime's providers "
                                  "in the precision it was exported with")
        model: Any = OnnxBackend(bundle)  # the pipeline takes any Backend in place of a CDModel
    else:
        target = resolve_device(device)  # before the model load
        model = TorchBackend(resolve_model(str(model_ref))[0], device=target, precision=precision)
    out = out or Path(f"{content.stem}_{style.stem}.png")
    grid_path = out.with_name(f"{out.stem}_grid.png") if grid else None
    start = time.perf_counter()
    stylize(model, content, style, method=method, levels=parse_levels(levels) if levels else None, alpha=alpha,
            preserve_color=preserve_color, style_size=style_size, tile=tile, max_memory=budget,
            cache_features=False if no_cache else None, out=out, grid=grid_path, workdir=workdir, progress=True)
    extra = f" and {grid_path}" if grid_path else ""
    click.echo(f"wrote {out}{extra} ({time.perf_counter() - start:.1f} s)")
