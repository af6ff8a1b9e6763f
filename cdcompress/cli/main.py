"""The root click group and the translation of user errors into one-line messages."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import click

from .. import __version__
from ..errors import CDCompressError


class _Group(click.Group):
    """Runs sub-commands, reporting :class:`CDCompressError` as one line with exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        _exit_cleanly_on_sigterm()
        try:
            return super().invoke(ctx)
        except CDCompressError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)


def _exit_cleanly_on_sigterm() -> None:
    """Turn SIGTERM (``kill``, job schedulers, torchrun tearing down) into ``SystemExit(143)`` so that
    ``finally`` blocks run: tiled stylization's scratch files (gigabytes) are removed, half-written outputs
    are discarded. SIGKILL cannot be caught; checkpoints and outputs are atomic for that case."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_exit)


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cdcompress")
@click.option("--import", "imports", multiple=True, metavar="MODULE",
              help="Import MODULE first, so the architectures and plug-ins it registers can be named (repeatable). "
                   "Model files can only name registered factories; nothing they say is imported.")
def main(imports: tuple[str, ...]) -> None:
    """Collaborative Distillation: compress encoder-decoder networks and deploy them."""
    if imports:
        from ..registry import import_modules

        import_modules(list(imports))
