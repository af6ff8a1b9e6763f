"""What a finished run shows people: report.md/json, loss curves and a comparison image."""

from __future__ import annotations

import json
import platform
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..core.atomic import write_json
from ..cost.static import count_macs
from ..data.annotate import with_header
from ..data.images import center_square, save_image
from ..evaluation.metrics import psnr, ssim
from ..models.format import CDModel
from ..surgery.modules import EncoderDecoderPair, count_parameters
from .context import ReportContext

if TYPE_CHECKING:
    from .distiller import Distiller
    from .teachers import Teacher


@torch.no_grad()
def feature_errors(distiller: Distiller, image: torch.Tensor) -> dict[str, float]:
    """Relative error ||Q·F' - F||² / ||F||² per tap: how well the student (through its branches)
    reproduces the teacher's features."""
    teacher = distiller._teacher_features(image)
    embedded, _ = distiller.embedded_features(image)
    return {tap: float(F.mse_loss(q, teacher[tap]) / teacher[tap].pow(2).mean().clamp_min(1e-12))
            for tap, q in embedded.items()}


@torch.no_grad()
def evaluate_level(level: int, teacher: Teacher, collaborator: torch.nn.Module, distiller: Distiller,
                   student: CDModel, images: list[tuple[str, torch.Tensor]], device: torch.device) -> dict[str, Any]:
    rows = defaultdict(list)
    distiller.to(device)
    for _, image in images:
        x = image.to(device)
        teacher_out = collaborator(teacher.encoder(x)).clamp(0, 1)
        student_out = student.decoder(level)(student.encoder(level)(x)).clamp(0, 1)
        collab_out = distiller.collaborator(distiller.embedded_features(x)[1]).clamp(0, 1)
        rows["teacher_psnr"].append(psnr(teacher_out, x))
        rows["student_psnr"].append(psnr(student_out, x))
        rows["student_ssim"].append(ssim(student_out, x))
        rows["through_collaborator_psnr"].append(psnr(collab_out, x))
        for tap, err in feature_errors(distiller, x).items():
            rows[f"feature_error/{tap}"].append(err)
    return {k: sum(v) / len(v) for k, v in rows.items()}


#: Loss panels per row of loss.png at most, and each panel's size in inches (at ``PLOT_DPI``): 3 panels ≈ 1500 px wide.
PANELS_PER_ROW, PANEL_INCHES, PLOT_DPI = 3, (4.5, 3.2), 110


def _pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_series(metrics_path: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{stage: {term: [(step, value), ...]}}`` for the top-level loss terms of ``metrics.jsonl`` (per-tap terms
    such as ``embed/<tap>`` and the held-out curve are left out)."""
    series: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    if metrics_path.is_file():
        for line in metrics_path.read_text().splitlines():
            record = json.loads(line)
            for key, value in record.items():
                if key not in ("stage", "step", "lr", "time") and "/" not in key:
                    series[record["stage"]][key].append((record["step"], value))
    return {stage: dict(terms) for stage, terms in series.items() if terms}


def _panel_rows(stages: list[str]) -> list[list[str]]:
    """One row of panels per level when every stage is named ``<stage>_L<k>`` with at most ``PANELS_PER_ROW`` stages
    a level (collaborator | distill | decoder of a level side by side), else rows of ``PANELS_PER_ROW``."""
    by_level: dict[str, list[str]] = defaultdict(list)
    for stage in stages:
        level = re.fullmatch(r".*_(L\d+)", stage)
        by_level[level.group(1) if level else ""].append(stage)
    if "" not in by_level and all(len(row) <= PANELS_PER_ROW for row in by_level.values()):
        return list(by_level.values())
    return [stages[i : i + PANELS_PER_ROW] for i in range(0, len(stages), PANELS_PER_ROW)]


def loss_figure(series: dict[str, dict[str, list[tuple[int, float]]]]):
    """A grid of panels, one per stage: its loss terms against steps (log scale when every value is positive),
    axes labelled, a title and a legend each. Returns the matplotlib figure (one axes per stage)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    rows = _panel_rows(list(series))
    columns = max(len(row) for row in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(PANEL_INCHES[0] * columns, PANEL_INCHES[1] * len(rows)),
                             squeeze=False)
    for r, row in enumerate(rows):
        for c in range(columns):
            if c >= len(row):
                fig.delaxes(axes[r][c])
                continue
            ax, terms = axes[r][c], series[row[c]]
            for term, points in terms.items():
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, label=term, linewidth=1.3, marker="o" if len(steps) < 12 else None, markersize=3)
            if all(value > 0 for points in terms.values() for _, value in points):
                ax.set_yscale("log")
            ax.set_title(row[c], fontsize=11)
            ax.set_xlabel("step")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel("loss" + (" (log scale)" if ax.get_yscale() == "log" else ""))
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8, title="term", title_fontsize=8)
    fig.suptitle("Training loss per stage", fontsize=12)
    fig.tight_layout()
    return fig


def plot_losses(metrics_path: Path, out: Path) -> Path | None:
    """loss.png: :func:`loss_figure` for the run's ``metrics.jsonl`` (panels in rows of at most 3, ≈1500 px wide)."""
    series = loss_series(metrics_path)
    if not series:
        return None
    fig = loss_figure(series)
    fig.savefig(out, dpi=PLOT_DPI)
    _pyplot().close(fig)
    return out


def heldout_curves(metrics_path: Path) -> dict[str, list[tuple[int, float]]]:
    """``{stage: [(step, held-out PSNR), ...]}`` from the ``heldout/psnr`` records (``output.eval_every``)."""
    curves: dict[str, list[tuple[int, float]]] = defaultdict(list)
    if metrics_path.is_file():
        for line in metrics_path.read_text().splitlines():
            record = json.loads(line)
            if "heldout/psnr" in record:
                curves[record["stage"]].append((int(record["step"]), float(record["heldout/psnr"])))
    return dict(curves)


def plot_heldout(curves: dict[str, list[tuple[int, float]]], out: Path) -> Path | None:
    """The learning curve: held-out PSNR against steps, one line per stage (does more training pay?)."""
    if not curves:
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for stage, points in curves.items():
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, marker="o", markersize=3, linewidth=1.3, label=stage)
    ax.set_title("Held-out reconstruction during training", fontsize=12)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("held-out PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="stage", title_fontsize=8, ncol=3 if len(curves) > 4 else 1)
    fig.tight_layout()
    fig.savefig(out, dpi=PLOT_DPI)
    plt.close(fig)
    return out


def comparison_titles(level: int) -> list[str]:
    """The column titles of comparison.png."""
    return ["input", f"teacher (level {level})", f"student (level {level})"]


@torch.no_grad()
def comparison_image(images: list[tuple[str, torch.Tensor]], level: int, teacher: Teacher,
                     collaborator: torch.nn.Module, student: CDModel, out: Path, device: torch.device) -> Path | None:
    """Rows of input | teacher reconstruction | student reconstruction at ``level``, each photo's centred
    square (at most 256²) so rows of landscape and portrait photos line up; a header names the columns, the level
    and the held-out photos (top to bottom)."""
    rows, names = [], []
    for name, image in images[:3]:
        x = F.interpolate(image, scale_factor=256 / min(image.shape[-2:]), mode="area") if min(image.shape[-2:]) > 256 else image
        x = center_square(x, min(x.shape[-2:]) // 16 * 16).to(device)
        t = collaborator(teacher.encoder(x)).clamp(0, 1)
        s = student.decoder(level)(student.encoder(level)(x)).clamp(0, 1)
        rows.append(torch.cat([x, t, s], dim=-1).cpu())
        names.append(Path(name).stem)
    if not rows:
        return None
    width = min(r.shape[-1] for r in rows)
    grid = torch.cat([r[..., :width] for r in rows], dim=-2)
    title = f"level {level} · held-out: {', '.join(names)}"
    return save_image(with_header(grid, comparison_titles(level), title), out)


def write_outputs(run: ReportContext, student: CDModel, teachers: dict[int, tuple[Teacher, Any]],
                  distillers: dict[int, Distiller]) -> dict[str, Any]:
    recipe, run_dir = run.recipe, run.run_dir
    device = torch.device(recipe.device)
    student.to(device)  # already saved; its stage-2 encoder stayed on the host when stage 2 was skipped
    images = run.held_out_images()
    size = recipe.data.eval_size
    levels: dict[str, Any] = {}
    for level, (teacher, collaborator) in teachers.items():
        t_params, t_macs = _encoder_decoder_cost(teacher.encoder, collaborator, size)
        s_params, s_macs = _encoder_decoder_cost(student.encoder(level), student.decoder(level), size)
        entry: dict[str, Any] = {
            "teacher": teacher.note,
            "teacher_encoder_params": t_params,
            "student_encoder_params": s_params,
            "compression": round(t_params / s_params, 2),
            "teacher_gmacs": round(t_macs / 1e9, 3),
            "student_gmacs": round(s_macs / 1e9, 3),
            "student_widths": list(getattr(student.encoder(level), "spec", None).widths)
            if hasattr(student.encoder(level), "spec") else None,
        }
        search = distillers[level].slimmed.budget if level in distillers else None
        if search is not None:
            entry["budget"] = search.as_dict()
        if images:  # stage 2 may have been skipped: then no fit() put the distiller on the run's device
            entry.update(evaluate_level(level, teacher, collaborator, distillers[level], student, images, device))
        levels[str(level)] = entry
    deepest = max(teachers)
    comparison = comparison_image(images, deepest, *teachers[deepest], student, run_dir / "comparison.png", device)
    loss_png = plot_losses(run_dir / "metrics.jsonl", run_dir / "loss.png")
    curves = heldout_curves(run_dir / "metrics.jsonl")
    curve_png = plot_heldout(curves, run_dir / "heldout.png")
    report = {
        "recipe": recipe.name,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, {recipe.device}",
        "eval_images": [name for name, _ in images],
        "eval_size": size,
        "levels": levels,
        "stage_seconds": run.stage_seconds,
        "notes": run.notes,
        "heldout_curves": curves,
        "files": {"comparison": comparison.name if comparison else None, "loss": loss_png.name if loss_png else None,
                  "heldout": curve_png.name if curve_png else None},
    }
    write_json(run_dir / "report.json", report)
    (run_dir / "report.md").write_text(render_markdown(report))
    return report


def render_markdown(report: dict[str, Any]) -> str:
    lines = [f"# Run report: {report['recipe']}", "", f"{report['date']} · {report['machine']}", ""]
    for level, entry in report["levels"].items():
        lines.append(f"- level {level} teacher: {entry['teacher']}")
    lines += ["", f"## Size and cost (encoder + decoder MACs at {report['eval_size']}²)", "",
              "| level | teacher encoder params | student encoder params | compression | teacher GMACs | student GMACs |",
              "|---:|---:|---:|---:|---:|---:|"]
    for level, e in report["levels"].items():
        lines.append(f"| {level} | {e['teacher_encoder_params']:,} | {e['student_encoder_params']:,} | "
                     f"{e['compression']:.2f}x | {e['teacher_gmacs']:.2f} | {e['student_gmacs']:.2f} |")
    budgets = {level: e["budget"] for level, e in report["levels"].items() if e.get("budget")}
    if budgets:
        lines += ["", "## Budget (student.target)", "", "| level | target | goal | predicted | measured | error | widths |",
                  "|---:|---|---:|---:|---:|---:|---|"]
        for level, b in budgets.items():
            metric = next(m for m in ("params", "macs", "latency_ms") if b["budget"][m] is not None)
            lines.append(f"| {level} | {metric} {b['budget'][metric]} ({b['budget']['part']}) | {b['goal']:,.4g} | "
                         f"{b['predicted']:,.4g} | {b['measured']:,.4g} | {b['error']:+.1%}{'' if b['met'] else ' NOT met'} | "
                         f"{b['allocation']} |")
    if report["eval_images"]:
        lines += ["", f"## Reconstruction on held-out images ({', '.join(report['eval_images'])})", "",
                  "| level | teacher PSNR | student PSNR | student SSIM | via collaborator PSNR | feature error per tap |",
                  "|---:|---:|---:|---:|---:|---|"]
        for level, e in report["levels"].items():
            taps = ", ".join(f"{k.split('/', 1)[1]} {v:.3f}" for k, v in e.items() if k.startswith("feature_error/"))
            lines.append(f"| {level} | {e['teacher_psnr']:.2f} | {e['student_psnr']:.2f} | {e['student_ssim']:.4f} | "
                         f"{e['through_collaborator_psnr']:.2f} | {taps} |")
    lines += ["", "## Wall time per stage", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {name} | {sec:.1f} |" for name, sec in report["stage_seconds"].items()]
    if report["notes"]:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in report["notes"]]
    files = [f"![{k}]({v})" for k, v in report["files"].items() if v]
    if files:
        lines += ["", *files]
    return "\n".join(lines) + "\n"


def _encoder_decoder_cost(encoder: torch.nn.Module, decoder: torch.nn.Module, size: int) -> tuple[int, int]:
    """Parameters of ``encoder`` and MACs of encoder + decoder at ``size``² (the meta-device counter)."""
    return count_parameters(encoder), count_macs(EncoderDecoderPair(encoder, decoder), (1, 3, size, size))
