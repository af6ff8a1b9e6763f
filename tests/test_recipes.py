"""Recipes: bundled ones validate, broken ones fail in one line with exit code 2, overrides and extends work."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from cdcompress.cli import main
from cdcompress.distill.recipe import RecipeError, bundled_recipes, load_recipe

VALID = textwrap.dedent(
    """
    name: tiny
    levels: [1]
    teacher: {source: builtin, path: vgg19, pretrained: none}
    collaborator: {source: train}
    student: {width: 0.5}
    data: {train: [skimage], eval: [skimage-heldout], resize: 40, crop: 32, eval_size: 48}
    stages:
      collaborator: {steps: 4, batch: 2, lr: 1.0e-3}
      distill: {steps: 4, batch: 2, lr: 1.0e-3}
      decoder: {steps: 4, batch: 2, lr: 1.0e-3}
    output: {checkpoint_every: 2, sample_every: 4, log_every: 1}
    """
)

BROKEN = {
    "bad_yaml": ("name: x\nlevels: [1\n", "invalid YAML at line"),
    "empty": ("", "empty file"),
    "top_level_list": ("- 1\n- 2\n", "top level must be a mapping"),
    "unknown_key": (VALID.replace("stages:", "stagez: {}\nstages:"), "did you mean 'stages'"),
    "unknown_nested_key": (VALID.replace("decoder: {steps: 4, batch: 2,", "decoder: {lrr: 2, steps: 4, batch: 2,"),
                           "stages.decoder.lrr"),
    "wrong_type": (VALID.replace("levels: [1]", "levels: one"), "levels"),
    "lr_string": (VALID.replace("distill: {steps: 4, batch: 2, lr: 1.0e-3}", "distill: {steps: 4, batch: 2, lr: fast}"),
                  "stages.distill.lr"),
    "negative_steps": (VALID.replace("distill: {steps: 4", "distill: {steps: -4"), "stages.distill.steps"),
    "missing_section": (VALID.replace("teacher: {source: builtin, path: vgg19, pretrained: none}\n", ""), "teacher"),
    "bad_level": (VALID.replace("levels: [1]", "levels: [7]"), "levels"),
    "bad_width": (VALID.replace("width: 0.5", "width: 1.5"), "student.width"),
    "crop_too_big": (VALID.replace("crop: 32", "crop: 64"), "crop 64 is larger than resize 40"),
    "missing_teacher_path": (VALID.replace("{source: builtin, path: vgg19, pretrained: none}",
                                           "{source: model, path: /nonexistent/model}"), "teacher.path"),
    "missing_data_folder": (VALID.replace("train: [skimage]", "train: [/nonexistent/photos]"), "data.train"),
    "empty_data_folder": (VALID.replace("train: [skimage]", "train: [EMPTY]"), "no images"),
    "unknown_objective": (VALID + "objective: {kind: magic}\n", "objective.kind"),
    "extends_missing": ("extends: no_such_recipe\n" + VALID, "not found"),
    "extends_cycle": ("extends: SELF\n" + VALID, "extends itself"),
    "style_without_style_data": (VALID + "objective: {kind: style-transfer}\n", "data.style"),
    "bad_device": (VALID + "device: tpu\n", "device"),
}


def run(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_recipe_is_one_line_exit_2(case: str, tmp_path: Path) -> None:
    text, needle = BROKEN[case]
    (tmp_path / "EMPTY").mkdir()
    path = tmp_path / f"{case}.yaml"
    path.write_text(text.replace("SELF", str(path)).replace("EMPTY", str(tmp_path / "EMPTY")))
    code, out = run("distill", "--recipe", path, "--out", tmp_path / "run")
    assert code == 2, out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: recipe") and "Traceback" not in out, out
    assert needle in lines[0], lines[0]
    assert not (tmp_path / "run").exists(), "a failed validation must not start the run"


def test_bad_override_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(VALID)
    code, out = run("distill", "--recipe", path, "--set", "stages.distill.lr", "--out", tmp_path / "r")
    assert code == 2 and "a.b.c=value" in out
    code, out = run("distill", "--recipe", path, "--set", "stages.distill.stepz=3", "--out", tmp_path / "r")
    assert code == 2 and "did you mean 'steps'" in out


def test_bundled_recipes_validate_and_show() -> None:
    names = set(bundled_recipes())
    assert {"demo", "wct_vgg19", "adain_vgg19", "cd16x_half"} <= names
    for name in names:
        load_recipe(name)
    code, out = run("recipes")
    assert code == 0 and all(name in out for name in names)
    code, out = run("recipes", "show", "wct_vgg19", "--set", "stages.distill.lr=3e-4")
    shown = yaml.safe_load(out)
    assert code == 0 and shown["stages"]["distill"]["lr"] == 3e-4 and shown["student"]["level_width"] == {1: {"conv11": 24}}
    assert shown["embed"]["beta"] == 10.0 and shown["data"]["crop"] == 256


def test_wct_vgg19_is_the_authors_training_script() -> None:
    """The paper's recipe holds the official settings (main.py of MingSun-Tse/Collaborative-Distillation): student
    stage lw_feat 10 / lw_pixl 1 / lw_perc 1 at relu1_1..relu{k}_1, small decoder pixel + 0.01 perceptual, both
    from L1-pruned copies, Adam 1e-4 without schedule, batch 16, resize 300 / crop 256, 20 epochs."""
    recipe = load_recipe("wct_vgg19")
    assert recipe.levels == [1, 2, 3, 4, 5] and recipe.collaborator.source == "train"  # their own BD, 30 epochs
    collaborator = recipe.stages.collaborator
    assert (collaborator.enabled, collaborator.epochs, collaborator.batch, collaborator.lr) == (True, 30, 16, 1e-4)
    assert (collaborator.lambda_p, collaborator.refit_output) == (None, False)
    assert (recipe.student.width, recipe.student.level_width) == (0.25, {1: {"conv11": 24}})
    assert (recipe.student.importance, recipe.student.init) == ("l1", "pruned")
    assert (recipe.embed.taps, recipe.embed.beta) == ("level", 10.0)
    assert (recipe.objective.kind, recipe.objective.lambda_p, recipe.objective.perceptual_taps) == ("reconstruction", 1.0,
                                                                                                     None)
    assert (recipe.data.resize, recipe.data.crop) == (300, 256)
    for stage in (recipe.stages.distill, recipe.stages.decoder):
        assert (stage.optimizer, stage.lr, stage.schedule, stage.batch, stage.epochs) == ("adam", 1e-4, "constant", 16, 20)
        assert (stage.weight_decay, stage.warmup_steps, stage.grad_clip, stage.accumulate) == (0, 0, 0, 1)
    assert recipe.stages.distill.lambda_p is None  # the objective's 1
    decoder = recipe.stages.decoder
    assert (decoder.lambda_p, decoder.init, decoder.refit_output) == (0.01, "pruned", False)


def test_level_one_recipe_changes_only_length_data_and_device() -> None:
    """wct_vgg19_l1 is the authors' recipe at its full length on a CPU: every training choice is inherited, but for
    the one-conv collaborator solved by least squares instead of trained for 30 epochs."""
    official, level_one = load_recipe("wct_vgg19").model_dump(), load_recipe("wct_vgg19_l1").model_dump()
    for key in ("student", "embed", "objective", "collaborator"):
        assert level_one[key] == official[key], key
    for stage, steps in (("collaborator", 1), ("distill", 103_479), ("decoder", 103_479)):
        ours, theirs = dict(level_one["stages"][stage]), dict(official["stages"][stage])
        assert (ours.pop("steps"), ours.pop("epochs"), theirs.pop("steps")) == (steps, None, None)
        assert theirs.pop("epochs") * 82_783 / 16 == pytest.approx(103_479, abs=1) or stage == "collaborator"
        if stage == "collaborator":
            assert (ours.pop("refit_output"), theirs.pop("refit_output")) == (True, False)
        assert ours == theirs, stage
    assert (level_one["data"]["resize"], level_one["data"]["crop"]) == (300, 256)


def test_extends_merges_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(VALID)
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nname: child\nstages:\n  distill: {steps: 9}\n")
    recipe = load_recipe(tmp_path / "child.yaml", ["student.width=0.25"])
    assert recipe.name == "child" and recipe.stages.distill.steps == 9 and recipe.stages.distill.batch == 2
    assert recipe.stages.decoder.steps == 4 and recipe.student.width == 0.25
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "nothing.yaml")


def test_tiny_run_writes_every_output_and_resumes(tmp_path: Path) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(VALID)
    out = tmp_path / "run"
    code, text = run("distill", "--recipe", path, "--out", out)
    assert code == 0, text
    assert "comparison.png" in text and "heldout.png" not in text  # what was written, nothing that was not
    for name in ("config.yaml", "metrics.jsonl", "loss.png", "comparison.png", "report.md", "report.json",
                 "student/model.json"):
        assert (out / name).is_file(), name
    assert list((out / "samples").glob("*.png")) and list((out / "checkpoints").glob("distill_L1_step*.pt"))
    report = (out / "report.md").read_text()
    assert "RANDOMLY INITIALISED" in report and "student PSNR" in report
    from cdcompress import load

    student = load(out / "student")
    assert student.levels == [1] and student.encoders[1].spec.widths == (32,)
    code, text = run("distill", "--recipe", path, "--out", out)
    assert code == 2 and "--resume" in text
    code, text = run("distill", "--recipe", path, "--out", out, "--resume")
    assert code == 0, text


def test_refit_output_finishes_stage_three_with_the_least_squares_output_conv(tmp_path: Path) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(VALID)
    code, text = run("distill", "--recipe", path, "--out", tmp_path / "run", "--set", "stages.decoder.refit_output=true",
                     "--set", "stages.collaborator.refit_output=true")
    assert code == 0, text
    notes = [n for n in json.loads((tmp_path / "run" / "report.json").read_text())["notes"]
             if "refitted by least squares" in n]
    assert [n.split("'s output")[0] for n in notes] == ["level 1: collaborator", "level 1: student decoder"]
    for note in notes:
        before, after = (float(v) for v in note.split("held-out ")[1].removesuffix(" dB").split(" -> "))
        assert after > before  # the solve beats 4 Adam steps on the held-out photos


def test_a_run_that_failed_before_training_can_be_run_again(tmp_path: Path) -> None:
    """No checkpoint, nothing to resume: the failed run's config.yaml must not make the same command refuse."""
    from cdcompress.core.errors import CDCompressError
    from cdcompress.distill.run import run_recipe

    path = tmp_path / "broken.yaml"
    path.write_text(VALID.replace("teacher: {source: builtin, path: vgg19, pretrained: none}",
                                  f"teacher: {{source: model, path: {tmp_path / 'no-teacher'}}}"))
    out = tmp_path / "run"
    for _ in range(2):  # the second attempt fails for the same reason, not for "already holds a run"
        with pytest.raises(CDCompressError) as failure:
            run_recipe(load_recipe(path), out)
        assert "already holds a run" not in str(failure.value) and "no-teacher" in str(failure.value)
        assert not (out / "config.yaml").exists()


def test_amp_off_written_bare_in_yaml(tmp_path: Path) -> None:
    """YAML reads a bare `off` as a boolean; found when a GPU run's recipe said `amp: off`."""
    (tmp_path / "base.yaml").write_text(VALID)
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nstages:\n  distill: {steps: 9, amp: off}\n")
    assert load_recipe(tmp_path / "child.yaml").stages.distill.amp == "off"
    assert load_recipe(tmp_path / "base.yaml", ["stages.distill.amp=off"]).stages.distill.amp == "off"
    assert load_recipe(tmp_path / "base.yaml", ["stages.distill.amp=bf16"]).stages.distill.amp == "bf16"
    with pytest.raises(RecipeError, match="amp"):
        load_recipe(tmp_path / "base.yaml", ["stages.distill.amp=on"])


def test_channels_last_and_bf16_train_on_cpu(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """CPU stages honour channels_last, and amp bf16 where the CPU has native bf16 (else one warning, float32)."""
    from cdcompress.distill.trainer import autocast_applies, cpu_has_bf16

    path = tmp_path / "tiny.yaml"
    path.write_text(VALID)
    sets = [f"stages.{stage}.{key}" for stage in ("collaborator", "distill", "decoder")
            for key in ("channels_last=true", "amp=bf16")]
    code, text = run("distill", "--recipe", path, "--out", tmp_path / "run", *[a for s in sets for a in ("--set", s)])
    assert code == 0, text
    losses = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    totals = [r["total"] for r in losses if "total" in r]
    assert totals and all(math.isfinite(t) for t in totals)
    assert autocast_applies("bf16", torch.device("cpu")) == cpu_has_bf16()
    with caplog.at_level("WARNING"):
        assert not autocast_applies("fp16", torch.device("cpu"))
    assert "does not apply on cpu" in caplog.text
    assert not autocast_applies("off", torch.device("cpu"))


@pytest.mark.parametrize("init", ["lstsq", "random"])
def test_embed_init_decides_whether_stage_two_fits_q_first(init: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from cdcompress.distill.distiller import Distiller
    from cdcompress.distill.run import run_recipe

    fitted: list[int] = []
    original = Distiller.prepare
    monkeypatch.setattr(Distiller, "prepare", lambda self, batch: (fitted.append(1), original(self, batch))[1])
    path = tmp_path / "tiny.yaml"
    path.write_text(VALID)
    run_recipe(load_recipe(path, overrides=[f"embed.init={init}"]), tmp_path / "run")
    assert len(fitted) == (1 if init == "lstsq" else 0)
