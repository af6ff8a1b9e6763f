"""The root click group and the translation of user errors into one-line messages."""

from __future__ import annotations

import sys
from typing import Any

import click

from .. import __version__
from ..errors import CDCompressError


class _Group(click.Group):
    """Runs sub-commands, reporting :class:`CDCompressError` as one line with exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CDCompressError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cdcompress")
def main() -> None:
    """Collaborative Distillation: compress encoder-decoder networks and deploy them."""
