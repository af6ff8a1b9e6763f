"""Paper Table 3 analogue: the VGG-19 teacher vs the 16x student, cost of a five-level WCT.

Parameters, bytes on disk, MACs at ``--size``² (the paper's "GFLOPs" are encoder MACs summed over
the five per-level encoders, which this reproduces to 0.01%), CPU wall time at ``--time-size``²
with ``--threads`` threads, peak RSS, and the largest square within ``--max-memory`` untiled (linear
fit of measured peak RSS, optionally verified) and tiled (the pipeline's memory model). Every
measured run is a fresh subprocess on random inputs (the teacher has random weights: cost only).

    python benchmarks/table3_cost.py                 # full: 1024² timings, untiled and tiled
    python benchmarks/table3_cost.py --quick         # 512² untiled timing, peak-RSS probes 384/512

The speed ratio is reported twice: from each model's best wall time (measured minutes apart), and
as the median over ``--pairs`` rounds of student, teacher, student run back to back in one process
(robust to a shared machine whose speed drifts while the teacher's long runs go on).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import tempfile
from pathlib import Path

import torch

from cdcompress.cost.measure import CostReport, PairedTiming, cost_report, format_cost_table, measure_pairs
from cdcompress.models import convert_cd_release, save
from cdcompress.stylization.tiling import parse_memory

REPO = Path(__file__).resolve().parents[1]
RELEASE = REPO.parent / "shared" / "reference" / "cd16x"
LEVELS = [5, 4, 3, 2, 1]
PAPER = ("paper (Table 3): 17.1M vs 1.1M parameters, 66.6 MB vs 5.2 MB, 6961.7 vs 451.6 GFLOPs at 3000², "
         "CPU 937.7 s vs 366.0 s (2.6x) at 3000²")


def student_ref(arg: str | None, workdir: Path) -> str:
    """The released 16x students converted to a model directory, or the random 1/4-width built-in."""
    if arg:
        return arg
    if (RELEASE / "se5.pth").is_file():
        return str(save(convert_cd_release(RELEASE), workdir / "cd16x"))
    print(f"<!-- {RELEASE} not found: using the random built-in vgg19-x0.25 (same architecture) -->")
    return "vgg19-x0.25"


def paired_rows(pairs: list[PairedTiming]) -> list[str]:
    rows = []
    for p in pairs:
        mode = "tiled" if p.tiled else "untiled"
        each = ", ".join(f"{r:.2f}" for r in p.ratios)
        rows.append(f"| teacher / student: wall time @ {p.size}², {mode}, interleaved pairs (median; each: {each}) "
                    f"| **{p.median_ratio:.2f}x** |")
    return rows


def ratio_rows(teacher: CostReport, student: CostReport) -> list[str]:
    t, s = teacher.static, student.static
    rows = [f"| teacher / student: encoder parameters | {t.encoder_parameters_per_level / s.encoder_parameters_per_level:.1f}x |",
            f"| teacher / student: encoder MACs | {t.encoder_macs / s.encoder_macs:.1f}x |",
            f"| teacher / student: cascade MACs | {t.macs / s.macs:.1f}x |"]
    for rt, rs in zip(teacher.runs, student.runs, strict=False):
        mode = "tiled" if rt.tiled else "untiled"
        rows.append(f"| teacher / student: wall time @ {rt.size}², {mode}, best of each | {rt.wall_s / rs.wall_s:.2f}x |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="vgg19", help="teacher model (directory or built-in)")
    parser.add_argument("--student", default=None, help="student model [the released cd16x, converted]")
    parser.add_argument("--size", type=int, default=3000)
    parser.add_argument("--time-size", type=int, default=1024)
    parser.add_argument("--tile", type=int, default=512, help="tile of the timed tiled run (0: skip it)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-memory", default="8GiB")
    parser.add_argument("--probe-sizes", default="512", help="extra untiled sizes for the peak-RSS fit")
    parser.add_argument("--verify", action="store_true", help="run once at each predicted untiled limit")
    parser.add_argument("--repeats", type=int, default=3, help="timed stylizations per run, fastest kept")
    parser.add_argument("--pairs", type=int, default=3,
                        help="rounds of interleaved student/teacher/student timings for the speed ratio (0: skip)")
    parser.add_argument("--quick", action="store_true", help="--time-size 512 --tile 0 --probe-sizes 384")
    args = parser.parse_args()
    if args.quick:
        args.time_size, args.tile, args.probe_sizes = 512, 0, "384"
    probes = tuple(int(p) for p in args.probe_sizes.split(",") if p.strip())
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        student = student_ref(args.student, Path(tmp))
        reports = [cost_report(ref, LEVELS, size=args.size, time_size=args.time_size, tile=args.tile,
                               threads=args.threads, budget=parse_memory(args.max_memory), probe_sizes=probes,
                               verify=args.verify, repeats=args.repeats) for ref in (args.teacher, student)]
        tiles = [0, args.tile] if args.tile else [0]
        pairs = [measure_pairs(args.teacher, student, args.time_size, LEVELS, rounds=args.pairs, tile=tile,
                               threads=args.threads) for tile in tiles] if args.pairs and args.time_size else []
    reports[1].model = "16x student" if student != "vgg19-x0.25" else student
    reports[0].model = f"teacher {args.teacher}"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"<!-- {datetime.date.today()}, {platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"1-min load {load:.1f}; command: python benchmarks/{Path(__file__).name} {shlex.join(sys.argv[1:])} -->")
    print(format_cost_table(reports))
    print()
    print("| ratio | value |\n|---|---:|")
    print("\n".join(ratio_rows(*reports)))
    print("\n".join(paired_rows(pairs)))
    print(f"\n{PAPER}")


if __name__ == "__main__":
    main()
