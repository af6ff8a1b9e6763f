"""Names of the stylization choices, without importing torch (the command line's options read them)."""

from __future__ import annotations

METHODS: tuple[str, ...] = ("wct", "adain")
DEFAULT_LEVELS: dict[str, tuple[int, ...]] = {"wct": (5, 4, 3, 2, 1), "adain": (4,)}
#: Network precisions a PyTorch backend runs in (statistics and WCT maps stay float32/float64).
PRECISION_NAMES: tuple[str, ...] = ("fp32", "fp16", "bf16")
