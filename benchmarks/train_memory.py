"""Resident memory over a long training run: does anything accumulate step after step?

Runs the real CLI (``cdcompress distill``) on a small level-2 recipe whose distill stage takes
``--steps`` steps (checkpoints, sample grids and metrics written as usual), samples the child's
resident set size (``VmRSS``) from /proc every ``--interval`` seconds and matches each sample to the
training step the run had logged. Prints RSS every ``--every`` steps and the growth after warm-up,
against a stated bound; writes ``train_memory.png`` (RSS vs step) and ``train_memory.json``.

    python benchmarks/train_memory.py                    # 2000 distill steps (~10 min on 2 cores)
    python benchmarks/train_memory.py --steps 300        # quick look
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
import textwrap
import time
from pathlib import Path

RECIPE = """
name: train_memory
levels: [2]
teacher: {{source: builtin, path: vgg19, pretrained: none}}
collaborator: {{source: train}}
student: {{width: 0.25}}
objective: {{lambda_p: 0.1}}
data: {{train: [skimage], eval: [skimage-heldout], resize: 48, crop: 32, eval_size: 64}}
stages:
  collaborator: {{steps: 20, batch: 4, lr: 1.0e-3}}
  distill: {{steps: {steps}, batch: 4, lr: 1.0e-3}}
  decoder: {{steps: 20, batch: 4, lr: 1.0e-3}}
output: {{checkpoint_every: 200, sample_every: 200, log_every: 10}}
"""


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def last_step(metrics: Path) -> tuple[str, int] | None:
    """(stage, step) of the newest metrics record, or None before the first one."""
    if not metrics.is_file():
        return None
    lines = metrics.read_text().splitlines()
    for line in reversed(lines):
        try:
            record = json.loads(line)
            return str(record["stage"]), int(record["step"])
        except (ValueError, KeyError):
            continue  # a line being written right now
    return None


def run(args: argparse.Namespace, workdir: Path) -> tuple[list[tuple[float, int, int]], int]:
    """Samples (seconds, distill step, rss) while the distill stage runs; returns them and the exit code."""
    recipe = workdir / "recipe.yaml"
    recipe.write_text(textwrap.dedent(RECIPE.format(steps=args.steps)))
    out = workdir / "run"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, "-m", "cdcompress", "distill", "--recipe", str(recipe), "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples: list[tuple[float, int, int]] = []
    start = time.perf_counter()
    while proc.poll() is None:
        rss, where = rss_bytes(proc.pid), last_step(out / "metrics.jsonl")
        if rss is not None and where is not None and where[0].startswith("distill"):
            samples.append((time.perf_counter() - start, where[1], rss))
        time.sleep(args.interval)
    if proc.returncode != 0:
        print(proc.stderr.read() if proc.stderr else "", file=sys.stderr)
    return samples, proc.returncode


def table(samples: list[tuple[float, int, int]], every: int, warmup: int) -> tuple[str, float, float]:
    """Markdown rows at each ``every`` steps (the largest RSS seen at that step) and the growth figures."""
    peak_at: dict[int, int] = {}
    for _, step, rss in samples:
        peak_at[step] = max(rss, peak_at.get(step, 0))
    steps = sorted(peak_at)
    base_step = min((s for s in steps if s >= warmup), default=steps[0])
    base = peak_at[base_step]
    rows = [f"| distill step | RSS MiB | change since step {base_step} |", "|---:|---:|---:|"]
    for step in steps:
        if step % every == 0 or step == steps[-1]:
            rows.append(f"| {step} | {peak_at[step] / 2**20:.1f} | {(peak_at[step] - base) / 2**20:+.1f} MiB |")
    after = [rss for step, rss in peak_at.items() if step >= base_step]
    growth = (max(after) - base) / 2**20
    end_growth = (peak_at[steps[-1]] - base) / 2**20
    return "\n".join(rows), growth, end_growth


def plot(samples: list[tuple[float, int, int]], path: Path, bound: float, warmup: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([s for _, s, _ in samples], [r / 2**20 for _, _, r in samples], lw=1)
    ax.axvline(warmup, color="grey", ls=":", lw=1)
    ax.set_xlabel("distill step")
    ax.set_ylabel("resident memory (MiB)")
    ax.set_title(f"RSS of `cdcompress distill` (bound: +{bound:.0f} MiB after step {warmup})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--every", type=int, default=200, help="table row interval (steps)")
    parser.add_argument("--warmup", type=int, default=200, help="growth is measured from this step on")
    parser.add_argument("--bound", type=float, default=32.0, help="allowed RSS growth after warm-up, MiB")
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between RSS samples")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for train_memory.png/.json")
    args = parser.parse_args()
    print(f"<!-- {datetime.date.today()} {platform.node()}, {os.cpu_count()} CPUs, {args.threads} threads; "
          f"python {' '.join(sys.argv)} -->")
    with tempfile.TemporaryDirectory() as tmp:
        samples, code = run(args, Path(tmp))
    if code != 0 or not samples:
        sys.exit(f"error: the training run failed (exit {code}) or logged no distill step; see above")
    rows, growth, end_growth = table(samples, args.every, args.warmup)
    print(rows)
    verdict = "within" if growth <= args.bound else "EXCEEDS"
    print(f"\nlargest RSS after warm-up exceeds the step-{args.warmup} value by {growth:+.1f} MiB "
          f"(at the end: {end_growth:+.1f} MiB); bound {args.bound:.0f} MiB: {verdict}; "
          f"{len(samples)} samples over {samples[-1][0]:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    plot(samples, args.out / "train_memory.png", args.bound, args.warmup)
    (args.out / "train_memory.json").write_text(json.dumps(
        {"steps": args.steps, "bound_mib": args.bound, "growth_mib": growth, "end_growth_mib": end_growth,
         "samples": [{"seconds": t, "step": s, "rss": r} for t, s, r in samples]}))
    print(f"wrote {args.out / 'train_memory.png'} and {args.out / 'train_memory.json'}")
    sys.exit(0 if growth <= args.bound else 1)


if __name__ == "__main__":
    main()
