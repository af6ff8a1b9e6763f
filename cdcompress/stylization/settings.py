"""Names of the stylization choices, without importing torch (the command line's options read them)."""

from __future__ import annotations

from collections.abc import Sequence

from ..core.errors import CDCompressError

METHODS: tuple[str, ...] = ("wct", "adain")
#: The paper's levels for a full five-level model; a model with fewer gets :func:`default_levels`.
DEFAULT_LEVELS: dict[str, tuple[int, ...]] = {"wct": (5, 4, 3, 2, 1), "adain": (4,)}
#: Network precisions a PyTorch backend runs in (statistics and WCT maps stay float32/float64).
PRECISION_NAMES: tuple[str, ...] = ("fp32", "fp16", "bf16")


def default_levels(method: str, available: Sequence[int]) -> tuple[int, ...]:
    """The levels a stylization uses when none are asked for, given the model's usable ``available`` levels:
    WCT cascades over all of them, coarse to fine (5,4,3,2,1 for a full model; 3,2,1 for one with levels 1-3);
    AdaIN uses level 4, and a model without it is one line naming the levels it has."""
    have = sorted(set(available), reverse=True)
    if not have:
        raise CDCompressError("the model has no usable encoder/decoder level; use a model with at least one")
    if method == "wct":
        return tuple(have)
    wanted = DEFAULT_LEVELS[method]
    if all(k in have for k in wanted):
        return wanted
    listed = ",".join(map(str, have))
    raise CDCompressError(f"{method} uses level {','.join(map(str, wanted))} by default, which the model lacks "
                          f"(its levels: {listed}); pass --levels among {listed}")
