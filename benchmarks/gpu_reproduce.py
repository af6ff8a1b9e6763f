"""The paper's WCT level-3 student with the authors' official settings, trained for a wall-clock budget on a GPU.

The bundled ``wct_vgg19`` recipe is the authors' training script (stage 2: β 10, pixel 1, λp 1; stage 3: pixel +
0.01 perceptual from the pruned collaborator; Adam 1e-4 constant, batch 16, resize 300 / crop 256). The trainer
counts steps, not minutes, so a short timed probe of each stage (the same recipe at a few steps, in a scratch
folder) measures the seconds per step, per held-out evaluation and per stage start; the run's
``stages.distill.steps`` / ``stages.decoder.steps`` are then set so that stage 2 fits ``--split`` of ``--minutes``
and stage 3 the rest. Nothing else is changed from the recipe but the teacher (``wct-pytorch`` at ``--teacher``),
the data folders, the level, the device and the learning-curve interval; every override is printed and recorded.

The paper trained each network on ≈1.66M crops (103,479 steps of batch 16: 20 epochs of COCO train2014); the plan
says what fraction of that the budget buys. Afterwards the teacher, the paper's released student (se{k}/sd{k}) and
ours are measured on the same held-out photos (encoder → its own decoder, PSNR), and ``--out`` receives
``curve.png`` (held-out PSNR against crops seen, log axis; stage 2 through the collaborator dashed, stage 3 solid),
``results.json`` and ``report.md``; the recipe run itself is in ``--out/run`` (``--resume`` continues it with the
same plan).

    python benchmarks/gpu_reproduce.py --minutes 60 --train data/coco/train2014
    python benchmarks/gpu_reproduce.py --minutes 60 --resume                 # after an interruption
    python benchmarks/gpu_reproduce.py --minutes 0.3 --device cpu --set data.resize=64 --set data.crop=48 \\
        --set data.workers=0 --set data.eval_size=64 --out /tmp/smoke               # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from cdcompress.core.device import resolve_device
from cdcompress.core.errors import CDCompressError
from cdcompress.distill.recipe import Recipe, check_paths, load_recipe
from cdcompress.distill.run import eval_images, run_recipe
from cdcompress.evaluation.evaluate import reconstruct
from cdcompress.evaluation.metrics import psnr
from cdcompress.models import convert_cd_release, load
from cdcompress.models.converters import convert_wct_pytorch, wct_levels
from cdcompress.models.format import CDModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plotting import finish_axes, save_figure  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
RECIPE = "wct_vgg19"
PAPER_STEPS, PAPER_BATCH = 103_479, 16
PAPER_CROPS = PAPER_STEPS * PAPER_BATCH  # ≈1.66M crops per network
STAGES = {"distill": "stage 2 (student + Q through the frozen collaborator)", "decoder": "stage 3 (student's decoder)"}
CURVE_POINTS = 20  # held-out evaluations per stage when --eval-every is 0 (auto)


@dataclass
class Timing:
    """One stage's probe: seconds per training step, per held-out evaluation, and fixed start/finish cost."""

    step_s: float
    eval_s: float
    overhead_s: float


@dataclass
class StagePlan:
    """Steps for one stage so that training + evaluations + start-up fit ``share_s``."""

    share_s: float
    steps: int
    eval_every: int
    batch: int
    timing: Timing

    @property
    def crops(self) -> int:
        return self.steps * self.batch


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- arguments and checks
def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, help="wall budget for stage 2 + stage 3 training (not the probe)")
    parser.add_argument("--split", type=float, default=0.5, help="stage 2's share of --minutes (0..1)")
    parser.add_argument("--train", nargs="+", default=["skimage", str(SHARED / "images" / "content")],
                        help="training photo folders, e.g. COCO train2014 (default: the CPU recipe's small set)")
    parser.add_argument("--eval", default=str(SHARED / "images" / "style"), help="held-out photo folder")
    parser.add_argument("--teacher", type=Path, default=SHARED / "reference" / "wct-vgg19",
                        help="WCT VGG-19 .pth folder (teacher source wct-pytorch)")
    parser.add_argument("--release", type=Path, default=SHARED / "reference" / "cd16x", help="the paper's se{k}/sd{k}")
    parser.add_argument("--level", type=int, default=3, help="WCT level (1-3 with ../shared's teacher)")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for a smoke run")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu_reproduce")
    parser.add_argument("--eval-every", type=int, default=0, help=f"learning-curve interval (0: ~{CURVE_POINTS} points)")
    parser.add_argument("--probe-steps", type=int, default=20, help="steps of each stage in the timing probe")
    parser.add_argument("--resume", action="store_true", help="continue --out/run with its saved plan")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="extra recipe override (repeatable), applied after the script's own")
    return parser.parse_args(argv)


def check_inputs(args: argparse.Namespace) -> torch.device:
    """Everything a long run needs, checked before any model loads: each problem is one line."""
    try:
        device = resolve_device(args.device)
    except CDCompressError as exc:
        raise SystemExit(f"gpu_reproduce: {exc}") from None
    if not args.resume and (args.minutes is None or args.minutes <= 0):
        raise SystemExit("gpu_reproduce: give --minutes M > 0 (the wall budget for stages 2 and 3)")
    if args.eval_every < 0 or args.probe_steps < 3:
        raise SystemExit("gpu_reproduce: --eval-every must be >= 0 and --probe-steps >= 3")
    if not 0 < args.split < 1:
        raise SystemExit(f"gpu_reproduce: --split must lie strictly between 0 and 1, got {args.split}")
    if not args.teacher.is_dir():
        raise SystemExit(f"gpu_reproduce: teacher folder {args.teacher} is missing (the WCT VGG-19 .pth files; "
                         "`cdcompress weights download wct-vgg19` fetches them)")
    if args.level not in wct_levels(args.teacher):
        raise SystemExit(f"gpu_reproduce: {args.teacher} has no encoder/decoder for level {args.level} "
                         f"(it has {wct_levels(args.teacher)})")
    if not args.release.is_dir():
        raise SystemExit(f"gpu_reproduce: release folder {args.release} is missing (the paper's se{{k}}.pth/sd{{k}}.pth)")
    if not all((args.release / f"{p}{args.level}.pth").is_file() for p in ("se", "sd")):
        raise SystemExit(f"gpu_reproduce: {args.release} has no se{args.level}.pth/sd{args.level}.pth")
    planned = [s for s in args.sets if s.split("=", 1)[0].strip() in ("stages.distill.steps", "stages.decoder.steps")]
    if planned:
        raise SystemExit(f"gpu_reproduce: {planned[0]!r}: the step counts come from --minutes")
    if not args.resume and (args.out / "run" / "config.yaml").exists():
        raise SystemExit(f"gpu_reproduce: {args.out / 'run'} already holds a run; pass --resume or another --out")
    return device


def base_overrides(args: argparse.Namespace) -> list[str]:
    """What this script changes in the official recipe: where things are, the level and the device (JSON values
    are YAML, so any path survives), then the user's ``--set``."""
    return [f"levels=[{args.level}]", f"device={args.device}", "teacher.source=wct-pytorch",
            f"teacher.path={json.dumps(str(args.teacher))}", f"data.train={json.dumps(args.train)}",
            f"data.eval={json.dumps([args.eval])}", "data.eval_size=256", *args.sets]  # the CPU study's protocol


def recipe_for(sets: list[str]) -> Recipe:
    """The official recipe with ``sets``, paths checked (one-line errors)."""
    try:
        recipe = load_recipe(RECIPE, sets)
        check_paths(recipe, RECIPE)
    except CDCompressError as exc:
        raise SystemExit(f"gpu_reproduce: {exc}") from None
    return recipe


# ---------------------------------------------------------------- timing probe and plan
def probe(sets: list[str], scratch: Path, steps: int) -> dict[str, Timing]:
    """Both stages at ``steps`` each in ``scratch`` (logging every step, one mid-stage evaluation): the run's own
    code path, so data loading, AMP/cuDNN warm-up and evaluation cost are what the real run will see."""
    shutil.rmtree(scratch, ignore_errors=True)
    every = max(1, steps // 2)
    extra = [f"stages.distill.steps={steps}", f"stages.decoder.steps={steps}", f"output.eval_every={every}",
             "output.log_every=1", "output.checkpoint_every=0", "output.sample_every=0"]
    started = time.perf_counter()
    report = run_recipe(recipe_for([*sets, *extra]), scratch).report
    log(f"probe: {steps} steps of each stage in {time.perf_counter() - started:.0f} s")
    records = [json.loads(line) for line in (scratch / "metrics.jsonl").read_text().splitlines()]
    return {key: stage_timing(records, name, report["stage_seconds"][name], steps, every)
            for key in STAGES for name in report["stage_seconds"] if name.startswith(key)}


def stage_timing(records: list[dict[str, Any]], stage: str, seconds: float, steps: int, every: int) -> Timing:
    """Per-step time = median gap between consecutive step records (the first, warm-up step left out); a gap after
    an evaluation step is one step + one evaluation; the rest of the stage's wall time is start/finish cost."""
    times = {r["step"]: r["time"] for r in records if r.get("stage") == stage and "time" in r}
    evals = set(range(every, steps, every))  # after record k, before k + 1 (0 and the last are outside gaps)
    gaps = {s: times[s] - times[s - 1] for s in range(2, steps + 1) if s in times and s - 1 in times}
    plain = [g for s, g in gaps.items() if s - 1 not in evals] or list(gaps.values()) or [seconds / max(1, steps)]
    step_s = max(1e-6, statistics.median(plain))
    eval_s = statistics.fmean([max(0.0, gaps[k + 1] - step_s) for k in evals if k + 1 in gaps] or [0.0])
    overhead_s = max(0.0, seconds - steps * step_s - (len(evals) + 2) * eval_s)
    return Timing(round(step_s, 5), round(eval_s, 5), round(overhead_s, 3))


def auto_eval_every(share_s: float, timing: Timing) -> int:
    """An interval giving ~CURVE_POINTS held-out evaluations, fewer where they would take over 20% of the stage."""
    usable = share_s - timing.overhead_s
    points = CURVE_POINTS
    if timing.eval_s > 0:
        points = max(1, min(CURVE_POINTS, math.floor(0.2 * usable / timing.eval_s) - 2))
    steps = (usable - (points + 2) * timing.eval_s) / timing.step_s
    return max(1, math.floor(steps / points))


def plan_stage(share_s: float, timing: Timing, batch: int, eval_every: int) -> StagePlan:
    """The most steps for which start-up + steps + evaluations (at 0, every ``eval_every`` and the end) fit."""
    steps = (share_s - timing.overhead_s - 2 * timing.eval_s) / (timing.step_s + timing.eval_s / eval_every)
    return StagePlan(round(share_s, 1), max(1, math.floor(steps)), eval_every, batch, timing)


def plan_lines(plans: dict[str, StagePlan]) -> list[str]:
    return [f"{STAGES[key]}: {p.steps:,} steps x batch {p.batch} = {p.crops:,} crops "
            f"({100 * p.crops / PAPER_CROPS:.3g}% of the paper's {PAPER_CROPS:,}), {p.share_s:.0f} s at "
            f"{p.timing.step_s * 1000:.1f} ms/step, held-out PSNR every {p.eval_every} steps"
            for key, p in plans.items()]


def make_plan(args: argparse.Namespace, sets: list[str]) -> tuple[dict[str, StagePlan], list[str]]:
    """Probe, plan both stages, and the run's full override list."""
    recipe = recipe_for(sets)
    timings = probe(sets, args.out / "probe", args.probe_steps)
    budget = args.minutes * 60
    shares = {"distill": budget * args.split, "decoder": budget * (1 - args.split)}
    batches = {"distill": recipe.stages.distill.batch, "decoder": recipe.stages.decoder.batch}
    # output.eval_every is one interval for both stages: the longer of the two auto intervals keeps each stage's
    # evaluations within its share (the stage with fewer steps gets fewer points).
    every = args.eval_every or max(auto_eval_every(shares[key], timings[key]) for key in STAGES)
    plans = {key: plan_stage(shares[key], timings[key], batches[key], every) for key in STAGES}
    run_sets = [*sets, f"stages.distill.steps={plans['distill'].steps}", f"stages.decoder.steps={plans['decoder'].steps}",
                f"output.eval_every={every}"]
    return plans, run_sets


# ---------------------------------------------------------------- measurement
@torch.no_grad()
def heldout_psnr(model: CDModel, level: int, images: list[torch.Tensor], device: torch.device) -> float:
    """Mean PSNR of encoder(level) → decoder(level) over the held-out images (the recipe's eval set and size)."""
    model = model.to(device).eval()
    return statistics.fmean(psnr(reconstruct(model, level, x), x) for x in images)


def measure(args: argparse.Namespace, recipe: Recipe, device: torch.device) -> dict[str, float]:
    images = [image for _, image in eval_images(recipe, args.out / "scratch")]
    models = {"teacher": convert_wct_pytorch(args.teacher),
              "released": convert_cd_release(args.release, levels=(args.level,)),
              "ours": load(args.out / "run" / "student")}
    return {name: round(heldout_psnr(model, args.level, images, device), 4) for name, model in models.items()}


# ---------------------------------------------------------------- outputs
def curve_png(curves: dict[str, list[list[float]]], batches: dict[str, int], psnrs: dict[str, float], level: int,
              out: Path) -> Path:
    """Held-out PSNR against crops seen by the network being trained (log axis, so step 0 is left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    for key, style, label in (("distill", "--", "stage 2: student + Q → frozen collaborator"),
                              ("decoder", "-", "stage 3: student + its decoder")):
        points = [(s * batches[key], v) for stage, pts in curves.items() if stage.startswith(key) for s, v in pts if s > 0]
        if points:
            x, y = zip(*points, strict=True)
            ax.plot(x, y, style, marker="o", markersize=3, linewidth=1.2, label=label)
    for name, style, colour in (("released", ":", "black"), ("teacher", "-.", "dimgrey")):
        ax.axhline(psnrs[name], color=colour, linewidth=0.8, linestyle=style, label=f"{name} {psnrs[name]:.2f} dB")
    ax.axvline(PAPER_CROPS, color="grey", linewidth=0.8, linestyle="--", label="paper's crops per network")
    finish_axes(ax, f"WCT level {level}, official settings (wct_vgg19)",
                "crops seen by the network trained (steps x batch; step 0 off the log axis)", "held-out PSNR (dB)",
                log_x=True, legend_size=7)
    return save_figure(fig, out)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


def report_md(results: dict[str, Any]) -> str:
    p = results["psnr"]
    lines = [f"# WCT level {results['level']}: official settings for {results['minutes_budget']} min",
             "", f"{results['date']}, {results['device_name']}, torch {results['torch']}; "
             f"{results['minutes_run']} min of recipe run (stages: "
             + ", ".join(f"{k} {v:.0f} s" for k, v in results["stage_seconds"].items()) + ").", "",
             f"`{results['command']}`", "", "| stage | steps | crops | share of the paper's crops |", "|---|---:|---:|---:|"]
    for key, plan in results["plan"].items():
        crops = plan["steps"] * plan["batch"]
        lines.append(f"| {STAGES[key]} | {plan['steps']:,} | {crops:,} | {100 * crops / PAPER_CROPS:.3g}% |")
    lines += ["", "| held-out PSNR (dB) | teacher | released student | ours |", "|---|---:|---:|---:|",
              f"| level {results['level']} | {p['teacher']:.2f} | {p['released']:.2f} | {p['ours']:.2f} |", "",
              "Overrides of the `wct_vgg19` recipe: " + ", ".join(f"`{s}`" for s in results["overrides"]) + ".", "",
              "![held-out PSNR against crops seen](curve.png)", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> dict[str, Any]:
    args = parse_args(argv)
    device = check_inputs(args)
    args.out.mkdir(parents=True, exist_ok=True)
    plan_file = args.out / "plan.json"
    if args.resume:
        if not plan_file.is_file():
            raise SystemExit(f"gpu_reproduce: --resume: {plan_file} is missing; start without --resume")
        saved = json.loads(plan_file.read_text())
        run_sets, plans_json = saved["overrides"], saved["plan"]
        log("resuming with the saved plan")
    else:
        plans, run_sets = make_plan(args, base_overrides(args))
        plans_json = {key: asdict(p) for key, p in plans.items()}
        plan_file.write_text(json.dumps({"overrides": run_sets, "plan": plans_json, "minutes": args.minutes}, indent=1))
        for line in plan_lines(plans):
            log(line)
    log("overrides of wct_vgg19: " + " ".join(shlex.quote(s) for s in run_sets))
    recipe = recipe_for(run_sets)
    started = time.perf_counter()
    try:
        report = run_recipe(recipe, args.out / "run", args.resume).report
    except CDCompressError as exc:
        raise SystemExit(f"gpu_reproduce: {exc}") from None
    minutes_run = round((time.perf_counter() - started) / 60, 2)
    psnrs = measure(args, recipe, device)
    batches = {key: plans_json[key]["batch"] for key in STAGES}
    curves = report.get("heldout_curves", {})
    curve_png(curves, batches, psnrs, args.level, args.out / "curve.png")
    results = {"date": time.strftime("%Y-%m-%d %H:%M"), "device": str(device), "device_name": device_name(device),
               "torch": torch.__version__, "command": "python benchmarks/gpu_reproduce.py " + shlex.join(argv),
               "recipe": RECIPE, "level": args.level, "overrides": run_sets, "plan": plans_json,
               "minutes_budget": json.loads(plan_file.read_text()).get("minutes"), "minutes_run": minutes_run,
               "stage_seconds": report.get("stage_seconds", {}), "psnr": psnrs,
               "through_collaborator_psnr": report.get("levels", {}).get(str(args.level), {}).get("through_collaborator_psnr"),
               "paper_crops_per_network": PAPER_CROPS, "heldout_curves": curves}
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "report.md").write_text(report_md(results))
    log(f"held-out PSNR at level {args.level}: teacher {psnrs['teacher']:.2f} dB, released {psnrs['released']:.2f} dB, "
        f"ours {psnrs['ours']:.2f} dB; wrote {args.out / 'curve.png'}, results.json, report.md")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
