"""Training throughput of the WCT stages on this CPU: where a step's time goes, and what makes it cheaper.

For the real WCT teacher at each level (the ``wct_vgg19_cpu`` recipe's student, β 10, λp 1), one stage-2 step is
split into its parts: teacher targets (one no-grad pass for every tap and perceptual target), student + branches,
collaborator, perceptual pass on the reconstruction, backward, Adam; stage 3's step (decoder only) beside it. Then
whole steps of each variant, interleaved round by round so all see the same machine load: fp32, bf16 autocast
(CPUs with bf16 instructions), channels-last batches, both, and stage 2 without its perceptual term (λp 0 skips
the pass: what it costs).
Crops per second are medians over the rounds.

    python benchmarks/stage_throughput.py --levels 1 3 --batch 4 --crop 128 [--batch 16 --crop 256]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cdcompress.core.allocator import retained_heap
from cdcompress.data.batches import CropSampler
from cdcompress.distill.losses import FeatureExtractor
from cdcompress.distill.recipe import load_recipe
from cdcompress.distill.run import RecipeRun, data_paths
from cdcompress.distill.stages import DistillStage, LevelState
from cdcompress.distill.teachers import load_teacher

ROOT = Path(__file__).resolve().parents[1]


def timed(fn: Callable[[], Any], repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def setup(level: int, batch: int, crop: int, out: Path) -> dict[str, Any]:
    recipe = load_recipe("wct_vgg19_cpu", [f"levels=[{level}]", "embed.beta=10"])
    run = RecipeRun(recipe, out)
    state = LevelState(level, load_teacher(recipe.teacher, level))
    state.collaborator = state.teacher.decoder
    distiller = DistillStage().prepare(run, state)
    sampler = CropSampler(data_paths(recipe.data.train, out), batch_size=batch, resize=max(crop, 160), crop=crop)
    return {"distiller": distiller, "x": sampler[0], "decoder": distiller.decoder_init}


def part_times(distiller: Any, x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Seconds per stage-2 step spent in each part (forward parts under no_grad; backward and Adam measured on the
    whole loss)."""
    params = [p for m in distiller.trainable_modules().values() for p in m.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-4)
    with torch.no_grad():
        embedded = distiller.embedded_features(x)[1]
        recon = distiller.collaborator(embedded)
    parts = {}
    with torch.no_grad():
        parts["teacher targets"] = timed(lambda: distiller._teacher_features(x), repeats)
        parts["student + branches"] = timed(lambda: distiller.embedded_features(x), repeats)
        parts["collaborator"] = timed(lambda: distiller.collaborator(embedded), repeats)
        parts["perceptual pass"] = timed(lambda: distiller.perceptual(recon), repeats)

    def forward_backward() -> None:
        optimizer.zero_grad(set_to_none=True)
        distiller.losses(x)["total"].backward()

    whole_fb = timed(forward_backward, repeats)
    forward = timed(lambda: distiller.losses(x)["total"], repeats)
    parts["backward (all parts)"] = max(0.0, whole_fb - forward)
    parts["Adam step"] = timed(optimizer.step, repeats)
    return parts


@contextlib.contextmanager
def variant_context(name: str) -> Iterator[None]:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled="bf16" in name):
        yield


def stage2_step(distiller: Any, x: torch.Tensor, optimizer: torch.optim.Optimizer, variant: str) -> None:
    optimizer.zero_grad(set_to_none=True)
    objective = distiller.objective
    weight = objective.lambda_p
    objective.lambda_p = 0.0 if variant == "no perceptual term" else weight  # the pass itself is skipped at 0
    try:
        with variant_context(variant):
            loss = distiller.losses(x)["total"]
        loss.backward()
        optimizer.step()
    finally:
        objective.lambda_p = weight


def stage3_step(encoder: Any, decoder: Any, perceptual: FeatureExtractor | None, x: torch.Tensor,
                optimizer: torch.optim.Optimizer, variant: str) -> None:
    optimizer.zero_grad(set_to_none=True)
    with variant_context(variant):
        with torch.no_grad():
            features = encoder(x)
        out = decoder(features)
        loss = F.mse_loss(out.float(), x)
        if perceptual is not None:
            loss = loss + 0.01 * sum(F.mse_loss(a.float(), b.float()) for a, b in
                                     zip(perceptual(out).values(), perceptual(x).values(), strict=True))
    loss.backward()
    optimizer.step()


def interleaved(level_setup: dict[str, Any], variants: list[str], rounds: int, steps: int) -> dict[str, dict[str, float]]:
    """Crops/s of stage 2 and stage 3 per variant, median over ``rounds`` (variants alternate within a round)."""
    distiller, x = level_setup["distiller"], level_setup["x"]
    encoder = distiller.deployable()
    decoder = level_setup["decoder"]
    for p in decoder.parameters():
        p.requires_grad_(True)
    opt2 = torch.optim.Adam([p for m in distiller.trainable_modules().values() for p in m.parameters()], lr=1e-6)
    opt3 = torch.optim.Adam(decoder.parameters(), lr=1e-6)
    speeds: dict[str, dict[str, list[float]]] = {v: {"stage 2": [], "stage 3 (pixel)": [],
                                                     "stage 3 (pixel + 0.01 perceptual)": []} for v in variants}
    for _ in range(rounds):
        for variant in variants:
            # channels-last as the trainer applies it: the batch only (the convs then run NHWC end to end)
            xv = x.contiguous(memory_format=torch.channels_last) if "channels-last" in variant else x.contiguous()
            jobs = {"stage 2": lambda xv=xv, v=variant: stage2_step(distiller, xv, opt2, v),
                    "stage 3 (pixel)": lambda xv=xv, v=variant: stage3_step(encoder, decoder, None, xv, opt3, v),
                    "stage 3 (pixel + 0.01 perceptual)":
                        lambda xv=xv, v=variant: stage3_step(encoder, decoder, distiller.perceptual, xv, opt3, v)}
            for name, job in jobs.items():
                if variant == "no perceptual term" and name != "stage 2":
                    continue
                speeds[variant][name].append(x.shape[0] / timed(job, steps))
    return {v: {k: statistics.median(s) for k, s in stages.items() if s} for v, stages in speeds.items()}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per part")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "stage_throughput")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    bf16 = torch.backends.mkldnn.is_available() and "avx512_bf16" in Path("/proc/cpuinfo").read_text()
    variants = ["fp32", *(["bf16 autocast"] if bf16 else []), "channels-last",
                *(["channels-last + bf16 autocast"] if bf16 else []), "no perceptual term"]
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "threads": torch.get_num_threads(),
                               "batch": args.batch, "crop": args.crop, "levels": {}}
    lines = [f"batch {args.batch} of {args.crop}² crops, {torch.get_num_threads()} threads, {results['date']}", ""]
    for level in args.levels:
        ready = setup(level, args.batch, args.crop, args.out)
        with retained_heap():  # as the trainer runs a CPU stage (without it most time goes to page faults)
            parts = part_times(ready["distiller"], ready["x"], args.repeats)
            speeds = interleaved(ready, variants, args.rounds, args.steps)
        results["levels"][str(level)] = {"parts_seconds": parts, "crops_per_second": speeds}
        total = sum(parts.values())
        lines += [f"| level {level}, stage-2 step part | ms per step | share |", "|---|---:|---:|"]
        lines += [f"| {name} | {1000 * sec:.1f} | {100 * sec / total:.0f}% |" for name, sec in parts.items()]
        stage_names = list(next(iter(speeds.values())))
        lines += ["", f"| level {level}: crops/s | " + " | ".join(stage_names) + " |",
                  "|---|" + "---:|" * len(stage_names)]
        for variant, row in speeds.items():
            lines.append(f"| {variant} | " + " | ".join(f"{row[s]:.1f}" if s in row else "" for s in stage_names) + " |")
        lines.append("")
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
