"""Parsing helpers shared by commands."""

from __future__ import annotations

from ..core.errors import CDCompressError


def parse_levels(text: str) -> tuple[int, ...]:
    """``"5,4,3"`` -> ``(5, 4, 3)``, ``"1-3"`` -> ``(1, 2, 3)``; levels must be in 1..5 and not repeat."""
    try:
        levels = tuple(level for part in text.split(",") if part.strip() for level in _level_range(part))
    except ValueError:
        raise CDCompressError(f"--levels {text!r}: expected comma-separated integers such as 5,4,3,2,1") from None
    if not levels or any(k not in range(1, 6) for k in levels) or len(set(levels)) != len(levels):
        raise CDCompressError(f"--levels {text!r}: each level must be 1..5, listed once (e.g. 5,4,3,2,1)")
    return levels


def _level_range(part: str) -> range:
    first, sep, last = part.strip().partition("-")
    return range(int(first), int(last) + 1) if sep else range(int(first), int(first) + 1)
