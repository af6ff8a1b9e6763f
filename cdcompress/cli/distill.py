"""``cdcompress distill``, ``cdcompress recipes`` and ``cdcompress weights``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..distill.recipe import bundled_recipes, check_paths, load_raw, load_recipe, to_yaml
from ..models.weights import KNOWN_WEIGHTS, download
from .options import parse_levels

if TYPE_CHECKING:
    from ..distill.run import RunResult


@click.command()
@click.option("--recipe", "recipe_ref", required=True, help="Bundled recipe name or path to a YAML recipe.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a key, e.g. stages.distill.lr=1e-3.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Run directory (default: output.dir).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last checkpoints.")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Data-parallel processes (re-launches itself with torchrun; the recipe's batch is the global batch).")
@click.option("--dry-run", is_flag=True, help="Print the resolved plan (teacher and its measured reconstruction, levels, "
                                             "per-layer widths, usable images, steps, outputs) without training.")
def distill(recipe_ref: str, overrides: tuple[str, ...], out: Path | None, resume: bool, nproc: int, dry_run: bool) -> None:
    """Run the three stages of Collaborative Distillation described by a recipe."""
    recipe = load_recipe(recipe_ref, list(overrides))  # a bad recipe is reported before torch loads
    check_paths(recipe, recipe_ref)
    from ..distill import distributed
    from ..distill.run import run_recipe

    if dry_run:
        from ..distill.plan import plan

        click.echo(plan(recipe, out or Path(recipe.output.dir.format(name=recipe.name))))
        return
    if nproc > 1 and not distributed.launched_by_torchrun():
        _relaunch_with_torchrun(nproc, recipe_ref, overrides, out, resume)
        return
    result = run_recipe(recipe, out, resume)
    if distributed.is_main():
        echo_summary(result)


def echo_summary(result: RunResult) -> None:
    """What a finished run wrote and, per level, the compression and the held-out reconstruction."""
    written = ["student/", "report.md", *(name for name in result.report.get("files", {}).values() if name)]
    click.echo(f"wrote {result.run_dir} ({', '.join(written)})")
    for level, entry in result.report["levels"].items():
        psnr = f", student PSNR {entry['student_psnr']:.2f} dB (teacher {entry['teacher_psnr']:.2f})" \
            if "student_psnr" in entry else ""
        click.echo(f"level {level}: {entry['teacher_encoder_params']:,} -> {entry['student_encoder_params']:,} params "
                   f"({entry['compression']:.1f}x){psnr}")
    for note in result.report["notes"]:
        click.echo(f"note: {note}")


def _relaunch_with_torchrun(nproc: int, recipe_ref: str, overrides: tuple[str, ...], out: Path | None, resume: bool) -> None:
    """``torchrun --nproc_per_node N -m cdcompress distill ...`` with the same arguments."""
    import subprocess
    import sys

    imports = [arg for module in click.get_current_context().find_root().params.get("imports", ())
               for arg in ("--import", module)]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "cdcompress", *imports, "distill", "--recipe", recipe_ref]
    for item in overrides:
        command += ["--set", item]
    if out is not None:
        command += ["--out", str(out)]
    if resume:
        command.append("--resume")
    code = subprocess.call(command)
    if code:
        raise click.exceptions.Exit(code)


@click.group(invoke_without_command=True)
@click.pass_context
def recipes(ctx: click.Context) -> None:
    """List the bundled recipes (or `recipes show NAME`)."""
    if ctx.invoked_subcommand is not None:
        return
    for name, path in bundled_recipes().items():  # descriptions only: validating would load torch (`show` does)
        description = str(load_raw(path)[0].get("description") or "")
        click.echo(f"{name:<16} {description.splitlines()[0] if description else ''}")


@recipes.command("show")
@click.argument("name")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a key before printing.")
def show(name: str, overrides: tuple[str, ...]) -> None:
    """Print the resolved recipe NAME (extends merged, overrides applied, defaults filled)."""
    click.echo(to_yaml(load_recipe(name, list(overrides))), nl=False)


@click.group()
def weights() -> None:
    """Published weights for users with a network."""


@weights.command("download")
@click.argument("name", type=click.Choice(sorted([*KNOWN_WEIGHTS, "wct-vgg19"])))
@click.option("--dest", type=click.Path(file_okay=False, path_type=Path), help="Folder (default: torch hub cache).")
@click.option("--url", help="Download from this mirror instead of the official address (wct-vgg19: the folder "
                            "holding vgg19_1 .. vgg19_5).")
@click.option("--levels", default="1-5", show_default=True, help="wct-vgg19: the levels to fetch, e.g. 1-3.")
def download_cmd(name: str, dest: Path | None, url: str | None, levels: str) -> None:
    """Download NAME and verify its published checksum (wct-vgg19: also convert it into a model directory)."""
    if name == "wct-vgg19":
        from ..models.weights import download_wct

        path = download_wct(tuple(sorted(parse_levels(levels))), dest, url)
        click.echo(f"wrote {path} (the WCT VGG-19 teacher, levels {levels}; use it as --set teacher.path={path})")
        return
    path = download(name, dest, url)
    click.echo(f"wrote {path} ({KNOWN_WEIGHTS[name].description})")
