"""``cdcompress inspect`` and ``cdcompress convert``."""

from __future__ import annotations

from pathlib import Path

import click

from ..core.atomic import write_json
from ..models.release import RELEASE_VARIANTS
from ..models.resolve import BUILTIN_HELP, resolve_model
from .options import parse_levels


@click.command()
@click.argument("model")
@click.option("--size", nargs=2, type=click.IntRange(min=1), default=(512, 512), show_default=True,
              metavar="H W", help="Input size for the MAC count.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write rows as JSON.")
def inspect(model: str, size: tuple[int, int], json_path: Path | None) -> None:
    """Parameters, bytes on disk and MACs per part and level of MODEL.

    MODEL is a model directory or a built-in architecture (no weights needed):
    vgg19 (teacher) or vgg19-x<ratio> (per-level students, e.g. vgg19-x0.25).
    """
    from ..cost.static import format_table, model_costs

    loaded, model_dir = resolve_model(model)
    rows = model_costs(loaded, tuple(size), model_dir)
    name = loaded.meta.get("name", model)
    click.echo(f"# {name}\n")
    click.echo(format_table(rows, tuple(size)))
    if json_path is not None:
        write_json(json_path, {"model": name, "size": list(size), "parts": [r.as_dict() for r in rows]})


inspect.help = (inspect.help or "") + f"\n\n{BUILTIN_HELP}"


@click.command()
@click.option("--from", "source", type=click.Choice(["cd-release", "torchvision", "wct-pytorch"]), required=True,
              help="Layout of the input weights (wct-pytorch: the WCT teacher's vgg_normalised_conv{k}_1.pth / "
                   "feature_invertor_conv{k}_1.pth folder, every level it holds).")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Model directory to write.")
@click.option("--variant", type=click.Choice(sorted(RELEASE_VARIANTS)), default="student", show_default=True,
              help="cd-release: se/sd students or e/d_base pruned initialisations.")
@click.option("--levels", default="1,2,3,4,5", show_default=True, help="cd-release: levels to convert.")
@click.option("--decoders", type=click.Path(file_okay=False, path_type=Path),
              help="torchvision: folder with full-width teacher decoders to add.")
@click.option("--decoder-pattern", default="d{k}.pth", show_default=True,
              help="File name of level k's decoder, for --decoders or to override the release names.")
@click.option("--padding", type=click.Choice(["reflect", "zeros"]), default="reflect", show_default=True,
              help="torchvision: conv padding (zeros reproduces torchvision exactly).")
@click.option("--force", is_flag=True, help="Replace an existing --out directory.")
def convert(source: str, src: Path, out: Path, variant: str, levels: str, decoders: Path | None,
            decoder_pattern: str, padding: str, force: bool) -> None:
    """Convert external weights SRC into a cdcompress model directory (safetensors + model.json)."""
    from ..models.converters import convert_cd_release, convert_torchvision, convert_wct_pytorch
    from ..models.format import save

    if source == "cd-release":
        pattern = decoder_pattern if decoder_pattern != "d{k}.pth" else None
        model = convert_cd_release(src, variant, parse_levels(levels), decoder_pattern=pattern)
    elif source == "wct-pytorch":
        model = convert_wct_pytorch(src)
    else:
        model = convert_torchvision(src, padding, decoders, decoder_pattern)
    save(model, out, overwrite=force)
    parts = ", ".join(f"{role}{k}" for role, table in (("encoder", model.encoders), ("decoder", model.decoders),
                                                        ("branches", model.branches)) for k in sorted(table))
    click.echo(f"wrote {out} ({parts})")
