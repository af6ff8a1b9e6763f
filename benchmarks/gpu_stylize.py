"""Teacher vs 16x student on a CUDA GPU: five-level WCT time, GPU memory, and the largest untiled
square that fits a GPU memory cap (the paper's headline: 3000² -> 6000² on a 12 GB GPU).

For each model, untiled stylizations of random images at ``--sizes`` give the wall time (fastest of
``--repeats`` after a warm-up) and the peak GPU memory. Peak GPU memory is linear in pixels (the
pipeline keeps one encoder or decoder forward on the GPU; statistics and the WCT map live on the
host), so a fit through the measured sizes predicts the largest side within ``--gpu-memory``;
``--measure-max`` then bisects the side that really runs under a hard cap
(``set_per_process_memory_fraction``; the caching allocator's fragmentation and cuDNN workspaces
make it smaller than the fit).

    python benchmarks/gpu_stylize.py                      # needs a CUDA GPU
    python benchmarks/gpu_stylize.py --measure-max --gpu-memory 12GiB
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cdcompress.models import convert_cd_release, save
from cdcompress.models.registry import resolve_model
from cdcompress.stylize import TorchBackend, stylize
from cdcompress.stylize.tiling import parse_memory

REPO = Path(__file__).resolve().parents[1]
RELEASE = REPO.parent / "shared" / "reference" / "cd16x"
LEVELS = [5, 4, 3, 2, 1]
STYLE_SIZE = 256


@dataclass
class Result:
    name: str
    times: dict[int, float] = field(default_factory=dict)
    peaks: dict[int, int] = field(default_factory=dict)
    max_side: int | None = None
    measured_side: int | None = None


def student_ref(workdir: Path) -> tuple[str, str]:
    if (RELEASE / "se5.pth").is_file():
        return "16x student (released)", str(save(convert_cd_release(RELEASE), workdir / "cd16x"))
    return "16x student (random vgg19-x0.25)", "vgg19-x0.25"


def run_once(backend: TorchBackend, side: int) -> tuple[float, int]:
    """Wall time (GPU work included) and peak GPU bytes of one untiled stylization."""
    gen = torch.Generator().manual_seed(side)
    content = torch.rand(1, 3, side, side, generator=gen)
    style = torch.rand(1, 3, STYLE_SIZE, STYLE_SIZE, generator=gen)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    stylize(backend, content, style, levels=LEVELS, tile=0)
    torch.cuda.synchronize()
    return time.perf_counter() - start, torch.cuda.max_memory_allocated()


def fits(backend: TorchBackend, side: int) -> bool:
    try:
        run_once(backend, side)
        return True
    except torch.OutOfMemoryError:
        return False
    except RuntimeError as exc:  # cuDNN reports a failed workspace allocation its own way
        if "memory" in str(exc).lower() or "CUDNN_STATUS_ALLOC" in str(exc):
            return False
        raise
    finally:
        torch.cuda.empty_cache()


def predict_side(peaks: dict[int, int], budget: int) -> int | None:
    (s1, p1), (s2, p2) = sorted(peaks.items())[:1] + sorted(peaks.items())[-1:]
    per_pixel = (p2 - p1) / (s2 * s2 - s1 * s1)
    if per_pixel <= 0:
        return None
    base = p1 - per_pixel * s1 * s1
    return int(math.sqrt((budget - base) / per_pixel)) // 16 * 16


def bisect_max_side(backend: TorchBackend, budget: int, guess: int, step: int = 16) -> int:
    """Largest multiple of ``step`` that stylizes under a hard GPU cap of ``budget`` bytes."""
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total))
    try:
        lo, hi = guess * 3 // 5 // step, guess * 5 // 4 // step  # in steps; lo fits, hi does not (checked)
        if not fits(backend, lo * step):
            return 0
        while fits(backend, hi * step):
            lo, hi = hi, hi * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(backend, mid * step) else (lo, mid)
            print(f"    bisect: {lo * step}² fits, {hi * step}² does not", file=sys.stderr)
        return lo * step
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)


def measure(name: str, ref: str, sizes: list[int], repeats: int, budget: int, measure_max: bool) -> Result:
    model, _ = resolve_model(ref)
    backend = TorchBackend(model, device="cuda")
    result = Result(name)
    run_once(backend, min(sizes))  # warm-up: cuDNN autotuning and lazy initialisation
    for side in sizes:
        walls, peak = [], 0
        for _ in range(repeats):
            wall, peak = run_once(backend, side)
            walls.append(wall)
        result.times[side], result.peaks[side] = min(walls), peak
        print(f"  {name} {side}²: {min(walls):.3f} s, peak GPU {peak / 2**30:.2f} GiB", file=sys.stderr)
    result.max_side = predict_side(result.peaks, budget)
    if measure_max and result.max_side:
        result.measured_side = bisect_max_side(backend, budget, result.max_side)
    del backend, model
    torch.cuda.empty_cache()
    return result


def table(results: list[Result], sizes: list[int], budget: int) -> str:
    teacher, student = results
    rows = ["| | " + " | ".join(r.name for r in results) + " | teacher / student |", "|---|---|---|---|"]
    for side in sizes:
        rows.append(f"| WCT 5 levels @ {side}², s | {teacher.times[side]:.3f} | {student.times[side]:.3f} | "
                    f"**{teacher.times[side] / student.times[side]:.2f}x** |")
    for side in sizes:
        rows.append(f"| peak GPU memory @ {side}², GiB | {teacher.peaks[side] / 2**30:.2f} | "
                    f"{student.peaks[side] / 2**30:.2f} | {teacher.peaks[side] / student.peaks[side]:.2f}x |")
    gib = f"{budget / 2**30:g} GiB"
    for label, ts, ss in ((f"max untiled side in {gib} GPU, linear fit of the peaks", teacher.max_side, student.max_side),
                          (f"max untiled side under a hard {gib} cap (bisection)", teacher.measured_side,
                           student.measured_side)):
        ratio = f"{ss / ts:.2f}x side" if ts and ss else "-"
        rows.append(f"| {label} | {ts or '-'}² | {ss or '-'}² | {ratio} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="vgg19", help="teacher model (directory or built-in; random weights are fine)")
    parser.add_argument("--student", default=None, help="student model [the released cd16x, converted]")
    parser.add_argument("--sizes", default="1024,2048", help="timed square sides (the fit uses the smallest and largest)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gpu-memory", default="12GiB", help="GPU memory cap for the max-resolution column")
    parser.add_argument("--measure-max", action="store_true",
                        help="bisect the largest side that runs under a hard --gpu-memory cap (16 px steps)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: this benchmark needs a CUDA GPU (torch.cuda.is_available() is False)")
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    if len(sizes) < 2:
        sys.exit("error: --sizes needs at least two sides (the memory fit is a line through two points)")
    budget = parse_memory(args.gpu_memory)
    with tempfile.TemporaryDirectory() as tmp:
        name, ref = ("16x student", args.student) if args.student else student_ref(Path(tmp))
        results = [measure("VGG-19 teacher", args.teacher, sizes, args.repeats, budget, args.measure_max),
                   measure(name, ref, sizes, args.repeats, budget, args.measure_max)]
    props = torch.cuda.get_device_properties(0)
    print(f"<!-- {datetime.date.today()}: {props.name}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, "
          f"TF32 convolutions {'on' if torch.backends.cudnn.allow_tf32 else 'off'} -->")
    print(f"<!-- command: python benchmarks/gpu_stylize.py {' '.join(sys.argv[1:])} -->")
    print(table(results, sizes, budget))


if __name__ == "__main__":
    main()
