"""``cdcompress demo``: the embedded default job on the real teacher when present, offline otherwise."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--teacher", type=click.Path(path_type=Path),
              help="WCT teacher: a converted model directory or a folder of the original .pth files "
                   "[default: $CDCOMPRESS_WCT_VGG19, else the weights cache of `weights download wct-vgg19`].")
@click.option("--offline", is_flag=True, help="Compress the bundled offline teacher even when the real one is found.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/demo"), show_default=True,
              help="Run directory.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key.")
def demo(teacher: Path | None, offline: bool, out: Path, overrides: tuple[str, ...]) -> None:
    """Compress the paper's WCT VGG-19 teacher (levels 1-3) 16x on the bundled photos: all three stages, a report."""
    from ..distill.demo import choose_demo
    from ..distill.run import run_recipe
    from .distill import echo_summary

    choice = choose_demo(teacher, offline, overrides)
    click.echo(f"demo: recipe {choice.recipe.name}; {choice.note}")
    result = run_recipe(choice.recipe, out)
    echo_summary(result)
