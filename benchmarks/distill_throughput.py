"""Distillation throughput: one CD training step through the engine vs the bare networks.

The engine step is ``Trainer._step`` on a :class:`~cdcompress.distill.Distiller` (forward hooks for
taps, embedding branches, reconstruction objective, loss bookkeeping, Adam). The bare step does the
same arithmetic written out by hand on the same modules (teacher taps from one forward pass without
hooks, branches, collaborator, perceptual loss, backward, Adam). Their ratio is the framework's
overhead (target: at most 20%). Steps alternate between the two so both see the same machine load.

    python benchmarks/distill_throughput.py                      # released SE3/SD3 -> half width, batch 4 at 128²
    python benchmarks/distill_throughput.py --steps 3 --crop 96  # quick
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from cdcompress.distill import Distiller, apply
from cdcompress.distill.trainer import TrainConfig, Trainer
from cdcompress.models import convert_cd_release, teacher_architecture
from cdcompress.surgery.embed import OUTPUT, branch_key

REPO = Path(__file__).resolve().parents[1]
RELEASE = REPO.parent / "shared" / "reference" / "cd16x"


def pair(level: int) -> tuple[torch.nn.Module, torch.nn.Module, str]:
    """The released SE/SD at ``level`` (the cd16x_half setup), else the random VGG-19 teacher cut there."""
    if (RELEASE / f"se{level}.pth").is_file():
        model, name = convert_cd_release(RELEASE, levels=(level,)), f"released SE{level}/SD{level}"
        return model.encoders[level], model.decoders[level], name
    model = teacher_architecture(levels=(level,))
    return model.encoder(level), model.decoder(level), f"random VGG-19 level {level}"


def taps_of(encoder: torch.nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """Tap activations and the encoder output from one plain forward pass (no hooks)."""
    out, found = encoder._run(x, [n for n in names if n != OUTPUT])
    found[OUTPUT] = out
    return found


def bare_step(d: Distiller, batch: torch.Tensor, opt: torch.optim.Optimizer, lambda_p: float = 1.0) -> None:
    with torch.no_grad():
        target = taps_of(d.teacher, batch, d.features)
    raw = taps_of(d.student, batch, d.features)
    embedded = {n: d.branches[branch_key(n)](raw[n]) for n in d.features}
    loss = d.beta * sum(F.mse_loss(embedded[n], target[n]) for n in d.features)
    output = d.collaborator(embedded[OUTPUT])
    perceptual = taps_of(d.teacher, output, d.perceptual.taps)
    loss = loss + F.mse_loss(output, batch) + lambda_p * sum(F.mse_loss(perceptual[n], target[n]) for n in d.perceptual.taps)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--level", type=int, default=3)
    parser.add_argument("--slim", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed steps of each kind (after one warm-up each)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    encoder, decoder, source = pair(args.level)
    distiller = apply(encoder, decoder, slim=args.slim)
    # The trainer only reads its sampler in fit(); _step gets the batch directly.
    trainer = Trainer(distiller, None, TrainConfig(steps=args.steps + 1))  # type: ignore[arg-type]
    params = [p for m in distiller.trainable_modules().values() for p in m.parameters() if p.requires_grad]
    bare_opt = torch.optim.Adam(params, lr=1e-4)
    distiller.set_train(True)
    batch = torch.rand(args.batch, 3, args.crop, args.crop, generator=torch.Generator().manual_seed(0))
    engine, bare = [], []
    for step in range(args.steps + 1):
        t_engine = timed(lambda s=step: trainer._step(batch, s))
        t_bare = timed(lambda: bare_step(distiller, batch, bare_opt))
        if step:  # the first of each is warm-up
            engine.append(t_engine)
            bare.append(t_bare)
    e, b = statistics.median(engine), statistics.median(bare)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"<!-- {datetime.date.today()}, {platform.machine()} {os.cpu_count()} CPUs, {args.threads} threads, "
          f"torch {torch.__version__}, 1-min load {load:.1f}; {source}, slim {args.slim}, batch {args.batch}x{args.crop}²; "
          f"command: python benchmarks/{Path(__file__).name} {shlex.join(sys.argv[1:])} -->")
    print("| step | median s | best s |\n|---|---:|---:|")
    print(f"| engine (`Trainer._step` on the Distiller) | {e:.3f} | {min(engine):.3f} |")
    print(f"| bare forward + backward + Adam, same modules | {b:.3f} | {min(bare):.3f} |")
    print(f"| **overhead** | **{100 * (e / b - 1):+.1f}%** | {100 * (min(engine) / min(bare) - 1):+.1f}% |")


if __name__ == "__main__":
    main()
