"""The paper's real teacher: the WCT VGG-19 conversion converts, reloads and reproduces its reference PSNR table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import SHARED

from cdcompress.cli import main
from cdcompress.evaluation.evaluate import reconstruction
from cdcompress.models import load

WCT = SHARED / "reference" / "wct-vgg19"
#: ../shared/reference/wct-vgg19/README.md: decoder k (encoder k (x)), clamped, cropped top-left to multiples of 16.
REFERENCE_PSNR = {
    1: {"content/in2.jpg": 34.92, "content/in4.jpg": 28.34, "style/in3.jpg": 25.71},
    2: {"content/in2.jpg": 40.92, "content/in4.jpg": 32.82, "style/in3.jpg": 30.40},
    3: {"content/in2.jpg": 32.30, "content/in4.jpg": 27.72, "style/in3.jpg": 25.51},
}


@pytest.fixture(scope="module")
def wct_dir() -> Path:
    if not (WCT / "vgg_normalised_conv3_1.pth").is_file():
        pytest.skip("../shared/reference/wct-vgg19 is not available")
    return WCT


@pytest.fixture(scope="module")
def teacher_dir(wct_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "wct"
    result = CliRunner().invoke(main, ["convert", "--from", "wct-pytorch", str(wct_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "encoder3, decoder1, decoder2, decoder3" in result.output
    return out


def test_converted_teacher_reproduces_the_reference_table(teacher_dir: Path, images_dir: Path) -> None:
    model = load(teacher_dir)
    for level, expected in REFERENCE_PSNR.items():
        results = reconstruction(model, level, [images_dir / name for name in expected])
        for result, (name, psnr) in zip(results, expected.items(), strict=True):
            assert abs(result.psnr_db - psnr) <= 0.05, (level, name, result.psnr_db, psnr)


def test_wct_architecture_is_recorded(teacher_dir: Path) -> None:
    spec = json.loads((teacher_dir / "model.json").read_text())
    parts = {(p["role"], p["level"]): p["spec"] for p in spec["parts"]}
    assert parts[("encoder", 3)]["ceil_pool"] is True and parts[("decoder", 1)]["output_relu"] is False
    model = load(teacher_dir)
    assert model.encoder(1).spec.widths == (64,) and model.encoder(3).pool1.ceil_mode
    assert not hasattr(model.decoder(2), "relu1_1"), "the WCT decoders end on the RGB conv, without ReLU"
    odd = model.encoder(2)(torch.rand(1, 3, 33, 35))
    assert odd.shape[-2:] == (17, 18)  # ceil-mode pooling keeps the last odd row/column


def test_mixed_or_missing_files_are_one_line(wct_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    empty = runner.invoke(main, ["convert", "--from", "wct-pytorch", str(tmp_path), "--out", str(tmp_path / "o")])
    assert empty.exit_code == 2 and "weights download wct-vgg19" in empty.output
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for k in (1, 2):
        for name in (f"vgg_normalised_conv{k}_1.pth", f"feature_invertor_conv{k}_1.pth"):
            shutil.copy(wct_dir / name, mixed / name)
    state = torch.load(mixed / "vgg_normalised_conv1_1.pth", weights_only=True)
    state["2.weight"] = state["2.weight"] + 1
    torch.save(state, mixed / "vgg_normalised_conv1_1.pth")
    result = runner.invoke(main, ["convert", "--from", "wct-pytorch", str(mixed), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "disagree at conv11.weight" in result.output, result.output
    assert not (tmp_path / "o").exists()


def test_headline_recipe_runs_from_the_converted_teacher(teacher_dir: Path, images_dir: Path, tmp_path: Path) -> None:
    small = ["--set", "device=cpu", "--set", f"teacher.path={teacher_dir}", "--set", f"data.train=[{images_dir / 'content'}]",
             "--set", f"data.eval=[{images_dir / 'style' / 'in3.jpg'}]", "--set", "data.resize=40", "--set", "data.crop=32",
             "--set", "data.workers=0", "--set", "data.eval_size=64", "--set", "levels=[1,2,4]"]
    for stage in ("distill", "decoder"):
        small += ["--set", f"stages.{stage}.steps=2", "--set", f"stages.{stage}.batch=2"]
    result = CliRunner().invoke(main, ["distill", "--recipe", "wct_vgg19", *small, "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "ran [1, 2], skipped [4]" in result.output
    student = load(tmp_path / "run" / "student")
    assert student.levels == [1, 2] and student.encoder(1).spec.widths == (24,)  # the paper's level-1 conv11
    assert student.encoder(2).spec.widths == (16, 16, 32)


def test_untrained_collaborator_stops_the_run(images_dir: Path, tmp_path: Path) -> None:
    """The released *pruned bases* are not trained decoders: the run stops before stage 2 with the measured PSNR."""
    from cdcompress.models import VGGDecoder, VGGEncoder, VGGSpec, save
    from cdcompress.models.format import CDModel

    torch.manual_seed(0)
    spec = VGGSpec.vgg19(1)
    save(CDModel(encoders={1: VGGEncoder(spec)}, decoders={1: VGGDecoder(spec)}), tmp_path / "untrained")
    args = ["distill", "--recipe", "wct_vgg19", "--set", "device=cpu", "--set", f"teacher.path={tmp_path / 'untrained'}",
            "--set", "collaborator.source=teacher", "--set", "levels=[1]", "--set", f"data.train=[{images_dir / 'content'}]",
            "--set", f"data.eval=[{images_dir / 'style' / 'in3.jpg'}]", "--set", "data.eval_size=64",
            "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "below collaborator.min_psnr 15 dB" in result.output, result.output
    assert "is itself pruned" not in result.output


def test_dry_run_prints_the_measured_plan_and_writes_nothing(teacher_dir: Path, images_dir: Path, tmp_path: Path) -> None:
    args = ["distill", "--recipe", "wct_vgg19", "--set", "device=cpu", "--set", f"teacher.path={teacher_dir}",
            "--set", f"data.train=[{images_dir / 'content'}]", "--set", f"data.eval=[{images_dir / 'style' / 'in3.jpg'}]",
            "--set", "data.eval_size=256", "--set", "levels=[1,2]", "--out", str(tmp_path / "run"), "--dry-run"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "collaborator: trained in stage 1, starting from the teacher's decoder" in result.output  # as the authors
    assert "| collaborator (stage 1) |" in result.output
    assert "| encoder.conv11 | 64 | 24 | 24 |" in result.output  # level 1: the paper's 24 filters
    assert "encoder 112,588 -> 7,420 parameters" in result.output
    n_content = len(list((images_dir / "content").iterdir()))
    assert f"training images: {n_content} usable of {n_content}" in result.output
    assert "| distill (stage 2) |" in result.output and not (tmp_path / "run").exists()


def test_cpu_recipe_plans_from_the_raw_teacher_folder(wct_dir: Path, images_dir: Path) -> None:
    """wct_vgg19_cpu reads the .pth folder itself (teacher source wct-pytorch) and runs levels 1-3."""
    args = ["distill", "--recipe", "wct_vgg19_cpu", "--set", f"teacher.path={wct_dir}",
            "--set", f"data.train=[{images_dir / 'content'}]", "--set", f"data.eval=[{images_dir / 'style' / 'in3.jpg'}]",
            "--dry-run"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "- levels: [1, 2, 3]" in result.output and result.output.count("collaborator: the teacher's decoder") == 3
    assert "| distill (stage 2) | 300 | 4 |" in result.output
