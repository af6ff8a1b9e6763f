"""Measured cost: wall time and peak memory of stylizations in fresh processes, interleaved speed ratios
between two models, the largest resolution within a memory budget, and the ``eval cost`` report that
puts them beside the static counts of :mod:`cdcompress.cost.static`.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import torch

from ..core.errors import CDCompressError
from ..models.format import CDModel
from .static import COST_STYLE_SIZE, SIDE_ALIGN, StylizeCost, stylize_cost

K = TypeVar("K")


@dataclass
class RunMeasurement:
    """One stylization in a fresh subprocess: wall time inside it and its peak RSS from the kernel."""

    size: int
    tiled: bool
    threads: int
    wall_s: float
    peak_rss: int  # bytes, ru_maxrss of the child (model, inputs and the stylization)
    base_rss: int  # bytes resident before stylizing (interpreter, torch, model, inputs)
    walls: list[float] = field(default_factory=list)  # every repeat; wall_s is the fastest (least disturbed)

    def as_dict(self) -> dict:
        return asdict(self)


def _random_inputs(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The seeded random content (``size``²) and style every cost measurement stylizes."""
    gen = torch.Generator().manual_seed(0)
    content = torch.rand(1, 3, size, size, generator=gen)
    return content, torch.rand(1, 3, COST_STYLE_SIZE, COST_STYLE_SIZE, generator=gen)


def _child_main(payload: str) -> None:
    """Entry point of the measuring subprocess: stylize random inputs once, print one JSON line."""
    import json
    import resource
    import time

    from ..models.resolve import resolve_model
    from ..stylization import stylize
    from ..stylization.tiling import resident_bytes

    args = json.loads(payload)
    torch.set_num_threads(args["threads"])
    model, _ = resolve_model(args["model"])
    content, style = _random_inputs(args["size"])
    base = resident_bytes()
    walls = []
    for _ in range(args["repeats"]):
        start = time.perf_counter()
        stylize(model, content, style, method=args["method"], levels=args["levels"], tile=args["tile"],
                max_memory=args["max_memory"], progress=False)
        walls.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    print(json.dumps({"walls": walls, "peak_rss": peak, "base_rss": base}))


def _run_measuring_child(entry: str, args: dict, what: str, timeout: float | None) -> dict:
    """Run ``cdcompress.cost.measure.<entry>(json)`` in a fresh interpreter and return the JSON line it prints last."""
    import json
    import subprocess
    import sys

    code = f"import sys; from cdcompress.cost.measure import {entry}; {entry}(sys.argv[1])"
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise CDCompressError(f"{what} failed in the measuring process: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_stylize(model_ref: str | Path, size: int, levels: list[int], *, method: str = "wct", tile: int = 0,
                    max_memory: str | None = None, threads: int = 2, timeout: float | None = None,
                    repeats: int = 1) -> RunMeasurement:
    """Time a stylization of a random ``size`` x ``size`` image in a fresh process (so its peak is its own).

    ``model_ref`` is a model directory or built-in name (the child loads it itself); ``tile=0`` is untiled.
    With ``repeats`` > 1 the same stylization runs again in that process and the fastest wall time is kept:
    on a shared machine the minimum is the least disturbed estimate.
    """
    data = _run_measuring_child("_child_main", {"model": str(model_ref), "size": size, "levels": levels,
                                                 "method": method, "tile": tile, "max_memory": max_memory,
                                                 "threads": threads, "repeats": max(1, repeats)},
                                f"stylization at {size}x{size}", timeout)
    return RunMeasurement(size, tile != 0, threads, min(data["walls"]), data["peak_rss"], data["base_rss"], data["walls"])


@dataclass
class PairedTiming:
    """Interleaved wall times of two models on the same inputs, in one process (see :func:`measure_pairs`)."""

    size: int
    tiled: bool
    threads: int
    first: list[float]  # one per round
    second: list[float]  # per round: the mean of the runs just before and just after ``first``'s

    @property
    def ratios(self) -> list[float]:
        return [a / b for a, b in zip(self.first, self.second, strict=True)]

    @property
    def median_ratio(self) -> float:
        return statistics.median(self.ratios)

    def as_dict(self) -> dict:
        return {**asdict(self), "ratios": self.ratios, "median_ratio": self.median_ratio}


def _pairs_child_main(payload: str) -> None:
    """Measuring subprocess of :func:`measure_pairs`: S, F, S per round, after one warm-up of each."""
    import json
    import time

    from ..models.resolve import resolve_model
    from ..stylization import stylize

    args = json.loads(payload)
    torch.set_num_threads(args["threads"])
    first, _ = resolve_model(args["first"])
    second, _ = resolve_model(args["second"])
    content, style = _random_inputs(args["size"])

    def timed(model: CDModel) -> float:
        start = time.perf_counter()
        stylize(model, content, style, method=args["method"], levels=args["levels"], tile=args["tile"], progress=False)
        return time.perf_counter() - start

    timed(first), timed(second)
    firsts, seconds = [], []
    for _ in range(args["rounds"]):
        before = timed(second)
        firsts.append(timed(first))
        seconds.append((before + timed(second)) / 2)
    print(json.dumps({"first": firsts, "second": seconds}))


def measure_pairs(first_ref: str | Path, second_ref: str | Path, size: int, levels: list[int], *, rounds: int = 3,
                  tile: int = 0, threads: int = 2, method: str = "wct", timeout: float | None = None) -> PairedTiming:
    """Time two models in turns (second, first, second per round) in one fresh process.

    On a shared machine whose speed drifts by tens of percent over minutes, the best-of-N wall
    time of each model, measured minutes apart, gives a ratio that drifts with it; the ratio of
    runs made back to back (the second model bracketing the first) does not.
    """
    data = _run_measuring_child("_pairs_child_main", {"first": str(first_ref), "second": str(second_ref),
                                                       "size": size, "levels": levels, "method": method, "tile": tile,
                                                       "threads": threads, "rounds": max(1, rounds)},
                                f"paired timing at {size}x{size}", timeout)
    return PairedTiming(size, tile != 0, threads, data["first"], data["second"])


@dataclass
class MaxSide:
    """Largest square side fitting a memory budget, and how it was found."""

    mode: str  # "untiled (measured fit)", "untiled (pipeline estimate)" or "tiled (pipeline plan)"
    budget: int
    side: int | None  # None: could not be determined
    method: str
    verified_peak: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def fit_linear(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares ``y = a + b·x`` through ``points`` (at least two distinct x)."""
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        raise ValueError("need at least two distinct sizes to fit")
    b = sum((x - mx) * (y - my) for x, y in points) / sxx
    return my - b * mx, b


def max_untiled_side(model_ref: str | Path, levels: list[int], budget: int, probes: list[RunMeasurement], *,
                     verify: bool = False, method: str = "wct", threads: int = 2) -> MaxSide:
    """Predict the untiled limit from peak RSS measured at ``probes`` (peak is linear in pixels), then
    optionally run once at the prediction to check it (bisection by full runs would take hours)."""
    a, b = fit_linear([(float(p.size**2), float(p.peak_rss)) for p in probes])
    sizes = ", ".join(str(p.size) for p in sorted(probes, key=lambda p: p.size))
    if b <= 0:
        note = f"no fit: peak RSS did not grow over {sizes} px; probe larger sizes"
        return MaxSide("untiled (measured fit)", budget, None, note)
    side = math.isqrt(max(0, int((budget - a) / b))) // SIDE_ALIGN * SIDE_ALIGN
    result = MaxSide("untiled (measured fit)", budget, side, f"linear fit of measured peak RSS at {sizes} px")
    if verify and side:
        run = measure_stylize(model_ref, side, levels, method=method, threads=threads)
        result.verified_peak = run.peak_rss
        result.method += f"; verified by one run at {side} px"
    return result


def _bisect_side(fits: Callable[[int], bool], limit: int) -> int:
    """Largest multiple of ``SIDE_ALIGN`` in [SIDE_ALIGN, limit] with ``fits`` true (monotone), else 0."""
    lo, hi = 0, limit // SIDE_ALIGN
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid * SIDE_ALIGN):
            lo = mid
        else:
            hi = mid - 1
    return lo * SIDE_ALIGN


def planned_max_sides(model: CDModel, levels: list[int], budget: int, *, limit: int = 1 << 18,
                      workdir: str | Path | None = None) -> tuple[MaxSide, MaxSide]:
    """Bisection over square sides with the stylize pipeline's own memory model.

    Untiled: the pipeline's estimate of the untiled peak (what ``stylize`` uses to decide to tile).
    Tiled: resident memory does not grow with the image (canvases live on disk), so the bound is the
    tile plan fitting ``budget`` and the scratch files fitting the free disk of ``workdir``.
    """
    import shutil

    from ..stylization import as_backend, make_job, plan_tiling, scratch_bytes, untiled_bytes
    from ..stylization.tiling import resident_bytes

    job = make_job(as_backend(model), "wct", levels, 1.0)
    style_hw = (COST_STYLE_SIZE, COST_STYLE_SIZE)
    free = shutil.disk_usage(workdir or tempfile.gettempdir()).free

    def untiled_fits(side: int) -> bool:
        return resident_bytes() + untiled_bytes(job, side, side, style_hw) <= budget

    def tiled_fits(side: int) -> bool:
        try:
            plan = plan_tiling(job, side, side, style_hw, None, budget, None)
        except CDCompressError:
            return False
        return plan is None or scratch_bytes(job, plan, side, side, True) <= free

    untiled = MaxSide("untiled (pipeline estimate)", budget, _bisect_side(untiled_fits, limit),
                      "bisection on the pipeline's untiled estimate")
    tiled = MaxSide("tiled (pipeline plan)", budget, _bisect_side(tiled_fits, limit),
                    f"bisection: tile plan within budget and scratch within {free / 2**30:.0f} GiB free disk")
    return untiled, tiled


# ----------------------------------------------------------------------------- the eval cost report


@dataclass
class CostReport:
    model: str
    static: StylizeCost
    runs: list[RunMeasurement]
    max_sides: list[MaxSide]

    def as_dict(self) -> dict:
        return {"model": self.model, "static": self.static.as_dict(), "runs": [r.as_dict() for r in self.runs],
                "max_sides": [m.as_dict() for m in self.max_sides]}


def cost_report(model_ref: str | Path, levels: list[int], *, size: int = 3000, time_size: int = 1024, tile: int = 512,
                threads: int = 2, budget: int = 8 << 30, probe_sizes: tuple[int, ...] = (256, 512),
                verify: bool = False, method: str = "wct", repeats: int = 1) -> CostReport:
    """Static cost at ``size``; wall time and peak RSS at ``time_size`` untiled and with ``tile`` (0: skip);
    the largest square within ``budget`` from measured probes (untiled) and the pipeline's memory model."""
    from ..models.resolve import resolve_model

    model, model_dir = resolve_model(model_ref)
    static = stylize_cost(model, levels, size, model_dir)
    runs = []
    if time_size:
        runs.append(measure_stylize(model_ref, time_size, levels, method=method, threads=threads, repeats=repeats))
        if tile:
            runs.append(measure_stylize(model_ref, time_size, levels, method=method, tile=tile, threads=threads,
                                        repeats=repeats))
    sides = []
    probes = [p for p in runs if not p.tiled]
    probes += [measure_stylize(model_ref, s, levels, method=method, threads=threads) for s in probe_sizes
               if s not in {p.size for p in probes}]
    if len({p.size for p in probes}) >= 2:
        sides.append(max_untiled_side(model_ref, levels, budget, probes, verify=verify, method=method, threads=threads))
    sides.extend(planned_max_sides(model, levels, budget))
    return CostReport(str(model_ref), static, runs, sides)


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB"


def cost_rows(report: CostReport) -> dict[str, str]:
    """Metric name -> formatted value, in table order."""
    s = report.static
    rows = {
        "levels": ",".join(map(str, s.levels)),
        "parameters (stored encoders + decoders)": f"{s.parameters:,}",
        "encoder parameters, one per level (paper's count)": f"{s.encoder_parameters_per_level:,}",
        "bytes on disk (used parts)": "-" if s.bytes_on_disk is None else f"{s.bytes_on_disk:,}",
        f"encoder GMACs, all levels @ {s.size}² (paper's 'GFLOPs')": f"{s.encoder_macs / 1e9:,.1f}",
        f"cascade GFLOPs (2·MACs, enc+dec per level) @ {s.size}²": f"{2 * s.macs / 1e9:,.1f}",
    }
    for r in report.runs:
        mode = "tiled" if r.tiled else "untiled"
        best = f", best of {len(r.walls)}" if len(r.walls) > 1 else ""
        rows[f"wall s @ {r.size}², {mode}, {r.threads} threads{best}"] = f"{r.wall_s:.2f}"
        rows[f"peak RSS @ {r.size}², {mode}"] = _gib(r.peak_rss)
    for m in report.max_sides:
        check = f" (verified peak {_gib(m.verified_peak)})" if m.verified_peak else ""
        value = "-" if m.side is None else f"{m.side:,}{check}"
        rows[f"max square side in {_gib(m.budget)}, {m.mode}"] = value
    return rows


def format_cost_table(reports: list[CostReport]) -> str:
    """One Markdown column per model, one row per metric (rows missing for a model show '-')."""
    tables = [cost_rows(r) for r in reports]
    keys = list(dict.fromkeys(k for t in tables for k in t))
    lines = ["| metric | " + " | ".join(r.model for r in reports) + " |", "|---|" + "---:|" * len(reports)]
    lines += [f"| {k} | " + " | ".join(t.get(k, "-") for t in tables) + " |" for k in keys]
    notes = dict.fromkeys(f"{m.mode}: {m.method}" for r in reports for m in r.max_sides)
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes)


def interleaved(runners: Mapping[K, Callable[[], object]], repeats: int,
                progress: Callable[[str], None] | None = None) -> dict[K, list[float]]:
    """Seconds of every runner in each of ``repeats`` rounds, after one warm-up call each.

    Every round runs every runner once, so a machine that slows down mid-run slows them all alike;
    GPU work is synchronised inside each timing."""
    for run in runners.values():
        run()  # warm-up: sessions, oneDNN primitive caches, cuDNN autotuning
    times: dict[K, list[float]] = {key: [] for key in runners}
    for round_index in range(repeats):
        if progress:
            progress(f"round {round_index + 1}/{repeats}")
        for key, run in runners.items():
            _synchronize()
            began = time.perf_counter()
            run()
            _synchronize()
            times[key].append(time.perf_counter() - began)
    return times


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
