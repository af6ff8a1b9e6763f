"""What a student may cost: a budget in parameters, multiply-accumulates or latency on a named runtime.

Practitioners think in budgets ("under 1M parameters", "half the MACs", "40 ms at 1024² on our CPU"), not in
width ratios. A :class:`Budget` names exactly one such cost, of the student encoder (or the whole student pair)
at one input size; :func:`cdcompress.distill.width_search.find_widths` finds the widths that meet it. This module holds
only the specification and its rules (no torch), so the recipe schema and the Python API refuse the same values.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from .errors import CDCompressError

#: The costs a budget can name, with their units.
METRICS: dict[str, str] = {"params": "parameters", "macs": "multiply-accumulates", "latency_ms": "ms"}
#: Where latency is measured (what the student ships to).
RUNTIMES: dict[str, str] = {
    "eager": "PyTorch, CPU, fp32",
    "bundle": "ONNX Runtime, CPU, fp32 (the exported graph)",
    "int8": "ONNX Runtime, CPU, static INT8 QDQ graph",
    "cuda": "PyTorch, CUDA, fp32",
}
PARTS: tuple[str, ...] = ("encoder", "pair")
ALLOCATIONS: tuple[str, ...] = ("auto", "uniform", "sensitivity")


class BudgetError(CDCompressError):
    """A budget that is malformed, or that no width can meet."""


@dataclass(frozen=True)
class Budget:
    """One cost target for the student.

    Set exactly one of ``params``, ``macs`` or ``latency_ms``: a number (absolute) or a string ``"50%"`` (that
    share of the teacher's cost). ``size``: the input's side (or ``(height, width)``) MACs and latency are
    measured at; ``runtime``: where latency is measured (:data:`RUNTIMES`); ``part``: ``encoder`` (the student
    encoder, what collaborative distillation compresses) or ``pair`` (encoder and its slimmed decoder);
    ``tolerance``: the relative error accepted; ``allocation``: ``uniform`` (one ratio for every layer),
    ``sensitivity`` (per-layer widths from measured reconstruction damage; needs calibration data) or ``auto``
    (sensitivity when calibration data is given); ``threads``/``repeats``: latency measurement settings
    (``threads`` None: torch's current count).
    """

    params: float | str | None = None
    macs: float | str | None = None
    latency_ms: float | str | None = None
    size: int | tuple[int, int] = 512
    runtime: str = "eager"
    part: str = "encoder"
    tolerance: float = 0.05
    allocation: str = "auto"
    threads: int | None = None
    repeats: int = 7

    def __post_init__(self) -> None:
        problem = budget_problem(asdict(self))
        if problem:
            raise BudgetError(f"budget: {problem}")

    @classmethod
    def of(cls, spec: Budget | dict[str, Any]) -> Budget:
        """A budget from itself or a mapping of its fields (what a recipe's ``student.target`` holds)."""
        if isinstance(spec, Budget):
            return spec
        if not isinstance(spec, dict):
            raise BudgetError(f"budget must be a Budget or a mapping such as {{'macs': '50%'}}, got {type(spec).__name__}")
        unknown = sorted(set(spec) - {f.name for f in fields(cls)})
        if unknown:
            raise BudgetError(f"budget: unknown field(s) {unknown}; use {', '.join(f.name for f in fields(cls))}")
        return cls(**spec)

    @property
    def metric(self) -> str:
        return next(name for name in METRICS if getattr(self, name) is not None)

    @property
    def hw(self) -> tuple[int, int]:
        return (self.size, self.size) if isinstance(self.size, int) else (int(self.size[0]), int(self.size[1]))

    def goal(self, teacher_cost: float) -> float:
        """The target in the metric's units (a share resolved against the teacher's cost)."""
        value = getattr(self, self.metric)
        share = _share(value)
        return teacher_cost * share if share is not None else float(value)

    def describe(self) -> str:
        value = getattr(self, self.metric)
        where = f" at {self.hw[0]}x{self.hw[1]}" if self.metric != "params" else ""
        runtime = f" on {self.runtime}" if self.metric == "latency_ms" else ""
        return f"{self.part} {self.metric} {value}{where}{runtime} (±{self.tolerance:.0%})"


def _share(value: Any) -> float | None:
    """``"50%"`` -> 0.5; None for an absolute number."""
    if isinstance(value, str):
        text = value.strip()
        if not text.endswith("%"):
            raise BudgetError(f"budget value {value!r}: a number, or a share of the teacher such as '50%'")
        try:
            return float(text[:-1]) / 100
        except ValueError:
            raise BudgetError(f"budget value {value!r}: a number, or a share of the teacher such as '50%'") from None
    return None


def _value_problem(name: str, value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return f"{name} must be a number or a share such as '50%', got {value!r}"
    try:
        number = _share(value)
    except BudgetError as exc:
        return str(exc).removeprefix("budget value ")
    number = float(value) if number is None else number
    if not math.isfinite(number) or number <= 0:
        return f"{name} must be > 0, got {value!r}"
    if isinstance(value, str) and number >= 1:
        return f"{name} {value!r} is not below the teacher's cost; give a share under 100%"
    return None


def budget_problem(spec: dict[str, Any]) -> str | None:
    """Why a budget's fields are invalid, or None (shared by :class:`Budget` and the recipe schema)."""
    chosen = [name for name in METRICS if spec.get(name) is not None]
    if len(chosen) != 1:
        return f"set exactly one of {', '.join(METRICS)} (got {chosen or 'none'}), e.g. macs: '50%' or latency_ms: 40"
    problem = _value_problem(chosen[0], spec[chosen[0]])
    if problem:
        return problem
    size = spec.get("size", 512)
    if isinstance(size, int) and not isinstance(size, bool):
        sides = [size]
    else:
        sides = list(size) if isinstance(size, (list, tuple)) else []
    if len(sides) not in (1, 2) or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sides):
        return f"size must be a positive side or [height, width], got {size!r}"
    for name, allowed in (("runtime", RUNTIMES), ("part", PARTS), ("allocation", ALLOCATIONS)):
        if spec.get(name) not in allowed:
            return f"{name} {spec.get(name)!r} is not one of {', '.join(allowed)}"
    tolerance = spec.get("tolerance")
    if not isinstance(tolerance, (int, float)) or isinstance(tolerance, bool) or not 0 < tolerance <= 0.5:
        return f"tolerance must be in (0, 0.5], got {tolerance!r}"
    threads, repeats = spec.get("threads"), spec.get("repeats")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        return f"threads must be a positive integer or null, got {threads!r}"
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        return f"repeats must be a positive integer, got {repeats!r}"
    return None
