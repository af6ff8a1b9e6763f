"""``cdcompress eval``: measurements of models on real images."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..evaluate import DEFAULT_CROP_MULTIPLE, format_recon_table, reconstruction
from ..models.registry import resolve_model
from .main import main


@main.group("eval")
def eval_group() -> None:
    """Evaluate a model: reconstruction quality, style distance, cost."""


@eval_group.command("recon")
@click.argument("model")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--level", type=click.IntRange(1, 5), required=True, help="Encoder/decoder level (relu{k}_1).")
@click.option("--crop-multiple", type=click.IntRange(min=1), default=DEFAULT_CROP_MULTIPLE, show_default=True,
              help="Crop each image top-left to a multiple of this.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write results as JSON.")
def recon(model: str, images: tuple[Path, ...], level: int, crop_multiple: int, json_path: Path | None) -> None:
    """Encoder -> decoder reconstruction PSNR and SSIM per image for MODEL at --level."""
    loaded, _ = resolve_model(model)
    results = reconstruction(loaded, level, images, crop_multiple)
    click.echo(format_recon_table(results))
    if json_path is not None:
        json_path.write_text(json.dumps([r.as_dict() for r in results], indent=2) + "\n")
