"""``cdcompress export``: a verified deployment bundle (ONNX graphs, optionally TensorRT engines)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import click

from ..errors import CDCompressError
from ..export.profiles import available_profiles
from ..models.registry import BUILTIN_HELP, resolve_model
from .main import main
from .options import parse_levels


@main.command("export")
@click.argument("model")
@click.option("--onnx", "onnx_flag", is_flag=True, help="Write ONNX graphs (always done: engines are built from them).")
@click.option("--trt", is_flag=True, help="Also build TensorRT engines (needs tensorrt and an NVIDIA GPU).")
@click.option("--profile", "profile_ref", metavar="NAME|PATH",
              help="Export profile: a YAML file or a name from export/ [default: trt-fp16 with --trt, else onnx-dynamic].")
@click.option("--levels", help="Levels to export, e.g. 5,4,3 [default: every level of MODEL].")
@click.option("--dynamic", is_flag=True, help="Dynamic image height/width (overrides the profile's shape).")
@click.option("--tile", nargs=2, type=int, metavar="H W", help="Fix every graph to one H x W image tile (multiples of 16).")
@click.option("--fp16", is_flag=True, help="Half-precision compute (inputs/outputs stay float32), looser parity tolerance.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Bundle directory to write [default: out/<model name>-bundle].")
@click.option("--force", is_flag=True, help="Replace an existing --out directory.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def export(model: str, onnx_flag: bool, trt: bool, profile_ref: str | None, levels: str | None, dynamic: bool,
           tile: tuple[int, int] | None, fp16: bool, out: Path | None, force: bool, quiet: bool) -> None:
    """Export MODEL to a bundle of per-level encoder/decoder graphs, verified against PyTorch.

    Every graph is run with onnxruntime at several input sizes and compared with the PyTorch
    module; the parity table is printed and the bundle is written only if all of it passes.
    """
    from ..export import export_bundle, load_profile

    if dynamic and tile:
        raise CDCompressError("--dynamic and --tile exclude each other; pass one of them")
    profile = load_profile(profile_ref or ("trt-fp16" if trt else "onnx-dynamic"))
    profile = profile.with_overrides(dynamic=dynamic, tile=tuple(tile) if tile else None, fp16=fp16)
    loaded, model_dir = resolve_model(model)
    name = str(loaded.meta.get("name") or Path(model).name)
    out = out or Path("out") / f"{re.sub(r'[^A-Za-z0-9._-]+', '-', name)}-bundle"
    result = export_bundle(loaded, out, profile, parse_levels(levels) if levels else None, model_ref=model,
                           model_dir=model_dir, tensorrt=trt, overwrite=force, echo=click.echo, progress=not quiet)
    manifest = result.manifest
    engines = len((manifest.get("engines") or {}).get("engines", {}))
    size = sum(f["bytes"] for f in manifest["files"].values())
    shape = "dynamic H/W" if manifest["shape"] == "dynamic" else "x".join(map(str, manifest["shape"]))
    click.echo(f"wrote {out} (levels {','.join(map(str, manifest['levels']))}, {len(manifest['parts'])} graphs"
               f"{f', {engines} TensorRT engines' if engines else ''}, {size / 1e6:.2f} MB, "
               f"{manifest['precision']}, {shape}; parity verified on {len(result.rows)} cases)")


_BUILTINS = BUILTIN_HELP.split(": ", 1)[1]
export.help = inspect.cleandoc(export.help or "") + (
    f"\n\nMODEL is a model directory or a built-in ({_BUILTINS}). Profiles: {', '.join(available_profiles())}."
)
