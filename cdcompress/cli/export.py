"""``cdcompress export``: a verified deployment bundle (ONNX graphs, optionally TensorRT engines)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import click

from ..core.errors import CDCompressError
from ..export.profiles import available_profiles
from ..models.resolve import BUILTIN_HELP, resolve_model
from .options import parse_levels


@click.command("export")
@click.argument("model")
@click.option("--onnx", "onnx_flag", is_flag=True, help="Write ONNX graphs (always done: engines are built from them).")
@click.option("--trt", is_flag=True, help="Also build TensorRT engines (needs tensorrt and an NVIDIA GPU).")
@click.option("--profile", "profile_ref", metavar="NAME|PATH",
              help="Export profile: a YAML file or a name from export/ [default: trt-fp16 with --trt, else onnx-dynamic].")
@click.option("--levels", help="Levels to export, e.g. 5,4,3 [default: every level of MODEL].")
@click.option("--dynamic", is_flag=True, help="Dynamic image height/width (overrides the profile's shape).")
@click.option("--tile", nargs=2, type=int, metavar="H W", help="Fix every graph to one H x W image tile (multiples of 16).")
@click.option("--fp16", is_flag=True, help="Half-precision compute (inputs/outputs stay float32), looser parity tolerance.")
@click.option("--int8", is_flag=True, help="INT8 graphs for CPU: static quantization (calibrated on photos, or with the "
                                           "ranges `cdcompress quantize` trained), written only if a quality gate on "
                                           "held-out photos passes (per level: PSNR drop, WCT difference; the whole "
                                           "multi-level WCT).")
@click.option("--calibration", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="--int8: folder of calibration photos [scikit-image's bundled photos].")
@click.option("--held-out", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="--int8: photos the quality gate judges (required with --calibration).")
@click.option("--max-cascade-rmse", type=click.FloatRange(min=0, min_open=True), default=0.03, show_default=True,
              help="--int8: how far (RMS, [0, 1] pixels) the multi-level WCT may be from float32's; levels go back to "
                   "float32 until it is within.")
@click.option("--reference", metavar="MODEL",
              help="--int8: the float model the gate compares with [default: MODEL's own float graphs; for a model "
                   "from `cdcompress quantize`, the model it was fine-tuned from when that path exists].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Bundle directory to write [default: out/<model name>-bundle].")
@click.option("--force", is_flag=True, help="Replace an existing --out directory.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def export(model: str, onnx_flag: bool, trt: bool, profile_ref: str | None, levels: str | None, dynamic: bool,
           tile: tuple[int, int] | None, fp16: bool, int8: bool, calibration: Path | None, held_out: Path | None,
           max_cascade_rmse: float, reference: str | None, out: Path | None, force: bool, quiet: bool) -> None:
    """Export MODEL to a bundle of per-level encoder/decoder graphs, verified against PyTorch.

    Every graph is run with onnxruntime at several input sizes and compared with the PyTorch
    module; the parity table is printed and the bundle is written only if all of it passes.
    """
    from ..export import export_bundle, load_profile
    from ..export.int8 import QualityGate

    if dynamic and tile:
        raise CDCompressError("--dynamic and --tile exclude each other; pass one of them")
    if int8 and (trt or fp16 or tile):
        raise CDCompressError("--int8 makes dynamic-shape CPU graphs; drop --trt, --fp16 and --tile")
    if (calibration or held_out or reference) and not int8:
        raise CDCompressError("--calibration, --held-out and --reference apply to --int8 only")
    if calibration and not held_out:
        raise CDCompressError("INT8 with --calibration needs --held-out photos for the quality gate (never calibrated on)")
    profile = load_profile(profile_ref or ("trt-fp16" if trt else "onnx-dynamic"))
    profile = profile.with_overrides(dynamic=dynamic, tile=tuple(tile) if tile else None, fp16=fp16)
    loaded, model_dir = resolve_model(model)
    name = str(loaded.meta.get("name") or Path(model).name)
    out = out or Path("out") / f"{re.sub(r'[^A-Za-z0-9._-]+', '-', name)}-bundle"
    if int8:
        if out.exists() and not force:  # fail before the float32 export, not after it
            raise CDCompressError(f"{out} already exists; choose another --out or pass --force to replace it")
        gate = QualityGate(max_cascade_rmse=max_cascade_rmse)
        _export_int8(loaded, model, model_dir, out, profile, levels, calibration, held_out, reference, gate, force, quiet)
        return
    result = export_bundle(loaded, out, profile, parse_levels(levels) if levels else None, model_ref=model,
                           model_dir=model_dir, tensorrt=trt, overwrite=force, echo=click.echo, progress=not quiet)
    manifest = result.manifest
    engines = len((manifest.get("engines") or {}).get("engines", {}))
    size = sum(f["bytes"] for f in manifest["files"].values())
    shape = "dynamic H/W" if manifest["shape"] == "dynamic" else "x".join(map(str, manifest["shape"]))
    click.echo(f"wrote {out} (levels {','.join(map(str, manifest['levels']))}, {len(manifest['parts'])} graphs"
               f"{f', {engines} TensorRT engines' if engines else ''}, {size / 1e6:.2f} MB, "
               f"{manifest['precision']}, {shape}; parity verified on {len(result.rows)} cases)")


def _export_int8(loaded: Any, model_ref: str, model_dir: Path | None, out: Path, profile: Any, levels: str | None,
                 calibration: Path | None, held_out: Path | None, reference: str | None, gate: Any, force: bool,
                 quiet: bool) -> None:
    """The verified float32 bundle first (in a scratch folder), then its gated int8 copy at ``out``: levels trained
    for INT8 (``cdcompress quantize``) keep their trained activation ranges, the others are calibrated."""
    import tempfile

    from ..export import export_bundle
    from ..export.int8 import quantize_bundle
    from ..export.int8_record import fine_tuned_from, trained_ranges

    chosen = parse_levels(levels) if levels else None
    ranges = trained_ranges(loaded, chosen)
    source = fine_tuned_from(loaded)
    reference = reference or (source if source and Path(source).is_dir() else None)
    with tempfile.TemporaryDirectory(prefix="cdcompress-fp32-") as scratch:
        export_bundle(loaded, Path(scratch) / "fp32", profile.with_overrides(dynamic=True), chosen, model_ref=model_ref,
                      model_dir=model_dir, echo=lambda _: None, progress=not quiet)
        judge = None
        if reference:
            reference_model, _ = resolve_model(reference)
            judge = Path(scratch) / "reference"
            export_bundle(reference_model, judge, profile.with_overrides(dynamic=True), chosen or loaded.levels,
                          model_ref=reference, echo=lambda _: None, progress=not quiet)
            click.echo(f"gate reference: the float32 graphs of {reference}")
        result = quantize_bundle(Path(scratch) / "fp32", out, calibration, held_out, gate=gate, overwrite=force,
                                 echo=click.echo, ranges=ranges, reference=judge)
    size = sum(f["bytes"] for f in result.manifest["files"].values())
    int8_levels = result.manifest["int8_levels"]
    float_levels = [k for k in result.manifest["levels"] if k not in int8_levels]
    click.echo(f"wrote {out} (int8 levels {','.join(map(str, int8_levels))}"
               + (f", float32 levels {','.join(map(str, float_levels))} (past the gate)" if float_levels else "")
               + f", {size / 1e6:.2f} MB; float32 parity verified, int8 levels passed the quality gate)")


_BUILTINS = BUILTIN_HELP.split(": ", 1)[1]
export.help = inspect.cleandoc(export.help or "") + (
    f"\n\nMODEL is a model directory or a built-in ({_BUILTINS}). Profiles: {', '.join(available_profiles())}."
)
