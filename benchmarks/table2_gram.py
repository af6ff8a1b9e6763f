"""Paper Table 2 analogue: Gram-matrix style distance per Conv level, teacher vs compressed students.

Every model stylizes every (content, style) pair with single-level WCT at ``--level`` (default 3,
where the ``cd16x_half`` experiment trains half-width students of the released SE3/SD3). All
results are measured by one fixed evaluation encoder (default: the released SE5, relu1_1..relu5_1
taps, which is none of the compared encoders). Distance per paper Eq. 7: the mean over pairs of
``||G(result) - G(style)||_F^2`` with ``G = F Fᵀ / (C·H·W)`` in float64. The second table gives each
student's distance relative to the teacher's (closer to 0% = stylizes more like the original).

    python benchmarks/table2_gram.py --student "CD=runs/cd16x_half_experiment/cd_seed0/student" \\
        --student "prune-only=runs/cd16x_half_experiment/prune-only_seed0/student"
    python benchmarks/table2_gram.py --quick          # 256 px long side
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
from pathlib import Path

import torch

from cdcompress.evaluation.evaluate import image_files, mean_style, style_evaluation
from cdcompress.evaluation.gram import evaluation_encoder
from cdcompress.models import convert_cd_release
from cdcompress.models.resolve import resolve_model

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
RUNS = REPO / "runs" / "cd16x_half_experiment"
DEFAULT_STUDENTS = {"CD (half width)": RUNS / "cd_seed0" / "student",
                    "prune-only (half width)": RUNS / "prune-only_seed0" / "student"}


def parse_students(items: list[str]) -> dict[str, Path]:
    """``NAME=DIR`` pairs; without any, the experiment's default run directories that exist."""
    if not items:
        found = {name: path for name, path in DEFAULT_STUDENTS.items() if (path / "model.json").is_file()}
        for name, path in DEFAULT_STUDENTS.items():
            if name not in found:
                print(f"<!-- {name}: {path} not found, skipped -->")
        return found
    students = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"--student {item!r}: expected NAME=DIR")
        if not (Path(path) / "model.json").is_file():
            raise SystemExit(f"--student {item!r}: {path} is not a model directory (no model.json); run the experiment first")
        students[name] = Path(path)
    return students


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", type=Path, default=SHARED / "reference" / "cd16x", help="released se*/sd* folder")
    parser.add_argument("--student", action="append", default=[], help="NAME=MODEL_DIR (repeatable)")
    parser.add_argument("--eval-encoder", default=None, help="ruler model [the release's deepest encoder, SE5]")
    parser.add_argument("--content", type=Path, default=SHARED / "images" / "content")
    parser.add_argument("--style", type=Path, default=SHARED / "images" / "style")
    parser.add_argument("--level", type=int, default=3, help="single WCT level every model stylizes at")
    parser.add_argument("--gram-levels", default="1,2,3,4,5")
    parser.add_argument("--max-side", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="--max-side 256")
    args = parser.parse_args()
    if args.quick:
        args.max_side = 256
    torch.set_num_threads(args.threads)
    gram_levels = [int(k) for k in args.gram_levels.split(",")]
    ruler_model = resolve_model(args.eval_encoder)[0] if args.eval_encoder else convert_cd_release(args.release)
    ruler = evaluation_encoder(ruler_model)
    models = {f"teacher (released SE{args.level}/SD{args.level})": convert_cd_release(args.release, levels=(args.level,))}
    models.update({name: resolve_model(path)[0] for name, path in parse_students(args.student).items()})
    contents, styles = image_files(args.content, "--content"), image_files(args.style, "--style")
    means = {}
    for name, model in models.items():
        results = style_evaluation(model, contents, styles, ruler, levels=[args.level], max_side=args.max_side,
                                   gram_levels=gram_levels)
        means[name] = mean_style(results)
    keys = [f"conv{k}" for k in gram_levels]
    ruler_name = args.eval_encoder or f"released SE{ruler.spec.level} ({args.release})"
    print(f"<!-- {datetime.date.today()}, {platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}; "
          f"{len(contents)}x{len(styles)} pairs, long side {args.max_side}, WCT level {args.level}, ruler {ruler_name}; "
          f"command: python benchmarks/{Path(__file__).name} {shlex.join(sys.argv[1:])} -->")
    print("| model | " + " | ".join(f"Gram {k}" for k in keys) + " | content dist |")
    print("|---|" + "---:|" * (len(keys) + 1))
    for name, m in means.items():
        print(f"| {name} | " + " | ".join(f"{m[k]:.4g}" for k in keys) + f" | {m['content']:.4g} |")
    teacher = next(iter(means.values()))
    print("\n| relative to the teacher | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for name, m in list(means.items())[1:]:
        print(f"| {name} | " + " | ".join(f"{100 * (m[k] - teacher[k]) / teacher[k]:+.1f}%" for k in keys) + " |")


if __name__ == "__main__":
    main()
