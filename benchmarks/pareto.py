"""The Pareto study of issue 25 (item 3): CD against feature-KD and prune-only at the same MACs budgets.

Two studies, each the bundled recipe run by :func:`cdcompress.distill.run.run_recipe` with overrides:

- ``wct``: ``wct_vgg19_cpu`` at level 3 (the real WCT VGG-19 teacher, ``../shared/reference/wct-vgg19``; held out:
  ``../shared/images/style``);
- ``unet``: ``unet_denoise`` (the U-Net denoiser of ``runs/denoise/teacher``; held out: skimage-heldout).

At every budget (a share of the teacher encoder's MACs at the recipe's ``data.eval_size``, ``student.target.macs``)
the width search chooses the student's widths (allocation ``auto``: sensitivity with calibration data), then three
methods train it with the same steps:

- **CD**: the recipe as it is (stage 2: collaborator loss + beta x embedding loss; stage 3: the student's decoder);
- **feature-KD**: ``objective.kind=feature-kd`` (stage 2: the embedding loss only);
- **prune-only**: ``stages.distill.enabled=false``, ``stages.decoder.init=pruned`` (the L1-pruned student; only
  stage 3 trains; so it spends less compute than the other two).

Held-out PSNR is the run's own ``student_psnr`` (the student encoder with its stage-3 decoder). Latency is then
measured once per distinct architecture (and for the teacher pair) on the deploy runtime ``bundle`` (ONNX Runtime,
fp32, CPU, one thread) at the eval size: the median of ``--rounds`` medians of ``--repeats`` timed runs.

Runs are resumable: an arm whose ``report.json`` exists under ``--out`` with the same overrides is reused.

    OMP_NUM_THREADS=1 python benchmarks/pareto.py --study both          # both studies, runs/pareto, docs/images/pareto.png
    python benchmarks/pareto.py --study unet --quick --out /tmp/p        # a smoke run (~45 s on a quiet machine)
    python benchmarks/pareto.py --study both --report-only               # table + figure from runs/pareto/results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(Path(__file__).resolve().parent))

METHODS: dict[str, list[str]] = {
    "CD": [],
    "feature-KD": ["objective.kind=feature-kd"],
    "prune-only": ["stages.distill.enabled=false", "stages.decoder.init=pruned"],  # no trained Q to fold
}
STUDIES: dict[str, dict[str, Any]] = {
    "wct": {"recipe": "wct_vgg19_cpu", "level": 3, "base": ["levels=[3]"], "size": 256,
            "needs": [SHARED / "reference" / "wct-vgg19", SHARED / "images" / "style"],
            "steps": 100, "decoder_steps": 200, "title": "WCT VGG-19 level 3 (real teacher)"},
    "unet": {"recipe": "unet_denoise", "level": 1, "base": [], "size": 256,
             "needs": [ROOT / "runs" / "denoise" / "teacher" / "model.json"],
             "steps": 200, "decoder_steps": 800, "title": "U-Net denoiser (sigma 0.1)"},
}
QUICK = {"size": 32, "steps": 2, "decoder_steps": 2, "budgets": [15.0, 50.0], "repeats": 2, "rounds": 1}
DATE = "2026-12-02"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def missing(study: str) -> list[str]:
    return [str(p) for p in STUDIES[study]["needs"] if not p.exists()]


def use_quick_unet_teacher(out: Path) -> None:
    """A smoke run without the real U-Net teacher trains a tiny one (denoise_unet's --quick teacher, ~40 steps) under
    ``out`` and points the study at it, so a fresh clone (and CI) runs the whole pipeline."""
    import denoise_unet

    settings = denoise_unet.Settings(**denoise_unet.QUICK)
    photos = denoise_unet.photo_split(out)
    denoise_unet.load_or_train_teacher(photos.train, settings, out, retrain=False)
    teacher = (out / "teacher").resolve()
    STUDIES["unet"] = {**STUDIES["unet"], "base": [f"teacher.path={teacher}"], "needs": [teacher / "model.json"]}
    log(f"unet: quick run on a tiny teacher trained in {teacher} (the real one is runs/denoise/teacher)")


def share_label(share: float) -> str:
    return f"{share:g}%"


def arm_overrides(study: str, share: float, method: str, size: int, steps: int, decoder_steps: int,
                  quick: bool = False) -> list[str]:
    every = max(steps, decoder_steps) // 4
    every = every if every >= 10 else 0  # a smoke run draws no learning curve
    sets = [*STUDIES[study]["base"], f"student.target.macs={share_label(share)}", f"student.target.size={size}",
            f"data.eval_size={size}", f"stages.distill.steps={max(steps, 1)}", f"stages.decoder.steps={decoder_steps}",
            f"output.eval_every={every}", f"output.checkpoint_every={100_000}", f"output.sample_every={100_000}",
            f"output.log_every={max(1, every // 2)}"]
    if quick:  # the smoke run: one width search each, by one ratio (no per-layer sensitivity probes)
        sets.append("student.target.allocation=uniform")
    return sets + METHODS[method]


def run_arm(study: str, run_dir: Path, sets: list[str]) -> dict[str, Any]:
    """One recipe run, reused when its report exists with the same overrides; returns report + wall seconds."""
    from cdcompress.distill.recipe import check_paths, load_recipe
    from cdcompress.distill.run import run_recipe

    config, report_path, wall_path = run_dir / "config.json", run_dir / "report.json", run_dir / "wall.json"
    if report_path.is_file() and config.is_file() and json.loads(config.read_text()) == sets:
        wall = json.loads(wall_path.read_text())["wall_s"] if wall_path.is_file() else None
        return {"report": json.loads(report_path.read_text()), "wall_s": wall, "reused": True}
    recipe = load_recipe(STUDIES[study]["recipe"], overrides=sets)
    check_paths(recipe, STUDIES[study]["recipe"])
    run_dir.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps(sets))
    start = time.perf_counter()
    report = run_recipe(recipe, run_dir).report
    wall = time.perf_counter() - start
    wall_path.write_text(json.dumps({"wall_s": wall}))
    return {"report": json.loads(report_path.read_text()) if report_path.is_file() else report, "wall_s": wall,
            "reused": False}


# ---------------------------------------------------------------- latency on the deploy runtime
def architecture(encoder: Any, decoder: Any) -> str:
    """A key equal for two pairs exactly when every parameter has the same name and shape."""
    shapes = [f"e.{n}:{tuple(p.shape)}" for n, p in encoder.state_dict().items()]
    shapes += [f"d.{n}:{tuple(p.shape)}" for n, p in decoder.state_dict().items()]
    return ";".join(shapes)


def bundle_ms(encoder: Any, decoder: Any, size: int, repeats: int, rounds: int) -> dict[str, Any]:
    from cdcompress.cost.latency import measure_latency

    medians = [measure_latency(encoder, decoder, (1, 3, size, size), "bundle", threads=1, repeats=repeats)
               for _ in range(rounds)]
    return {"ms": statistics.median(medians), "rounds_ms": medians, "repeats": repeats,
            "load_avg": list(os.getloadavg())}


def teacher_pair(study: str, sets: list[str]) -> tuple[Any, Any]:
    from cdcompress.distill.recipe import load_recipe
    from cdcompress.distill.run import load_teacher

    recipe = load_recipe(STUDIES[study]["recipe"], overrides=sets)
    teacher = load_teacher(recipe.teacher, STUDIES[study]["level"])
    return teacher.encoder, teacher.decoder


# ---------------------------------------------------------------- one study
def run_study(study: str, args: argparse.Namespace, results: dict[str, Any]) -> None:
    import torch

    from cdcompress import load
    from cdcompress.cost.static import count_macs

    spec = STUDIES[study]
    level = spec["level"]
    size = QUICK["size"] if args.quick else spec["size"]
    steps = args.steps if args.steps is not None else (QUICK["steps"] if args.quick else spec["steps"])
    decoder_steps = (args.decoder_steps if args.decoder_steps is not None
                     else QUICK["decoder_steps"] if args.quick else spec["decoder_steps"])
    budgets = args.budgets or (QUICK["budgets"] if args.quick else [8.0, 15.0, 30.0, 50.0])
    repeats = args.repeats or (QUICK["repeats"] if args.quick else 9)
    rounds = args.rounds or (QUICK["rounds"] if args.quick else 5)
    entry = results.setdefault("studies", {}).setdefault(study, {})
    entry.update({"recipe": spec["recipe"], "level": level, "size": size, "steps": steps,
                  "decoder_steps": decoder_steps, "budgets": budgets, "title": spec["title"]})
    arms = entry.setdefault("arms", {})
    latency = entry.setdefault("latency", {})
    log(f"{study}: {len(budgets)} budgets x {len(METHODS)} methods, stage 2 {steps} steps, stage 3 {decoder_steps}")

    for share in budgets:  # training
        for method in METHODS:
            key = f"{share_label(share)}/{method}"
            run_dir = Path(args.out) / study / f"macs{share:g}" / method
            sets = arm_overrides(study, share, method, size, steps, decoder_steps, args.quick)
            log(f"{study} {key}: {'reuse' if (run_dir / 'report.json').is_file() else 'train'} {run_dir}")
            done = run_arm(study, run_dir, sets)
            rep = done["report"]["levels"][str(level)]
            search = rep["budget"]
            model = load(run_dir / "student")
            encoder, decoder = model.encoder(level), model.decoder(level)
            recount = count_macs(encoder, (1, 3, size, size))
            stage = done["report"].get("stage_seconds", {})
            arms[key] = {
                "study": study, "budget": share, "method": method, "run_dir": str(run_dir), "overrides": sets,
                "widths": search["widths"], "allocation": search["allocation"],
                "encoder_params": rep["student_encoder_params"], "teacher_encoder_params": rep["teacher_encoder_params"],
                "macs_goal": search["goal"], "macs_measured": search["measured"], "macs_recounted": recount,
                "teacher_macs": search["teacher_cost"], "share_measured": search["measured"] / search["teacher_cost"],
                "error": search["error"], "met": search["met"], "student_psnr": rep["student_psnr"],
                "student_ssim": rep.get("student_ssim"), "teacher_psnr": rep["teacher_psnr"],
                "wall_s": done["wall_s"], "stage_seconds": stage, "architecture": architecture(encoder, decoder),
            }
            entry["teacher_psnr"] = rep["teacher_psnr"]
            save(results, args)
            torch.set_num_threads(1)

    entry["same_widths"] = {share_label(s): len({json.dumps(arms[f"{share_label(s)}/{m}"]["widths"], sort_keys=True)
                                                  for m in METHODS}) == 1 for s in budgets}

    # latency: every distinct student architecture once, then the teacher pair
    for key, arm in arms.items():
        if arm["budget"] not in budgets:
            continue
        if arm["architecture"] in latency and not args.remeasure:
            continue
        model = load(Path(arm["run_dir"]) / "student")
        log(f"{study} {key}: bundle latency at {size}x{size}")
        latency[arm["architecture"]] = bundle_ms(model.encoder(level), model.decoder(level), size, repeats, rounds)
        save(results, args)
    if "teacher_latency" not in entry or args.remeasure:
        log(f"{study}: teacher bundle latency at {size}x{size}")
        encoder, decoder = teacher_pair(study, arm_overrides(study, budgets[0], "CD", size, steps, decoder_steps, args.quick))
        entry["teacher_latency"] = bundle_ms(encoder, decoder, size, repeats, rounds)
        from cdcompress.surgery.modules import count_parameters

        entry["teacher_encoder_params"] = count_parameters(encoder)
    for arm in arms.values():
        arm["latency_ms"] = latency[arm["architecture"]]["ms"] if arm["architecture"] in latency else None
    save(results, args)


def save(results: dict[str, Any], args: argparse.Namespace) -> None:
    path = Path(args.out) / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True))
    tmp.replace(path)


# ---------------------------------------------------------------- table and figure
def widths_text(widths: dict[str, int]) -> str:
    return "-".join(str(w) for name, w in widths.items() if name.startswith("encoder."))


def rows(results: dict[str, Any], studies: list[str]) -> list[dict[str, Any]]:
    out = []
    for study in studies:
        entry = results.get("studies", {}).get(study)
        if not entry:
            continue
        if "teacher_latency" in entry:
            out.append({"study": study, "budget": 100.0, "method": "teacher",
                        "encoder_params": entry.get("teacher_encoder_params"), "widths": None,
                        "share_measured": 1.0, "error": 0.0, "met": True,
                        "latency_ms": entry["teacher_latency"]["ms"], "student_psnr": entry.get("teacher_psnr"), "wall_s": None})
        for share in entry["budgets"]:
            for method in METHODS:
                arm = entry["arms"].get(f"{share_label(share)}/{method}")
                if arm:
                    out.append(arm)
    return out


def table(results: dict[str, Any], studies: list[str]) -> str:
    lines = ["| study | budget (MACs) | method | encoder widths (params) | MACs share measured vs target (error) "
             "| bundle latency (ms) | held-out PSNR (dB) | wall (s) |",
             "|---|---:|---|---|---:|---:|---:|---:|"]
    for row in rows(results, studies):
        widths = widths_text(row["widths"]) if row["widths"] else "full"
        params = f"{row['encoder_params']:,}" if row.get("encoder_params") else "?"
        share = f"{100 * row['share_measured']:.2f}% vs {share_label(row['budget'])} ({100 * row['error']:+.2f}%)"
        ms = f"{row['latency_ms']:.2f}" if row.get("latency_ms") is not None else "n/a"
        psnr = f"{row['student_psnr']:.2f}" if row.get("student_psnr") is not None else "n/a"
        wall = f"{row['wall_s']:.0f}" if row.get("wall_s") is not None else "-"
        lines.append(f"| {row['study']} | {share_label(row['budget'])} | {row['method']} | {widths} ({params}) | {share} "
                     f"| {ms} | {psnr} | {wall} |")
    return "\n".join(lines)


def figure(results: dict[str, Any], studies: list[str], out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from plotting import finish_axes, save_figure

    present = [s for s in studies if results.get("studies", {}).get(s, {}).get("arms")]
    if not present:
        return None
    fig, axes = plt.subplots(1, len(present), figsize=(5.2 * len(present), 4.2), squeeze=False)
    styles = {"CD": ("tab:blue", "o"), "feature-KD": ("tab:orange", "s"), "prune-only": ("tab:gray", "^")}
    for ax, study in zip(axes[0], present, strict=True):
        entry = results["studies"][study]
        for method, (colour, marker) in styles.items():
            points = sorted((a["latency_ms"], a["student_psnr"], a["budget"]) for a in entry["arms"].values()
                            if a["method"] == method and a.get("latency_ms") is not None and a["budget"] in entry["budgets"])
            if not points:
                continue
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=marker, color=colour, label=method)
            if method == "CD":
                for x, y, share in points:
                    ax.annotate(f"{share:g}% MACs", (x, y), textcoords="offset points", xytext=(4, 5), fontsize=7)
        if "teacher_latency" in entry and entry.get("teacher_psnr") is not None:
            ax.plot([entry["teacher_latency"]["ms"]], [entry["teacher_psnr"]], marker="*", markersize=14,
                    color="black", linestyle="none", label="teacher")
        finish_axes(ax, f"{entry['title']}\nstage 2 {entry['steps']} + stage 3 {entry['decoder_steps']} steps",
                    f"latency, ONNX Runtime fp32 CPU 1 thread, {entry['size']}² (ms)", "held-out PSNR (dB)",
                    log_x=True)
        from matplotlib.ticker import FuncFormatter

        plain = FuncFormatter(lambda value, _: f"{value:g}")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain)
        ax.tick_params(axis="x", which="minor", labelsize=7)
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", choices=["wct", "unet", "both"], default="both")
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke run (64² eval, 2+2 steps, 2 budgets)")
    parser.add_argument("--out", default=str(ROOT / "runs" / "pareto"))
    parser.add_argument("--budgets", type=float, nargs="+", help="MACs shares of the teacher encoder in %% (8 15 30 50)")
    parser.add_argument("--steps", type=int, help="stage-2 steps (per study default: wct 100, unet 200)")
    parser.add_argument("--decoder-steps", type=int, help="stage-3 steps (per study default: wct 200, unet 800)")
    parser.add_argument("--repeats", type=int, help="timed runs per latency median (default 9)")
    parser.add_argument("--rounds", type=int, help="latency medians whose median is reported (default 5)")
    parser.add_argument("--remeasure", action="store_true", help="measure latency again even where recorded")
    parser.add_argument("--report-only", action="store_true", help="table and figure from results.json, no runs")
    parser.add_argument("--figure", help="the PNG (default docs/images/pareto.png; --quick: OUT/pareto.png)")
    args = parser.parse_args(argv)
    os.chdir(ROOT)  # the recipes' relative paths (../shared, runs/denoise) are the repository's
    import torch

    torch.set_num_threads(1)
    studies = ["wct", "unet"] if args.study == "both" else [args.study]
    results_path = Path(args.out) / "results.json"
    results: dict[str, Any] = json.loads(results_path.read_text()) if results_path.is_file() else {}
    results.update({"date": DATE, "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                    "1 thread", "quick": args.quick})
    ran = []
    for study in studies:
        if args.report_only:
            continue
        if study == "unet" and args.quick and missing(study):
            use_quick_unet_teacher(Path(args.out))
        gone = missing(study)
        if gone:
            log(f"{study}: skipped, missing {', '.join(gone)}")
            continue
        run_study(study, args, results)
        ran.append(study)
    save(results, args)
    print(table(results, studies))
    default = Path(args.out) / "pareto.png" if args.quick else ROOT / "docs" / "images" / "pareto.png"
    fig = Path(args.figure) if args.figure else default
    written = figure(results, studies, fig)
    log(f"results {results_path}" + (f", figure {written}" if written else ""))
    return 0 if ran or args.report_only else 2


if __name__ == "__main__":
    raise SystemExit(main())
