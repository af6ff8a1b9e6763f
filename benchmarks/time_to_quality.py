"""Time to quality for WCT levels 2-3: held-out PSNR against crops seen, from the CPU study's budget up to 10x.

Each budget is the bundled ``wct_vgg19_cpu`` recipe with the authors' weighting (β 10, pixel 1, λp 1), stage 2 for
S steps and stage 3 for 5·S (the study's 300 + 1500 ratio), batch 4 of 128² crops, and the output conv refitted by
least squares after stage 3 (both the trained and the refitted figures are kept). Per budget: stage 2 judged through
the frozen collaborator (D_teacher(Q·F')), the student with its own decoder, and where that decoder started.
A straight line in log(crops) through the end-to-end points says at what budget the curve would meet the released
student (a leave-one-out range as its uncertainty). The anomaly check trains one fixed stage 3 for the students of
two stage-2 budgets, so only stage 2 differs.

Writes ``results.json`` under ``--out`` and ``docs/images/time_to_quality.png``.

    python benchmarks/time_to_quality.py --levels 3 2 --budgets 300 1000 3000 [--anomaly-steps 300 1000]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from cdcompress.distill.recipe import check_paths, load_recipe
from cdcompress.distill.run import RecipeRun, data_paths, eval_images, run_recipe
from cdcompress.distill.stages import DistillStage, LevelState
from cdcompress.distill.teachers import load_teacher
from cdcompress.models import load

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plotting import finish_axes, save_figure  # noqa: E402
from stage_references import RELEASE_DIR, release_references, stage3_from  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "wct_vgg19_cpu"
BATCH = 4  # the recipe's batch in both stages: crops seen = steps * BATCH


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def budget_overrides(level: int, steps: int, seed: int) -> list[str]:
    return [f"levels=[{level}]", f"seed={seed}", "embed.beta=10", f"stages.distill.steps={steps}",
            f"stages.decoder.steps={5 * steps}", f"output.eval_every={max(100, steps // 3)}",
            "stages.decoder.refit_output=true", "output.sample_every=0"]


def run_budget(level: int, steps: int, seed: int, out: Path) -> dict[str, Any]:
    """One recipe run at this budget (reused when its report exists)."""
    run_dir = out / f"L{level}_s{seed}_{steps}-{5 * steps}"
    sets = budget_overrides(level, steps, seed)
    if not (run_dir / "report.json").is_file():
        recipe = load_recipe(RECIPE, sets)
        check_paths(recipe, RECIPE)
        started = time.perf_counter()
        run_recipe(recipe, run_dir)
        log(f"L{level} {steps}+{5 * steps}: {time.perf_counter() - started:.0f} s")
    report = json.loads((run_dir / "report.json").read_text())
    entry = report["levels"][str(level)]
    refit = next((n for n in report["notes"] if "refitted by least squares" in n), "")
    before, after = (float(v) for v in refit.split("held-out ")[1].removesuffix(" dB").split(" -> "))
    curves = report.get("heldout_curves", {})
    decoder_curve = next((p for stage, p in curves.items() if stage.startswith("decoder")), [])
    return {"level": level, "steps": steps, "decoder_steps": 5 * steps, "run_dir": str(run_dir),
            "stage2_crops": steps * BATCH, "crops": 6 * steps * BATCH,
            "through_collaborator": entry["through_collaborator_psnr"], "trained": before, "refit": after,
            "decoder_start": decoder_curve[0][1] if decoder_curve else None, "curves": curves,
            "seconds": report["stage_seconds"]}


def anomaly(level: int, runs: list[dict[str, Any]], steps: list[int], decoder_steps: int, seed: int,
            rates: list[float]) -> dict[str, Any]:
    """The same stage 3 (steps, data, folded start) for the students of two stage-2 budgets, at each learning rate."""
    result: dict[str, Any] = {}
    for rate in rates:
        recipe = load_recipe(RECIPE, [*budget_overrides(level, steps[0], seed), f"stages.decoder.lr={rate}"])
        scratch = Path(runs[0]["run_dir"])
        images = [x for _, x in eval_images(recipe, scratch)]
        train = data_paths(recipe.data.train, scratch)
        state = LevelState(level, load_teacher(recipe.teacher, level))
        state.collaborator = state.teacher.decoder
        for budget in steps:
            run = next(r for r in runs if r["steps"] == budget)
            student = load(Path(run["run_dir"]) / "student")
            distiller = DistillStage().prepare(RecipeRun(recipe, scratch), state)
            measured = stage3_from(distiller, student.encoder(level), student.branches[level], recipe, train, images,
                                   decoder_steps, seed, starts=("folded",))["folded"]
            measured["through_collaborator"] = run["through_collaborator"]
            result[f"{budget} @ lr {rate:g}"] = measured
            log(f"anomaly L{level}: student of {budget} stage-2 steps, {decoder_steps}-step stage 3 at lr {rate:g}: "
                f"{measured['start']:.2f} -> {measured['trained']:.2f} dB, {measured['dead_channels'][0]}/"
                f"{measured['dead_channels'][1]} ReLU channels dead")
    return result


def meeting_point(points: list[tuple[float, float]], target: float) -> dict[str, float] | None:
    """Crops at which PSNR = a + b·log10(crops) reaches ``target``; the leave-one-out fits give the range."""
    def solve(subset: list[tuple[float, float]]) -> float | None:
        xs, ys = [math.log10(c) for c, _ in subset], [p for _, p in subset]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs)
        if var == 0:
            return None
        b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
        exponent = mx + (target - my) / b if b > 0 else math.inf
        return None if exponent > 15 else 10 ** exponent  # flat, falling, or beyond 1e15 crops: not reached

    if len(points) < 2:
        return None
    best = solve(points)
    others = [v for i in range(len(points)) if len(points) > 2
              for v in [solve(points[:i] + points[i + 1:])] if v is not None]
    if best is None:
        return None
    return {"crops": best, "low": min([best, *others]), "high": max([best, *others])}


def plot(results: dict[str, Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted({r["level"] for r in results["runs"]}, reverse=True)
    fig, axes = plt.subplots(1, len(levels), figsize=(5.6 * len(levels), 4.0), squeeze=False)
    for ax, level in zip(axes[0], levels, strict=True):
        runs = sorted((r for r in results["runs"] if r["level"] == level), key=lambda r: r["steps"])
        ref = results["references"][str(level)]
        for run in runs:  # each run's own curves, stage 3 drawn after its stage 2
            for stage, points in run["curves"].items():
                offset = 0 if stage.startswith("distill") else run["stage2_crops"]
                style = "--" if stage.startswith("distill") else "-"
                ax.plot([max(1, offset + s * BATCH) for s, _ in points], [p for _, p in points], style, color="0.75",
                        linewidth=0.8)
        ax.plot([r["stage2_crops"] for r in runs], [r["through_collaborator"] for r in runs], "o--",
                label="stage 2: collaborator decoding Q·F'")
        ax.plot([r["crops"] for r in runs], [r["trained"] for r in runs], "s-", label="end to end, trained decoder")
        ax.plot([r["crops"] for r in runs], [r["refit"] for r in runs], "^-", label="end to end, output refitted")
        ax.axhline(ref["released"], color="black", linestyle=":", label=f"released SE{level}/SD{level}")
        ax.axhline(ref["released_stage2"], color="black", linestyle="--", linewidth=0.7,
                   label="released stage 2: D(Q·SE)")
        ax.axhline(ref["teacher"], color="black", linestyle="-.", linewidth=0.7, label="teacher")
        ax.axvline(1_655_664, color="red", linewidth=0.7, label="the authors' budget (1.66M crops)")
        finish_axes(ax, f"level {level}", "crops seen (128² here, 256² in the paper)", "held-out PSNR (dB)", log_x=True,
                    legend_loc="lower left")
    return save_figure(fig, out)


def references(levels: list[int], out: Path) -> dict[str, dict[str, float]]:
    recipe = load_recipe(RECIPE, [])
    images = [x for _, x in eval_images(recipe, out / "scratch")]
    refs = {}
    for level in levels:
        teacher = load_teacher(recipe.teacher, level)
        refs[str(level)] = release_references(level, teacher.encoder, teacher.decoder, images)
    return refs


def summary(results: dict[str, Any]) -> str:
    """The runs, the meeting points and the anomaly check as Markdown."""
    lines = ["| level | stage-2 + stage-3 steps | crops (128²) | stage 2 via collaborator | decoder start | trained | "
             "output refitted | released |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in results["runs"]:
        start = "n/a" if r["decoder_start"] is None else f"{r['decoder_start']:.2f}"
        lines.append(f"| {r['level']} | {r['steps']} + {r['decoder_steps']} | {r['crops']:,} | "
                     f"{r['through_collaborator']:.2f} | {start} | {r['trained']:.2f} | {r['refit']:.2f} | "
                     f"{results['references'][str(r['level'])]['released']:.2f} |")
    lines += ["", "| level | figure | crops to meet the released figure (log-linear fit) | leave-one-out range |",
              "|---:|---|---:|---|"]
    for level, kinds in results["meeting"].items():
        for kind, point in kinds.items():
            cells = (f"{point['crops']:.3g} | {point['low']:.3g} – {point['high']:.3g}" if point
                     else "not reached (curve flat or falling) | n/a")
            lines.append(f"| {level} | {kind} | {cells} |")
    for level, students in results["anomaly"].items():
        lines += ["", f"| level {level}: student of N stage-2 steps @ stage-3 lr | via collaborator | same stage 3: "
                      "start | trained | refitted | dead ReLU channels |", "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {n} | {a['through_collaborator']:.2f} | {a['start']:.2f} | {a['trained']:.2f} | {a['refit']:.2f} | "
                  f"{a['dead_channels'][0]}/{a['dead_channels'][1]} |" for n, a in students.items()]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[3, 2])
    parser.add_argument("--budgets", type=int, nargs="+", default=[300, 1000, 3000], help="stage-2 steps")
    parser.add_argument("--anomaly-steps", type=int, nargs="*", default=[300, 1000])
    parser.add_argument("--anomaly-decoder-steps", type=int, default=1500)
    parser.add_argument("--anomaly-lr", type=float, nargs="+", default=[3e-3, 3e-4], help="stage-3 learning rates "
                        "(the recipe's 3e-3, and a lower one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--finished-only", action="store_true", help="leave out budgets without a finished run")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "time_to_quality")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if not RELEASE_DIR.is_dir():
        raise SystemExit(f"needs {RELEASE_DIR} and the WCT teacher (../shared from the project root)")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads(),
                               "command": "python benchmarks/time_to_quality.py " + " ".join(argv),
                               "references": references(args.levels, args.out), "runs": [], "anomaly": {},
                               "meeting": {}}
    for level in args.levels:
        for steps in args.budgets:
            if args.finished_only and not (args.out / f"L{level}_s{args.seed}_{steps}-{5 * steps}" / "report.json").is_file():
                continue  # a budget not run at this level (assembling the page from what exists)
            results["runs"].append(run_budget(level, steps, args.seed, args.out))
            (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        runs = [r for r in results["runs"] if r["level"] == level]
        refs = results["references"][str(level)]
        results["meeting"][str(level)] = {
            "stage 2 via collaborator (vs D(Q·SE))": meeting_point(
                [(r["stage2_crops"], r["through_collaborator"]) for r in runs], refs["released_stage2"]),
            **{kind: meeting_point([(r["crops"], r[kind]) for r in runs], refs["released"])
               for kind in ("trained", "refit")}}
        if level == max(args.levels) and len(args.anomaly_steps) == 2:
            cached = args.out / f"anomaly_L{level}.json"  # finished runs are reused, and so is this check
            key = [args.anomaly_steps, args.anomaly_decoder_steps, args.anomaly_lr, args.seed]
            if cached.is_file() and json.loads(cached.read_text())["key"] == key:
                results["anomaly"][str(level)] = json.loads(cached.read_text())["result"]
            else:
                results["anomaly"][str(level)] = anomaly(level, runs, args.anomaly_steps, args.anomaly_decoder_steps,
                                                         args.seed, args.anomaly_lr)
                cached.write_text(json.dumps({"key": key, "result": results["anomaly"][str(level)]}) + "\n")
    results["minutes"] = round((time.perf_counter() - started) / 60, 1)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.docs / "images").mkdir(parents=True, exist_ok=True)
    figure = plot(results, args.docs / "images" / "time_to_quality.png")
    text = summary(results)
    (args.out / "tables.md").write_text(text + "\n")
    print(text)
    log(f"wrote {args.out / 'results.json'} and {figure}")


if __name__ == "__main__":
    main(sys.argv[1:])
