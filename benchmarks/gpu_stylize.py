"""Teacher vs 16x student on a CUDA GPU: five-level WCT time, GPU memory, and the largest untiled
square that fits a GPU memory cap (the paper's headline: 3000² -> 6000² on a 12 GB GPU).

For each model and network precision, untiled stylizations of random images at ``--sizes`` give the
wall time (fastest of ``--repeats`` after a warm-up) and the peak GPU memory. The whole cascade is
device-resident (features, statistics, WCT maps and intermediate images stay on the GPU; only the
result comes back). Peak GPU memory is linear in pixels, so a fit through the measured fp32 squares
predicts the largest side within ``--gpu-memory``; ``--measure-max`` then bisects the side that
really runs under a hard cap (``set_per_process_memory_fraction``; the caching allocator's
fragmentation and cuDNN workspaces make it smaller than the fit). ``--device cpu`` runs the same
table on the CPU (no memory columns), which keeps the script tested on machines without a GPU.

    python benchmarks/gpu_stylize.py                      # needs a CUDA GPU; 1024², 2048², 4096x2160; fp32 and fp16
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
from cdcompress.models.resolve import resolve_model
from cdcompress.stylization import TorchBackend, stylize
from cdcompress.stylization.tiling import parse_memory

REPO = Path(__file__).resolve().parents[1]
RELEASE = REPO.parent / "shared" / "reference" / "cd16x"
LEVELS = [5, 4, 3, 2, 1]
STYLE_SIZE = 256


@dataclass
class Result:
    name: str
    precision: str
    times: dict[Size, float] = field(default_factory=dict)
    peaks: dict[Size, int | None] = field(default_factory=dict)
    max_side: int | None = None
    measured_side: int | None = None


def student_ref(workdir: Path) -> tuple[str, str]:
    if (RELEASE / "se5.pth").is_file():
        return "16x student (released)", str(save(convert_cd_release(RELEASE), workdir / "cd16x"))
    return "16x student (random vgg19-x0.25)", "vgg19-x0.25"


Size = tuple[int, int]


def parse_sizes(text: str) -> list[Size]:
    """``1024,4096x2160`` -> [(1024, 1024), (2160, 4096)] (``WxH``, as screen resolutions are written)."""
    sizes = []
    for item in text.split(","):
        width, _, height = item.strip().partition("x")
        sizes.append((int(height or width), int(width)))
    return sizes


def label(size: Size) -> str:
    height, width = size
    return f"{width}²" if height == width else f"{width}x{height}"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_once(backend: TorchBackend, size: Size) -> tuple[float, int | None]:
    """Wall time (device work included) and peak GPU bytes (None on CPU) of one untiled stylization."""
    gen = torch.Generator().manual_seed(sum(size))
    content = torch.rand(1, 3, *size, generator=gen)
    style = torch.rand(1, 3, STYLE_SIZE, STYLE_SIZE, generator=gen)
    cuda = backend.device.type == "cuda"
    synchronize(backend.device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    stylize(backend, content, style, levels=LEVELS, tile=0)
    synchronize(backend.device)
    return time.perf_counter() - start, torch.cuda.max_memory_allocated() if cuda else None


def fits(backend: TorchBackend, side: int) -> bool:
    try:
        run_once(backend, (side, side))
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
    """Largest square side (16-px steps) under ``budget`` from a line through the smallest and largest runs
    (keys are pixel counts)."""
    if len(peaks) < 2:
        return None
    (n1, p1), (n2, p2) = sorted(peaks.items())[:1] + sorted(peaks.items())[-1:]
    per_pixel = (p2 - p1) / (n2 - n1)
    if per_pixel <= 0:
        return None
    base = p1 - per_pixel * n1
    return int(math.sqrt(max(0.0, budget - base) / per_pixel)) // 16 * 16


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


def measure(name: str, ref: str, sizes: list[Size], repeats: int, budget: int, measure_max: bool, device: str,
            precision: str) -> Result:
    model, _ = resolve_model(ref)
    backend = TorchBackend(model, device=device, precision=precision)
    result = Result(name, precision)
    run_once(backend, min(sizes))  # warm-up: cuDNN autotuning and lazy initialisation
    for size in sizes:
        walls, peak = [], None
        for _ in range(repeats):
            wall, peak = run_once(backend, size)
            walls.append(wall)
        result.times[size], result.peaks[size] = min(walls), peak
        memory = f", peak GPU {peak / 2**30:.2f} GiB" if peak is not None else ""
        print(f"  {name} {precision} {label(size)}: {min(walls) * 1000:.1f} ms{memory}", file=sys.stderr)
    squares = {h * w: p for (h, w), p in result.peaks.items() if h == w and p is not None}
    if precision == "fp32":
        result.max_side = predict_side(squares, budget)
        if measure_max and result.max_side:
            result.measured_side = bisect_max_side(backend, budget, result.max_side)
    del backend, model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def table(results: list[Result], sizes: list[Size], budget: int) -> str:
    rows = ["| five-level WCT, untiled | precision | VGG-19 teacher | 16x student | teacher / student |",
            "|---|---|---:|---:|---:|"]
    pairs = [(results[i], results[i + 1]) for i in range(0, len(results), 2)]
    for teacher, student in pairs:
        for size in sizes:
            rows.append(f"| {label(size)}, ms | {teacher.precision} | {teacher.times[size] * 1000:.1f} | "
                        f"{student.times[size] * 1000:.1f} | **{teacher.times[size] / student.times[size]:.2f}x** |")
    for teacher, student in pairs:
        for size in sizes:
            tp, sp = teacher.peaks[size], student.peaks[size]
            if tp is not None and sp is not None:
                rows.append(f"| {label(size)}, peak GPU memory GiB | {teacher.precision} | {tp / 2**30:.2f} | "
                            f"{sp / 2**30:.2f} | {tp / sp:.2f}x |")
    teacher, student = pairs[0]
    gib = f"{budget / 2**30:g} GiB"
    for text, ts, ss in ((f"max untiled side in {gib} GPU, linear fit of the peaks", teacher.max_side, student.max_side),
                         (f"max untiled side under a hard {gib} cap (bisection)", teacher.measured_side,
                          student.measured_side)):
        if ts or ss:
            ratio = f"{ss / ts:.2f}x side" if ts and ss else "-"
            rows.append(f"| {text} | {teacher.precision} | {ts or '-'}² | {ss or '-'}² | {ratio} |")
    return "\n".join(rows)


def target_check(results: list[Result], size: Size = (2160, 4096)) -> str:
    """The issue's GPU target: student five-level WCT at 4096x2160 within 100 ms and >= 8x the teacher."""
    lines = []
    for teacher, student in ((results[i], results[i + 1]) for i in range(0, len(results), 2)):
        if size in student.times:
            ms, ratio = student.times[size] * 1000, teacher.times[size] / student.times[size]
            verdict = "met" if ms <= 100 and ratio >= 8 else "NOT met"
            lines.append(f"- {student.precision}: student {ms:.1f} ms at {label(size)}, {ratio:.2f}x the teacher: "
                         f"target (<= 100 ms, >= 8x) {verdict}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="vgg19", help="teacher model (directory or built-in; random weights are fine)")
    parser.add_argument("--student", default=None, help="student model [the released cd16x, converted]")
    parser.add_argument("--sizes", default="1024,2048,4096x2160",
                        help="timed sizes, N (square) or WxH; the memory fit uses the smallest and largest squares")
    parser.add_argument("--precisions", default="fp32,fp16", help="network precisions to time (fp32, fp16, bf16)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda", help="cuda (the benchmark) or cpu (a smoke run of the script)")
    parser.add_argument("--gpu-memory", default="12GiB", help="GPU memory cap for the max-resolution rows")
    parser.add_argument("--measure-max", action="store_true",
                        help="bisect the largest side that runs under a hard --gpu-memory cap (16 px steps)")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("error: this benchmark needs a CUDA GPU (torch.cuda.is_available() is False); --device cpu runs it "
                 "on the CPU")
    sizes = parse_sizes(args.sizes)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    budget = parse_memory(args.gpu_memory)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        name, ref = ("16x student", args.student) if args.student else student_ref(Path(tmp))
        for precision in precisions:
            results += [measure("VGG-19 teacher", args.teacher, sizes, args.repeats, budget, args.measure_max,
                                args.device, precision),
                        measure(name, ref, sizes, args.repeats, budget, args.measure_max, args.device, precision)]
    if args.device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        where = (f"{props.name}, {props.total_memory / 2**30:.0f} GiB, TF32 convolutions "
                 f"{'on' if torch.backends.cudnn.allow_tf32 else 'off'}")
    else:
        where = f"CPU, {torch.get_num_threads()} threads"
    print(f"<!-- {datetime.date.today()}: {where}, torch {torch.__version__} -->")
    print(f"<!-- command: python benchmarks/gpu_stylize.py {' '.join(sys.argv[1:])} -->")
    print(table(results, sizes, budget))
    print(target_check(results))


if __name__ == "__main__":
    main()
