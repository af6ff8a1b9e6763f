"""Parsing helpers shared by commands."""

from __future__ import annotations

from ..errors import CDCompressError


def parse_levels(text: str) -> tuple[int, ...]:
    """``"5,4,3"`` -> ``(5, 4, 3)``; levels must be in 1..5 and not repeat."""
    try:
        levels = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise CDCompressError(f"--levels {text!r}: expected comma-separated integers such as 5,4,3,2,1") from None
    if not levels or any(k not in range(1, 6) for k in levels) or len(set(levels)) != len(levels):
        raise CDCompressError(f"--levels {text!r}: each level must be 1..5, listed once (e.g. 5,4,3,2,1)")
    return levels
