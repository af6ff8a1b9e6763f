"""The root click group and the translation of user errors into one-line messages."""

from __future__ import annotations

import importlib
import signal
import sys
import threading
from typing import Any

import click

from .. import __version__
from ..core.errors import CDCompressError

#: Command -> (the ``cdcompress.cli`` module that defines it, the command's name there, its one-line help). A
#: command's module is imported only when that command runs or shows its help, so ``cdcompress --help`` does not
#: load torch; the command modules do not import this one (they define plain click commands that this group adds).
#: ``tests/test_cli_foundation.py`` checks these lines against the commands' own.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "convert": ("models", "convert",
                "Convert external weights SRC into a cdcompress model directory (safetensors + model.json)."),
    "demo": ("demo", "demo", "Compress the paper's WCT VGG-19 teacher (levels 1-3) 16x on the bundled photos: all three stages, "
                     "a report."),
    "distill": ("distill", "distill", "Run the three stages of Collaborative Distillation described by a recipe."),
    "eval": ("evaluate", "eval_group", "Evaluate a model: reconstruction quality, style distance, cost."),
    "export": ("export", "export", "Export MODEL to a bundle of per-level encoder/decoder graphs, verified against PyTorch."),
    "inspect": ("models", "inspect", "Parameters, bytes on disk and MACs per part and level of MODEL."),
    "quantize": ("quantize", "quantize",
                 "Fine-tune MODEL for INT8 (quantization-aware, collaborator in the loop) and measure its INT8 graphs."),
    "recipes": ("distill", "recipes", "List the bundled recipes (or `recipes show NAME`)."),
    "stylize": ("stylize", "stylize_command",
                "Stylize CONTENT with STYLE using MODEL's encoder/decoder pairs (teacher or student)."),
    "train-teacher": ("teacher", "train_teacher",
                      "Train a VGG-19-topology teacher from scratch on photos: one encoder, a decoder per level, pixel MSE."),
    "weights": ("distill", "weights", "Published weights for users with a network."),
}


class _Group(click.Group):
    """Runs sub-commands, reporting :class:`CDCompressError` as one line with exit code 2; loads them on demand."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in COMMANDS:
            module, attribute, _ = COMMANDS[name]
            self.add_command(getattr(importlib.import_module(f"{__package__}.{module}"), attribute), name)
        return self.commands.get(name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from :data:`COMMANDS`, without importing every command's module."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names))
        rows = [(name, self.commands[name].get_short_help_str(limit) if name in self.commands
                 else click.utils.make_default_short_help(COMMANDS[name][2], limit)) for name in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

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
        from ..core.user_code import import_modules

        import_modules(list(imports))
