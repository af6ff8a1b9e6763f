"""``cdcompress eval``: measurements of models on real images and of their cost."""

from __future__ import annotations

from pathlib import Path

import click

from ..core.atomic import write_json
from ..evaluation.settings import DEFAULT_CROP_MULTIPLE, DEFAULT_STYLE_MAX_SIDE
from ..models.resolve import resolve_model
from .options import parse_levels


@click.group("eval")
def eval_group() -> None:
    """Evaluate a model: reconstruction quality, style distance, cost."""


def _write_json(path: Path | None, data: object) -> None:
    if path is not None:
        write_json(path, data)


_json_option = click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
                            help="Also write results as JSON.")


@eval_group.command("recon")
@click.argument("model")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--level", type=click.IntRange(1, 5), help="Encoder/decoder level (relu{k}_1) [a single-level model's only one].")
@click.option("--crop-multiple", type=click.IntRange(min=1), default=DEFAULT_CROP_MULTIPLE, show_default=True,
              help="Crop each image top-left to a multiple of this.")
@_json_option
def recon(model: str, images: tuple[Path, ...], level: int | None, crop_multiple: int, json_path: Path | None) -> None:
    """Encoder -> decoder reconstruction PSNR and SSIM per image for MODEL at --level."""
    from ..core.errors import CDCompressError
    from ..evaluation.evaluate import format_recon_table, reconstruction

    loaded, _ = resolve_model(model)
    if level is None:
        if len(loaded.levels) != 1:
            raise CDCompressError(f"{model} has levels {loaded.levels}; pass --level")
        level = loaded.levels[0]
    results = reconstruction(loaded, level, images, crop_multiple)
    click.echo(format_recon_table(results))
    _write_json(json_path, [r.as_dict() for r in results])


@eval_group.command("style")
@click.argument("model")
@click.option("--content", "content_dir", required=True, type=click.Path(path_type=Path), help="Folder of content images.")
@click.option("--style", "style_dir", required=True, type=click.Path(path_type=Path), help="Folder of style images.")
@click.option("--eval-encoder", required=True,
              help="Model whose deepest encoder measures every result (the same ruler for teacher and student).")
@click.option("--method", type=click.Choice(["wct", "adain"]), default="wct", show_default=True)
@click.option("--levels", default=None, help="Stylization levels, coarse to fine [wct: every level the model has; adain: 4].")
@click.option("--gram-levels", default=None, help="relu{k}_1 levels to measure [all the evaluation encoder reaches].")
@click.option("--alpha", type=click.FloatRange(0, 1), default=1.0, show_default=True)
@click.option("--max-side", type=click.IntRange(min=32), default=DEFAULT_STYLE_MAX_SIDE, show_default=True,
              help="Downscale images so their long side is at most this.")
@_json_option
def style(model: str, content_dir: Path, style_dir: Path, eval_encoder: str, method: str, levels: str | None,
          gram_levels: str | None, alpha: float, max_side: int, json_path: Path | None) -> None:
    """Gram-matrix style distance (paper Eq. 7) per Conv level and content distance, per (content, style) pair."""
    from ..evaluation.evaluate import format_style_table, image_files, mean_style, style_evaluation
    from ..evaluation.gram import evaluation_encoder

    contents, styles = image_files(content_dir, "--content"), image_files(style_dir, "--style")
    ruler_model, _ = resolve_model(eval_encoder)
    ruler = evaluation_encoder(ruler_model)
    loaded, _ = resolve_model(model)
    results = style_evaluation(loaded, contents, styles, ruler, method=method,
                               levels=parse_levels(levels) if levels else None, alpha=alpha, max_side=max_side,
                               gram_levels=parse_levels(gram_levels) if gram_levels else None)
    click.echo(format_style_table(results))
    _write_json(json_path, {"model": model, "eval_encoder": eval_encoder, "method": method,
                            "gram": "G = F F^T / (C*H*W), float64; distance = squared Frobenius norm",
                            "mean": mean_style(results), "pairs": [r.as_dict() for r in results]})


@eval_group.command("cost")
@click.argument("model")
@click.option("--levels", default="5,4,3,2,1", show_default=True, help="Levels of the stylization cascade.")
@click.option("--size", type=click.IntRange(min=16), default=3000, show_default=True, help="Square side for MACs.")
@click.option("--time-size", type=click.IntRange(min=0), default=1024, show_default=True,
              help="Square side for measured wall time and peak memory (0: skip the runs).")
@click.option("--tile", type=click.IntRange(min=0), default=512, show_default=True,
              help="Tile size of the measured tiled run (0: untiled only).")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--max-memory", default="8GiB", show_default=True, help="Memory budget for the largest square side.")
@click.option("--probe-sizes", default="512", show_default=True,
              help="Extra untiled sizes whose peak RSS is fitted (linear in pixels) to predict the untiled limit; "
                   "empty to skip.")
@click.option("--verify", is_flag=True, help="Run once at the predicted untiled limit to check it (slow).")
@click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True,
              help="Timed stylizations per measured run; the fastest is reported (steadier on shared machines).")
@click.option("--teacher", help="Any-pair models: the teacher model directory to compare with "
                                "[default: the teacher architecture, rebuilt with random weights].")
@click.option("--no-onnx", is_flag=True, help="Any-pair models: time PyTorch only (no onnxruntime).")
@click.option("--runtimes", default=None,
              help="Instead of the cost report: time teacher (--teacher, default vgg19) and MODEL stylizing at "
                   "--time-size on each of these runtimes, interleaved in one run: eager, bundle, int8, bf16, cuda, "
                   "cuda-fp16 (e.g. eager,bundle,int8).")
@_json_option
def cost(model: str, levels: str, size: int, time_size: int, tile: int, threads: int, max_memory: str,
         probe_sizes: str, verify: bool, repeats: int, teacher: str | None, no_onnx: bool, runtimes: str | None,
         json_path: Path | None) -> None:
    """Parameters, bytes, MACs, wall time, peak memory and the largest square within --max-memory.

    For an any-pair (module-family) model: teacher vs student parameters, MACs at --time-size and measured
    latency on PyTorch and onnxruntime in one interleaved run (median of --repeats rounds).
    With --runtimes: teacher vs student stylization time on each deployment runtime, in one interleaved run."""
    from ..core.errors import CDCompressError
    from ..cost.measure import cost_report, format_cost_table
    from ..stylization.tiling import parse_memory

    loaded, _ = resolve_model(model)
    if loaded.family == "module":
        from ..cost.pair import compare, format_pair_cost, teacher_shapes

        reference = resolve_model(teacher)[0] if teacher else teacher_shapes(loaded)
        side = time_size or 512
        rows = compare(reference, loaded, (side, side), repeats=max(repeats, 3), threads=threads, onnx=not no_onnx)
        click.echo(format_pair_cost(rows, (side, side)))
        _write_json(json_path, {"size": [side, side], "threads": threads, "rows": [r.as_dict() for r in rows]})
        return

    if runtimes is not None:
        from ..cost.runtimes import compare_runtimes, format_runtime_table, parse_runtimes

        chosen, level_list = parse_runtimes(runtimes), list(parse_levels(levels))
        side = time_size or 1024
        models = {"teacher": resolve_model(teacher or "vgg19")[0], "student": loaded}
        rows = compare_runtimes(models, level_list, side, runtimes=chosen, repeats=max(repeats, 3), threads=threads,
                                progress=lambda line: click.echo(line, err=True))
        click.echo(format_runtime_table(rows, side, level_list))
        _write_json(json_path, {"size": side, "levels": level_list, "threads": threads,
                                "rows": [r.as_dict() for r in rows]})
        return
    try:
        probes = tuple(int(p) for p in probe_sizes.split(",") if p.strip())
    except ValueError:
        raise CDCompressError(f"--probe-sizes {probe_sizes!r}: expected comma-separated sides such as 256,512") from None
    report = cost_report(model, list(parse_levels(levels)), size=size, time_size=time_size, tile=tile,
                         threads=threads, budget=parse_memory(max_memory), probe_sizes=probes, verify=verify,
                         repeats=repeats)
    click.echo(format_cost_table([report]))
    _write_json(json_path, report.as_dict())
