"""``distill --dry-run``: what a recipe will do, resolved and measured, before hours of training.

The plan loads each level's teacher and collaborator, measures the collaborator's reconstruction on
the eval images (the number that decides whether distillation can work at all), slims a copy to
report the student's and the stage-3 decoder's per-layer widths and parameters, counts the training
images that can be used, and lists steps per stage and the outputs. Nothing is trained or written
(bundled photos are staged in a temporary folder).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..core.errors import CDCompressError, ImageError
from ..data.images import open_image
from .recipe import Recipe
from .run import RecipeRun, stage_config


def usable_images(paths: list[Path], min_side: int) -> tuple[int, list[str]]:
    """How many files decode (header only) with both sides >= ``min_side``; reasons for the rest."""
    usable, skipped = 0, []
    for path in paths:
        try:
            with open_image(path) as img:
                ok = min(img.size) >= min_side
        except ImageError as exc:
            skipped.append(str(exc))
            continue
        if ok:
            usable += 1
        else:
            skipped.append(f"{path}: smaller than {min_side} px")
    return usable, skipped


def plan(recipe: Recipe, out_dir: Path) -> str:
    """The resolved plan as Markdown."""
    from ..data.batches import MIN_TRAIN_SIDE

    with tempfile.TemporaryDirectory(prefix="cdcompress-plan-") as scratch:
        run = RecipeRun(recipe, Path(scratch))
        usable, skipped = usable_images(run.train_paths, MIN_TRAIN_SIDE)
        if not usable:
            raise CDCompressError(f"recipe {recipe.name}: none of the {len(run.train_paths)} training images is usable")
        lines = [f"# plan: recipe {recipe.name}", "",
                 f"- teacher: source {recipe.teacher.source}, {recipe.teacher.path}",
                 f"- training images: {usable} usable of {len(run.train_paths)}"
                 + (f" (skipped: {'; '.join(skipped[:5])})" if skipped else ""),
                 f"- device {recipe.device}, seed {recipe.seed}"]
        levels = run.levels()
        lines += [f"- levels: {levels}" + (f" ({run.notes[-1]})" if run.notes else ""), ""]
        for level in levels:
            lines += _level_plan(run, level)
    stages = recipe.stages
    lines += ["## steps per stage", "", "| stage | steps | batch | lr |", "|---|---:|---:|---:|"]
    trains_collaborator = recipe.collaborator.source == "train"
    for name, stage, runs in (("collaborator (stage 1)", stages.collaborator, trains_collaborator),
                              ("distill (stage 2)", stages.distill, True), ("decoder (stage 3)", stages.decoder, True)):
        if stage.enabled and runs:
            lines.append(f"| {name} | {stage_config(recipe, stage, usable).steps:,} | {stage.batch} | {stage.lr:g} |")
    lines += ["", f"## outputs in {out_dir}", "",
              "student/ (model directory), report.md, report.json, loss.png, comparison.png, metrics.jsonl, "
              "checkpoints/, samples/, config.yaml (and tensorboard/<stage>/ with the tensorboard extra)"]
    return "\n".join(lines)


def _level_plan(run: RecipeRun, level: int) -> list[str]:
    from .stages import CollaboratorStage, DistillStage, LevelState, fresh_decoder
    from .teachers import load_teacher

    state = LevelState(level, load_teacher(run.recipe.teacher, level))
    lines = [f"## level {level}", "", f"teacher: {state.teacher.note}"]
    if run.recipe.collaborator.source == "teacher":
        CollaboratorStage().run(run, state)  # the teacher's own decoder: nothing is trained, only measured
        measured = run.collaborator_psnr.get(level)
        lines.append("collaborator: the teacher's decoder, reconstruction "
                     + (f"{measured:.2f} dB on the eval images" if measured is not None else "not measured (no eval images)"))
    else:
        teacher = state.teacher
        state.collaborator = teacher.decoder if teacher.decoder is not None else fresh_decoder(teacher.encoder, level)
        start = "the teacher's decoder" if teacher.decoder is not None else "a fresh decoder"
        lines.append(f"collaborator: trained in stage 1, starting from {start}")
    distiller = DistillStage().prepare(run, state)
    lines += ["", distiller.slimmed.summary(), ""]
    return lines
