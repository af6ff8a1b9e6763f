"""Progress of long loops: a tqdm bar on a terminal, plain periodic lines everywhere else.

A bar redraws itself with carriage returns many times a second; written to a CI log, a ``nohup`` file or a
scheduler's capture, that is megabytes of one line. So when the stream is not a terminal, progress is one plain
line (what, how far, rate, the loop's own figures such as the loss, ETA) at most every
``$CDCOMPRESS_PROGRESS_SECONDS`` seconds (default 30), and a final line when the loop ends.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

from .errors import CDCompressError

ENV_INTERVAL = "CDCOMPRESS_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 30.0

T = TypeVar("T")


def line_interval() -> float:
    """Seconds between plain progress lines: ``$CDCOMPRESS_PROGRESS_SECONDS`` or 30."""
    text = os.environ.get(ENV_INTERVAL, "").strip()
    if not text:
        return DEFAULT_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value >= 0 and math.isfinite(value)):
        raise CDCompressError(f"{ENV_INTERVAL}={text!r} must be a number of seconds >= 0; fix or unset it")
    return value


class Progress:
    """One loop's progress: ``update(n)``, ``set_postfix(loss=...)``, ``set_description(...)``, ``close()``.

    ``enabled=False`` shows nothing. ``stream`` defaults to ``sys.stderr`` as it is at construction (so a
    captured or redirected stderr is honoured); ``interval`` defaults to :func:`line_interval`."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", *, initial: int = 0, enabled: bool = True,
                 unit_scale: bool = False, leave: bool = True, stream: IO[str] | None = None,
                 interval: float | None = None) -> None:
        self.total, self.desc, self.unit, self.unit_scale = total, desc, unit, unit_scale
        self.n = self._start = initial
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.postfix: dict[str, Any] = {}
        self._bar = self._tqdm(leave) if enabled and _is_terminal(self.stream) else None
        self._interval = line_interval() if interval is None else interval
        self._began = self._last = time.monotonic()
        self._shown: int | None = None  # the count the last plain line showed
        self._closed = False

    def _tqdm(self, leave: bool) -> Any:
        from tqdm import tqdm

        return tqdm(total=self.total, initial=self.n, desc=self.desc, unit=self.unit, unit_scale=self.unit_scale,
                    leave=leave, file=self.stream, dynamic_ncols=True, mininterval=1.0)

    @property
    def plain(self) -> bool:
        """Whether progress goes out as plain lines (enabled, and the stream is not a terminal)."""
        return self.enabled and self._bar is None

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.plain and time.monotonic() - self._last >= self._interval:
            self._emit()

    def set_postfix(self, **values: Any) -> None:
        """Figures shown after the count (e.g. ``loss="0.0123"``), on the bar or in the next line."""
        self.postfix = values
        if self._bar is not None:
            self._bar.set_postfix(values, refresh=False)

    def set_description(self, desc: str) -> None:
        self.desc = desc
        if self._bar is not None:
            self._bar.set_description(desc, refresh=False)

    def close(self) -> None:
        """Ends the bar, or writes the final line (whatever the interval)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.plain and self._shown != self.n:
            self._emit()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _emit(self) -> None:
        self._last, self._shown = (now := time.monotonic()), self.n
        self.stream.write(self.line(now - self._began) + "\n")
        self.stream.flush()

    def line(self, elapsed: float) -> str:
        """``desc: unit n/total (p%), rate unit/s, key value..., ETA h:mm:ss``."""
        done = self.n - self._start
        rate = done / elapsed if elapsed > 0 else 0.0
        count = f"{self._amount(self.n)}/{self._amount(self.total)}" if self.total else self._amount(self.n)
        parts = [f"{self.desc}: {self.unit} {count}" if not self.unit_scale else f"{self.desc}: {count}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{self._amount(rate)}/s" if self.unit_scale else f"{rate:.3g} {self.unit}/s" if rate < 1000
                     else f"{rate:.0f} {self.unit}/s")
        parts += [f"{key} {value}" for key, value in self.postfix.items()]
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"ETA {_clock((self.total - self.n) / rate)}")
        elif self.total and self.n >= self.total:
            parts.append(f"done in {_clock(elapsed)}")
        return ", ".join(parts)

    def _amount(self, value: float | None) -> str:
        if value is None:
            return "?"
        if not self.unit_scale:
            return str(value) if isinstance(value, int) else f"{value:.3g}"
        prefixes, index = ("", "k", "M", "G", "T"), 0
        while abs(value) >= 1000 and index < len(prefixes) - 1:
            value, index = value / 1000, index + 1
        return f"{value:.3g} {prefixes[index]}{self.unit}"


def progress_iter(items: Iterable[T], desc: str, unit: str = "it", *, total: int | None = None, enabled: bool = True,
                  stream: IO[str] | None = None) -> Iterator[T]:
    """``items`` with a :class:`Progress` advanced per item (closed when the loop ends or breaks)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, desc, unit, enabled=enabled, stream=stream) as bar:
        for item in items:
            yield item
            bar.update()


def _is_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
