"""Ultra-resolution stylization: tiled vs untiled wall time, peak RSS and max abs difference.

Inputs are ``../shared/images/content/in1.jpg`` upscaled to N x N (N = 1024 ... --max-size). Every run
is a fresh subprocess, so its peak RSS (``ru_maxrss``) is its own; results are written as float32
``.npy`` so tiled and untiled outputs can be compared exactly (band by band, at low memory).

    python benchmarks/ultrares.py --max-size 4096            # quick
    nohup python benchmarks/ultrares.py --max-size 16384 &   # the full table (takes a while)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SIZES = (1024, 2048, 4096, 8192, 16384)


def make_input(size: int, source: Path, folder: Path) -> Path:
    """``source`` upscaled (bicubic) to ``size`` x ``size``, cached as a high-quality JPEG."""
    from PIL import Image

    path = folder / f"content_{size}.jpg"
    if not path.exists():
        Image.MAX_IMAGE_PIXELS = None  # we create this image ourselves
        with Image.open(source) as img:
            img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC).save(path, quality=95)
    return path


def worker(args: argparse.Namespace) -> None:
    """Runs in the measured subprocess: one stylization, timing and tiling plan printed as JSON."""
    import torch

    from cdcompress import load, stylize
    from cdcompress.data.images import image_size
    from cdcompress.stylization import as_backend, make_job, plan_tiling

    torch.set_num_threads(args.threads)
    model = load(args.model)
    levels = tuple(int(k) for k in args.levels.split(","))
    tile: int | None = 0 if args.tile == "0" else None if args.tile == "auto" else int(args.tile)
    job = make_job(as_backend(model), "wct", levels, 1.0)
    size = image_size(args.content)
    if tile is None and plan_tiling(job, *size, (512, 512), None, args.max_memory, None) is None:
        # The budget fits this image untiled; force tiles of the size the budget gives huge images.
        plan = plan_tiling(job, 16384, 16384, (512, 512), None, args.max_memory, None)
        assert plan is not None
        tile = min(plan.tiles.values())
    cache = None if args.cache == "auto" else args.cache == "on"
    plan = plan_tiling(job, *size, (512, 512), tile, args.max_memory, cache)
    start = time.perf_counter()
    stylize(model, args.content, args.style, levels=levels, tile=tile, max_memory=args.max_memory, out=args.out,
            workdir=args.workdir, cache_features=cache)
    print(json.dumps({"seconds": time.perf_counter() - start, "plan": plan.describe() if plan else "untiled"}))


def measure(args: argparse.Namespace, content: Path, out: Path, tile: str) -> dict:
    """Run one stylization in a subprocess; wall time from inside it, peak RSS from the kernel."""
    cmd = [sys.executable, __file__, "--worker", "--model", str(args.model), "--content", str(content),
           "--style", str(args.style), "--levels", args.levels, "--out", str(out), "--threads", str(args.threads),
           "--workdir", str(args.workdir), "--cache", args.cache, "--max-memory", args.max_memory]
    cmd += ["--tile", str(tile)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}"}
    result = json.loads(output.strip().splitlines()[-1])
    result["peak_rss"] = usage.ru_maxrss * 1024  # Linux reports KiB
    return result


def max_abs_diff(a: Path, b: Path, rows: int = 512) -> float:
    x, y = np.load(a, mmap_mode="r"), np.load(b, mmap_mode="r")
    return max(float(np.abs(x[i : i + rows] - y[i : i + rows]).max()) for i in range(0, x.shape[0], rows))


def convert_release(folder: Path) -> Path:
    from cdcompress.models import convert_cd_release, save

    path = folder / "cd16x"
    if not path.exists():
        save(convert_cd_release(SHARED / "reference" / "cd16x"), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help="model directory (default: convert ../shared/reference/cd16x)")
    parser.add_argument("--content", type=Path, default=SHARED / "images/content/in1.jpg")
    parser.add_argument("--style", type=Path, default=SHARED / "images/style/in3.jpg")
    parser.add_argument("--levels", default="5,4,3,2,1")
    parser.add_argument("--max-size", type=int, default=4096, help="largest N (from 1024, 2048, ..., 16384)")
    parser.add_argument("--min-size", type=int, default=1024)
    parser.add_argument("--sizes", default=None, help="explicit comma-separated sizes instead of the powers of two")
    parser.add_argument("--untiled-max", type=int, default=4096, help="largest N also run untiled")
    parser.add_argument("--tile", default="1024", help="tile for tiled runs at sizes also run untiled (or auto)")
    parser.add_argument("--large-tile", default="auto", help="tile above --untiled-max: auto (from --max-memory) or px")
    parser.add_argument("--max-memory", default="4GiB", help="budget that picks the tile when --tile is not given")
    parser.add_argument("--cache", choices=["auto", "on", "off"], default="auto", help="pass-1 feature cache")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "cdcompress-ultrares")
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    args.workdir.mkdir(parents=True, exist_ok=True)
    args.model = args.model or convert_release(args.workdir)
    print(f"<!-- {datetime.date.today()} {platform.node()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, {args.threads} threads; model {args.model}; style {args.style.name}; "
          f"levels {args.levels}; tile {args.tile} up to {args.untiled_max}², {args.large_tile} above "
          f"(max memory {args.max_memory}); cache {args.cache} -->")
    print("| size | Mpx | mode | wall s | s/Mpx | peak RSS GiB | max abs diff |")
    print("|---|---|---|---|---|---|---|", flush=True)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else [s for s in SIZES if args.min_size <= s <= args.max_size]
    for size in sizes:
        content = make_input(size, args.content, args.workdir)
        mpx = size * size / 1e6
        outputs = {}
        both = size <= args.untiled_max
        runs = [("untiled", "0"), ("tiled", args.tile)] if both else [("tiled", args.large_tile)]
        for mode, tile in runs:
            outputs[mode] = args.workdir / f"out_{size}_{mode}.npy"
            result = measure(args, content, outputs[mode], tile)
            if "error" in result:
                print(f"| {size}² | {mpx:.1f} | {mode} | {result['error']} | | | |", flush=True)
                outputs.pop(mode)
                continue
            diff = ""
            if mode == "tiled" and "untiled" in outputs:
                diff = f"{max_abs_diff(outputs['untiled'], outputs['tiled']):.1e}"
            print(f"| {size}² | {mpx:.1f} | {result['plan']} | {result['seconds']:.1f} | {result['seconds'] / mpx:.2f} | "
                  f"{result['peak_rss'] / 2**30:.2f} | {diff} |", flush=True)
        for path in outputs.values():
            path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
