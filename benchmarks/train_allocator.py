"""Training on CPU with and without the retained heap: steps/s, page faults and kernel time of one stage.

Each repeat runs the same stage-2 fit (a VGG-19 level-``--level`` teacher with its decoder, random
weights, slimmed to 1/4; batch 4 of ``--crop``² crops of scikit-image's photos) once with
``CDCOMPRESS_RETAIN_HEAP=0`` (glibc's defaults: freed activations are unmapped and faulted in again)
and once retained, alternating so both see the same machine load. Prints a Markdown table.

    python benchmarks/train_allocator.py                 # level 2, 40 steps, 3 repeats, 2 threads
    python benchmarks/train_allocator.py --steps 5 --repeats 1 --crop 64   # quick
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from cdcompress.core.allocator import ENV_SWITCH, retain_supported
from cdcompress.data.batches import CropSampler, skimage_photos
from cdcompress.distill import TrainConfig, apply
from cdcompress.models import teacher_architecture


def one_fit(level: int, steps: int, crop: int, photos: list[Path], retained: bool) -> dict[str, float]:
    os.environ[ENV_SWITCH] = "1" if retained else "0"
    torch.manual_seed(0)
    teacher = teacher_architecture(levels=(level,))
    distiller = apply(teacher.encoder(level), teacher.decoders[level], slim=0.25, taps="auto", lambda_p=1.0)
    data = CropSampler(photos, batch_size=4, resize=crop + crop // 4, crop=crop, seed=0)
    usage0, began = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    distiller.fit(data, TrainConfig(steps=steps, lr=1e-4, log_every=steps))
    usage1, seconds = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - began
    return {"steps_per_s": steps / seconds, "faults": usage1.ru_minflt - usage0.ru_minflt,
            "kernel_s": usage1.ru_stime - usage0.ru_stime, "user_s": usage1.ru_utime - usage0.ru_utime}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--level", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if not retain_supported():
        raise SystemExit("the retained heap needs glibc (Linux); nothing to compare here")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        photos = skimage_photos(Path(scratch))
        one_fit(args.level, 2, args.crop, photos, True)  # warm-up: lazy initialisation is not the point
        runs: dict[str, list[dict[str, float]]] = {"glibc defaults": [], "retained heap": []}
        for _ in range(args.repeats):
            for name in runs:
                runs[name].append(one_fit(args.level, args.steps, args.crop, photos, name == "retained heap"))
    print(f"<!-- {datetime.datetime.now():%Y-%m-%d %H:%M}, {platform.machine()} {os.cpu_count()} CPUs, "
          f"{args.threads} threads, torch {torch.__version__}; command: python benchmarks/train_allocator.py "
          f"{shlex.join(argv)} -->")
    print(f"| stage 2, VGG-19 level {args.level} -> 1/4, batch 4 at {args.crop}², {args.steps} steps | steps/s (median) "
          "| page faults | kernel s | user s |")
    print("|---|---:|---:|---:|---:|")
    for name, rows in runs.items():
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(f"| {name} | {med['steps_per_s']:.2f} | {med['faults']:,.0f} | {med['kernel_s']:.1f} | {med['user_s']:.1f} |")
    plain, kept = (statistics.median(r["steps_per_s"] for r in runs[k]) for k in runs)
    print(f"\nspeed-up from the retained heap: {kept / plain:.2f}x")


if __name__ == "__main__":
    main(sys.argv[1:])
