"""Find the widths that make a student meet a :class:`~cdcompress.core.budget.Budget`.

1. **Uniform**: one width ratio for every prunable layer, found by bisection on the slimmed copy's real cost
   (``round_to``, protected layers and coupled groups included, since the copy is really slimmed).
2. **Sensitivity** (with calibration data): each encoder layer is cut alone to that ratio and the
   collaborator's reconstruction of the calibration batch is measured; a layer whose cut costs more dB keeps more
   channels (ratio ∝ damage^½, within 4x of the uniform ratio, scaled by bisection to the same budget). The
   allocation is kept only if the whole cut reconstructs better than the uniform one before any training;
   otherwise the uniform widths stand.

Parameters and MACs are counted exactly, so predicted = measured. Latency is predicted from MACs by a curve through
measured points (the teacher and three uniform cuts; piecewise linear, made monotone), which chooses the allocation
and a first width; then the chosen allocation's one-parameter family is searched on *measured* latency (regula falsi
in a bracket, each architecture measured once, at most :data:`LATENCY_ROUNDS` measurements): equal MACs need not
mean equal time when an allocation widens memory-bound high-resolution layers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..core.budget import Budget, BudgetError
from ..cost.static import count_macs
from ..data.batches import Batch
from ..surgery.modules import EncoderDecoderPair, count_parameters
from ..surgery.slim import SlimmingError, SlimResult, WidthSpec

log = logging.getLogger(__name__)

#: Bisection steps on a ratio in (0, 1]: 2^-16 is finer than one channel of any layer below 65k channels.
BISECTION_STEPS = 16
#: The narrowest ratio tried (every layer down to its minimum width).
MIN_RATIO = 1e-4
#: Exponent of the damage in the sensitivity allocation (½: halving a layer's damage does not halve its width).
SENSITIVITY_EXPONENT = 0.5
#: A layer's width stays within this factor of the uniform ratio: one small calibration batch and one cut ratio
#: measure damage roughly, and a layer measured harmless on it is not therefore worthless.
MAX_WEIGHT = 4.0
LATENCY_ROUNDS = 8

Slim = Callable[[WidthSpec], SlimResult]


@dataclass
class Candidate:
    """One slimmed copy and its costs."""

    label: str
    widths: dict[str, int]
    params: int
    macs: int

    def count(self, metric: str) -> float:
        return float(self.macs if metric in ("macs", "latency_ms") else self.params)


@dataclass
class BudgetSearch:
    """What :func:`find_widths` chose and why: the widths, their cost predicted and measured, the evidence."""

    budget: Budget
    goal: float  # the target in the metric's units
    teacher_cost: float
    widths: dict[str, int]  # absolute output width of every prunable layer (encoder.* / decoder.*)
    allocation: str  # "uniform" or "sensitivity"
    uniform_ratio: float
    predicted: float
    measured: float
    met: bool
    sensitivity_db: dict[str, float] = field(default_factory=dict)  # dB lost when only that layer is cut
    prune_psnr: dict[str, float] = field(default_factory=dict)  # calibration PSNR of the whole cut, untrained
    latency_points: list[dict[str, float]] = field(default_factory=list)  # (macs, ms) measured on the runtime
    notes: list[str] = field(default_factory=list)

    @property
    def error(self) -> float:
        return self.measured / self.goal - 1

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["budget"] = asdict(self.budget)
        data["error"] = self.error
        return data

    def summary(self) -> str:
        unit = {"params": "", "macs": "", "latency_ms": " ms"}[self.budget.metric]
        lines = [f"budget: {self.budget.describe()} -> goal {_fmt(self.goal)}{unit} (teacher {_fmt(self.teacher_cost)}{unit})",
                 f"chosen: {self.allocation} widths (uniform ratio {self.uniform_ratio:.4f}); predicted "
                 f"{_fmt(self.predicted)}{unit}, measured {_fmt(self.measured)}{unit} ({self.error:+.1%}): "
                 + ("met" if self.met else f"NOT met within ±{self.budget.tolerance:.0%}")]
        if self.prune_psnr:
            lines.append("untrained cut on the calibration batch: "
                         + ", ".join(f"{k} {v:.2f} dB" for k, v in self.prune_psnr.items()))
        if self.sensitivity_db:
            lines.append("| layer | dB lost when cut alone | width |\n|---|---:|---:|")
            lines += [f"| {name} | {db:.3f} | {self.widths.get(name, '-')} |" for name, db in self.sensitivity_db.items()]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 1000 else f"{value:.3g}"


# ----------------------------------------------------------------------------- costs


class CostMeter:
    """The budget's cost of slimmed copies: exact counts, and latency measured on the named runtime."""

    def __init__(self, budget: Budget, channels: int) -> None:
        self.budget = budget
        self.shape = (1, channels, *budget.hw)

    def candidate(self, label: str, result: SlimResult) -> Candidate:
        return Candidate(label, result.widths(), self._params(result.encoder, result.decoder),
                         self._macs(result.encoder, result.decoder))

    def teacher(self, encoder: nn.Module, decoder: nn.Module) -> Candidate:
        return Candidate("teacher", {}, self._params(encoder, decoder), self._macs(encoder, decoder))

    def latency(self, encoder: nn.Module, decoder: nn.Module) -> float:
        from ..cost.latency import measure_latency

        budget = self.budget
        return measure_latency(encoder, decoder if budget.part == "pair" else None, self.shape, budget.runtime,
                               threads=budget.threads, repeats=budget.repeats)

    def _params(self, encoder: nn.Module, decoder: nn.Module) -> int:
        return count_parameters(encoder) + (count_parameters(decoder) if self.budget.part == "pair" else 0)

    def _macs(self, encoder: nn.Module, decoder: nn.Module) -> int:
        module = EncoderDecoderPair(encoder, decoder) if self.budget.part == "pair" else encoder
        return count_macs(module, self.shape)


# ----------------------------------------------------------------------------- the search


def find_widths(encoder: nn.Module, decoder: nn.Module, channels: int, slim: Slim, budget: Budget,
                calibration: Batch | None = None, mirror: Callable[[WidthSpec], WidthSpec] | None = None) -> BudgetSearch:
    """Widths for ``encoder``/``decoder`` (images of ``channels`` channels) that meet ``budget``.

    ``slim(spec)`` slims a copy of the pair (the caller's importance, ``round_to`` and protected layers);
    ``calibration`` (inputs and the pair's targets) enables the sensitivity allocation; ``mirror`` maps a
    per-layer encoder spec to the whole pair's (VGG decoders mirror their encoder)."""
    meter = CostMeter(budget, channels)
    teacher = meter.teacher(encoder, decoder)
    search = _Search(budget, meter, slim, calibration, mirror or (lambda spec: spec), EncoderDecoderPair(encoder, decoder))
    if budget.metric == "latency_ms":
        return search.latency(encoder, decoder, teacher)
    goal = budget.goal(teacher.count(budget.metric))
    _check_below_teacher(goal, teacher.count(budget.metric), budget)
    chosen, ratio = search.counted(goal)
    cost = chosen.count(budget.metric)
    return search.result(goal, teacher.count(budget.metric), chosen, ratio, cost, cost)


def _check_below_teacher(goal: float, teacher_cost: float, budget: Budget) -> None:
    if goal >= teacher_cost * (1 - budget.tolerance):
        raise BudgetError(f"budget {budget.describe()}: the teacher itself costs {_fmt(teacher_cost)}, within the "
                          "target; nothing needs cutting (ask for less, or use slim=<ratio>)")


def _widths_key(widths: Mapping[str, int]) -> str:
    return repr(sorted(widths.items()))


def _as_spec(ratio: float) -> WidthSpec:
    return ratio


def _next_inside(below: tuple[float, float], above: tuple[float, float], goal: float) -> float:
    """Regula falsi between a (t, ms) under the goal and one over it, kept 10% inside the bracket so that noise
    or a flat stretch cannot stall it at one end."""
    (t_low, ms_low), (t_high, ms_high) = below, above
    share = (goal - ms_low) / (ms_high - ms_low) if ms_high > ms_low else 0.5
    return t_low + min(0.9, max(0.1, share)) * (t_high - t_low)


class _Search:
    def __init__(self, budget: Budget, meter: CostMeter, slim: Slim, calibration: Batch | None,
                 mirror: Callable[[WidthSpec], WidthSpec], uncut: nn.Module) -> None:
        self.budget, self.meter, self.slim, self.calibration, self.mirror = budget, meter, slim, calibration, mirror
        self.uncut = uncut
        self.metric = "macs" if budget.metric == "latency_ms" else budget.metric
        self.cache: dict[str, tuple[Candidate, SlimResult]] = {}
        self.notes: list[str] = []
        self.sensitivity_db: dict[str, float] = {}
        self.prune_psnr: dict[str, float] = {}
        self.latency_points: list[dict[str, float]] = []
        self._weights: dict[str, float] | None = None
        self.measured: dict[str, float] = {}  # ms per architecture (sorted widths)
        self.by_widths: dict[str, SlimResult] = {}  # every slimmed copy, by its widths: each architecture cut once
        #: The chosen allocation as a one-parameter family: (spec of t, t chosen, lowest t, highest t).
        self.family: tuple[Callable[[float], WidthSpec], float, float, float] = (_as_spec, 1.0, MIN_RATIO, 1.0)

    # -- evaluating specs

    def evaluate(self, label: str, spec: WidthSpec) -> Candidate:
        key = repr(sorted(spec.items())) if isinstance(spec, Mapping) else repr(spec)
        if key not in self.cache:
            try:
                result = self.slim(spec)
            except SlimmingError as exc:
                if "removed nothing" not in str(exc):
                    raise
                result = None
            candidate = self.meter.candidate(label, result) if result is not None else None
            self.cache[key] = (candidate, result)  # type: ignore[assignment]
            if result is not None:
                self.by_widths.setdefault(_widths_key(result.widths()), result)
        candidate, _ = self.cache[key]
        if candidate is None:
            return Candidate(label, {}, 1 << 62, 1 << 62)  # nothing removed: as dear as the teacher, never chosen
        return Candidate(label, candidate.widths, candidate.params, candidate.macs)

    def _bisect(self, label: str, family: Callable[[float], WidthSpec], goal: float, low: float,
                high: float) -> tuple[Candidate, float]:
        """The family member whose count is nearest ``goal`` at the boundary where it crosses it."""
        below = self.evaluate(label, family(low))
        if below.count(self.metric) > goal * (1 + self.budget.tolerance):
            return below, low  # the caller reports it as unreachable
        above_t = high
        below_t = low
        for _ in range(BISECTION_STEPS):
            middle = (below_t + above_t) / 2
            candidate = self.evaluate(label, family(middle))
            if abs(candidate.count(self.metric) / goal - 1) <= self.budget.tolerance / 4:
                return candidate, middle  # close enough: a quarter of the tolerance
            if candidate.count(self.metric) <= goal:
                below_t = middle
            else:
                above_t = middle
        options = [(self.evaluate(label, family(t)), t) for t in (below_t, above_t)]
        return min(options, key=lambda o: abs(o[0].count(self.metric) - goal))

    # -- the two allocations

    def uniform(self, goal: float) -> tuple[Candidate, float]:
        candidate, ratio = self._bisect("uniform", lambda t: t, goal, MIN_RATIO, 1.0)
        cost = candidate.count(self.metric)
        if cost > goal * (1 + self.budget.tolerance):
            raise BudgetError(f"budget {self.budget.describe()} cannot be met: the narrowest student reachable "
                              f"(every prunable layer at its minimum width) costs {_fmt(cost)} {self.metric}; "
                              "ask for at least that, or protect fewer layers")
        return candidate, ratio

    def counted(self, goal: float) -> tuple[Candidate, float]:
        """The allocation for a params/MACs goal: uniform, then sensitivity where it reconstructs better."""
        uniform, ratio = self.uniform(goal)
        self.family = (_as_spec, ratio, MIN_RATIO, 1.0)
        if not self._use_sensitivity():
            return uniform, ratio
        weights = self.weights(ratio)
        if not weights:
            return uniform, ratio

        def allocation(u: float) -> WidthSpec:
            return self._allocation(u, weights, ratio)

        top = 1 / min(weights.values())
        allocated, scale = self._bisect("sensitivity", allocation, goal, MIN_RATIO, top)
        tolerance = self.budget.tolerance
        if abs(allocated.count(self.metric) / goal - 1) > tolerance:
            self.notes.append("the sensitivity allocation could not land within tolerance; uniform widths kept")
            return uniform, ratio
        chosen = self._better(uniform, allocated)
        if chosen is allocated:
            self.family = (allocation, scale, MIN_RATIO, top)
        return chosen, ratio

    def _use_sensitivity(self) -> bool:
        allocation = self.budget.allocation
        if allocation == "sensitivity" and self.calibration is None:
            raise BudgetError("budget allocation 'sensitivity' needs calibration data: pass Slimming(..., "
                              "calibration=(inputs, targets)), or use allocation='uniform'")
        if allocation == "auto" and self.calibration is None:
            self.notes.append("no calibration data: uniform widths (pass calibration= for a sensitivity allocation)")
        return allocation != "uniform" and self.calibration is not None

    def _allocation(self, scale: float, weights: Mapping[str, float], base: float) -> WidthSpec:
        spec: dict[str, float | int] = {"*": base}
        for name, weight in weights.items():
            spec[name] = min(1.0, max(MIN_RATIO, scale * weight))
        return self.mirror(spec)

    def weights(self, ratio: float) -> dict[str, float]:
        """Per-layer width multipliers from each layer's damage when cut alone to ``ratio`` (geometric mean 1)."""
        if self._weights is not None:
            return self._weights
        _, uniform_result = self.cache[repr(ratio)]
        # Encoder layers only, also for a pair budget: the student encoder is what distillation trains, and a cut of
        # a decoder layer alone leaves no student to measure (the decoder layers keep the uniform ratio).
        roots = [w.name for w in uniform_result.layers
                 if w.requested is not None and w.name.startswith("encoder.") and w.name not in uniform_result.protected]
        reference = self._reconstruction_mse(None)
        damage = {}
        for name in roots:
            mse = self._reconstruction_mse({name: ratio})
            damage[name] = max(mse - reference, reference * 1e-6, 1e-12)
            self.sensitivity_db[name] = 10 * math.log10(mse / reference) if reference > 0 else float("inf")
        if len(damage) < 2:
            self._weights = {}
            return self._weights
        mean_log = sum(math.log(d) for d in damage.values()) / len(damage)
        self._weights = {n: min(MAX_WEIGHT, max(1 / MAX_WEIGHT, math.exp(SENSITIVITY_EXPONENT * (math.log(d) - mean_log))))
                         for n, d in damage.items()}
        return self._weights

    def _reconstruction_mse(self, spec: WidthSpec | None) -> float:
        """The collaborator's reconstruction error on the calibration batch with ``spec`` cut (None: uncut)."""
        if spec is None:
            return self._mse(self.uncut)
        result = self.slim(spec)
        return self._mse(EncoderDecoderPair(result.encoder, result.decoder))

    def _cut(self, widths: dict[str, int]) -> SlimResult:
        """The slimmed copy with these absolute widths (cut while searching, or now)."""
        key = _widths_key(widths)
        if key not in self.by_widths:
            self.by_widths[key] = self.slim(widths)
        return self.by_widths[key]

    def _mse(self, pair: nn.Module) -> float:
        batch = self.calibration
        assert batch is not None
        was_training = pair.training
        with torch.no_grad():
            output = pair.eval()(batch.input.cpu())
        pair.train(was_training)
        return float(torch.nn.functional.mse_loss(output.float(), batch.target.cpu().float()))

    def _better(self, uniform: Candidate, allocated: Candidate) -> Candidate:
        scores = {}
        for candidate in (uniform, allocated):
            result = self._cut(candidate.widths)
            mse = self._mse(EncoderDecoderPair(result.encoder, result.decoder))
            scores[candidate.label] = mse
            self.prune_psnr[candidate.label] = 10 * math.log10(1 / max(mse, 1e-12))
        if scores["sensitivity"] < scores["uniform"]:
            return allocated
        self.notes.append("the sensitivity allocation reconstructed no better untrained than the uniform cut; uniform kept")
        return uniform

    # -- latency: predicted from MACs, then measured and corrected

    def latency(self, encoder: nn.Module, decoder: nn.Module, teacher: Candidate) -> BudgetSearch:
        """Predict from MACs to choose the allocation and a first width, then search that allocation's one-parameter
        family on *measured* latency (regula falsi inside a bracket): two allocations of equal MACs can differ in
        speed (wide high-resolution layers are memory-bound), so the MACs curve only starts the search."""
        budget = self.budget
        teacher_ms = self.meter.latency(encoder, decoder)
        self._point(teacher.macs, teacher_ms)
        goal = budget.goal(teacher_ms)
        _check_below_teacher(goal, teacher_ms, budget)
        measured_at = {}
        for ratio in (0.5, 0.25, MIN_RATIO):
            measured_at[ratio] = self._measure(self.evaluate("uniform", ratio))
        narrowest = measured_at[MIN_RATIO]
        if narrowest > goal * (1 + budget.tolerance):
            raise BudgetError(f"budget {budget.describe()} cannot be met: the narrowest student reachable (every "
                              f"prunable layer at its minimum width) measures {narrowest:.3g} ms (teacher "
                              f"{teacher_ms:.3g} ms); ask for at least that, or measure at a larger size")
        macs_goal = max(self._predict_macs(goal), self.evaluate("uniform", MIN_RATIO).macs)
        first, ratio = self.counted(macs_goal)
        family, t, low, high = self.family
        label = first.label
        below, above = (low, narrowest), (high, teacher_ms)
        best: tuple[Candidate, float, float] | None = None
        for _ in range(LATENCY_ROUNDS):
            candidate = self.evaluate(label, family(t))
            predicted = self._predict_ms(candidate.macs)  # before its own measurement joins the curve
            measured = self._measure(candidate)
            if best is None or abs(measured / goal - 1) < abs(best[1] / goal - 1):
                best = (candidate, measured, predicted)
            if abs(measured / goal - 1) <= budget.tolerance:
                break
            if measured < goal:
                below = (t, measured)
            else:
                above = (t, measured)
            t = _next_inside(below, above, goal)
        assert best is not None
        chosen, measured, predicted = best
        return self.result(goal, teacher_ms, chosen, ratio, predicted, measured)

    def _measure(self, candidate: Candidate) -> float:
        """Latency of ``candidate`` on the runtime (each architecture measured once), added to the MACs curve."""
        key = _widths_key(candidate.widths)
        if key not in self.measured:
            result = self._cut(candidate.widths)
            self.measured[key] = self.meter.latency(result.encoder, result.decoder)
            self._point(candidate.macs, self.measured[key])
        return self.measured[key]

    def _point(self, macs: int, ms: float) -> None:
        self.latency_points.append({"macs": float(macs), "ms": ms})

    def _curve(self) -> list[tuple[float, float]]:
        """Measured (MACs, ms), repeated MACs averaged, sorted by MACs, ms made non-decreasing (a running max):
        fewer operations never take longer, so a dip is noise."""
        by_macs: dict[float, list[float]] = {}
        for point in self.latency_points:
            by_macs.setdefault(point["macs"], []).append(point["ms"])
        curve, ceiling = [], 0.0
        for macs in sorted(by_macs):
            ceiling = max(ceiling, sum(by_macs[macs]) / len(by_macs[macs]))
            curve.append((macs, ceiling))
        return curve

    def _interpolate(self, value: float, x: int, y: int) -> float:
        """Piecewise-linear through the curve (coordinate ``x`` -> ``y``), extrapolating with the end segments."""
        curve = self._curve()
        if len(curve) == 1:
            return curve[0][y] * value / curve[0][x] if curve[0][x] else curve[0][y]
        for left, right in zip(curve, curve[1:], strict=False):
            if value <= right[x] or right is curve[-1]:
                span = right[x] - left[x]
                share = (value - left[x]) / span if span else 1.0
                return left[y] + share * (right[y] - left[y])
        return curve[-1][y]

    def _predict_ms(self, macs: float) -> float:
        return self._interpolate(macs, 0, 1)

    def _predict_macs(self, ms: float) -> float:
        return self._interpolate(ms, 1, 0)

    def result(self, goal: float, teacher_cost: float, chosen: Candidate, ratio: float, predicted: float,
               measured: float) -> BudgetSearch:
        met = abs(measured / goal - 1) <= self.budget.tolerance
        if not met:
            message = (f"budget {self.budget.describe()} not met: measured {_fmt(measured)} against the goal "
                       f"{_fmt(goal)} after {LATENCY_ROUNDS} rounds; the closest reachable is kept")
            log.warning("%s", message)
            self.notes.append(message)
        return BudgetSearch(self.budget, goal, teacher_cost, chosen.widths, chosen.label, ratio, predicted, measured,
                            met, dict(self.sensitivity_db), dict(self.prune_psnr), list(self.latency_points),
                            list(dict.fromkeys(self.notes)))
