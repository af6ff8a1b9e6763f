"""A training run's logs: ``metrics.jsonl`` always, TensorBoard event files beside it when ``tensorboard`` is installed.

``metrics.jsonl`` is what the reports read: one JSON record a line, ``{"stage", "step", "lr", "time", <loss terms>}``
every ``log_every`` steps and ``{"stage", "step", "heldout/psnr"}`` every ``eval_every``. The event files show the
same numbers where the ecosystem looks (``tensorboard --logdir RUN_DIR``): each stage writes its own folder
``tensorboard/<stage>/`` in the run directory, with the scalar ``<stage>/<field>`` for every number of its records
but ``step`` and ``time`` (``distill_L1/total``, ``distill_L1/lr``, ``distill_L1/heldout/psnr``) and the image
``<stage>/samples`` for every sample grid.

A folder per stage because a resumed stage hides its events past the resume step with ``purge_step``, and TensorBoard
applies that to every tag in the folder: in a shared one it would hide the earlier stages' curves past that step too.
Only the main process writes.
"""

from __future__ import annotations

import json
import logging
import numbers
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.atomic import write_text
from . import distributed

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

METRICS = "metrics.jsonl"
EVENTS = "tensorboard"  # event files: <run_dir>/tensorboard/<stage>/
_NOT_SCALARS = frozenset({"stage", "step", "time"})


class RunLog:
    """One stage's logs in ``run_dir``; does nothing without a run directory or off the main process."""

    def __init__(self, run_dir: Path | None, stage: str) -> None:
        self.run_dir, self.stage = run_dir, stage
        self._events: Any = None  # a SummaryWriter between begin() and close(), when tensorboard is installed

    def begin(self, start: int) -> None:
        """Start the stage at step ``start``: its records and events past ``start`` (an interrupted run's tail,
        which the resumed run writes again) are dropped from metrics.jsonl and hidden in TensorBoard."""
        folder = self._folder()
        if folder is None:
            return
        self.close()
        _trim(folder / METRICS, self.stage, start)
        writer = _summary_writer()
        if writer is not None:
            self._events = writer(str(folder / EVENTS / self.stage), purge_step=start + 1)

    def record(self, record: dict[str, Any]) -> None:
        """Append ``record`` to metrics.jsonl; each of its numbers becomes a scalar at its step."""
        folder = self._folder()
        if folder is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / METRICS, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self._events is not None:
            for key, value in record.items():
                if key not in _NOT_SCALARS and isinstance(value, numbers.Real) and not isinstance(value, bool):
                    self._events.add_scalar(f"{self.stage}/{key}", float(value), int(record["step"]))

    def image(self, grid: torch.Tensor, step: int) -> None:
        """A sample grid (channels, height, width; values in [0, 1]) as the image ``<stage>/samples``."""
        if self._events is not None:
            self._events.add_image(f"{self.stage}/samples", grid, step)

    def close(self) -> None:
        """Flush and close the event files: the stage ended or stopped (idempotent)."""
        if self._events is not None:
            events, self._events = self._events, None
            events.close()

    def _folder(self) -> Path | None:
        """The run directory where this process writes the logs: only the main process does."""
        return self.run_dir if self.run_dir is not None and distributed.is_main() else None


def _trim(path: Path, stage: str, start: int) -> None:
    """Drop ``stage``'s records past ``start``, and a last line torn by a crash mid-append (appends are not atomic);
    rewritten atomically, so a crash here keeps the whole old file."""
    if not path.is_file():
        return
    text = path.read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and not _parses(lines[-1]):
        log.warning("%s: dropping its last line, cut short by an interrupted write", path)
        lines.pop()
    kept = "".join(line + "\n" for line in lines if not _is_later(json.loads(line), stage, start))
    if kept != text:
        write_text(path, kept)


def _parses(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def _summary_writer() -> type | None:
    """TensorBoard's writer, imported when a stage begins (it imports tensorboard); None where it cannot load."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        log.debug("no TensorBoard event files (%s); pip install 'cdcompress[tensorboard]' for them", exc)
        return None
    except Exception as exc:  # an installed but incompatible tensorboard must not stop training
        log.warning("no TensorBoard event files: tensorboard does not load (%s: %s)", type(exc).__name__, exc)
        return None
    return SummaryWriter


def _is_later(record: dict[str, Any], stage: str, step: int) -> bool:
    return record.get("stage") == stage and int(record.get("step", 0)) > step
