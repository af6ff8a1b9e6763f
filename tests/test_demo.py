"""The embedded default: the paper's WCT teacher when it can be found (option, env var, weights cache), else offline."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import SHARED

from cdcompress.cli import main
from cdcompress.core.errors import CDCompressError
from cdcompress.distill.demo import choose_demo
from cdcompress.distill.recipe import RecipeError, TeacherSpec, check_paths, load_recipe
from cdcompress.distill.teachers import load_teacher
from cdcompress.models import VGGDecoder, VGGEncoder, VGGSpec, load, save
from cdcompress.models.format import CDModel
from cdcompress.models.weights import WCT_ENV, locate_wct

WCT = SHARED / "reference" / "wct-vgg19"
TINY = ["data.resize=40", "data.crop=32", "data.eval_size=64", "stages.distill.steps=2", "stages.decoder.steps=2",
        "stages.distill.batch=2", "stages.decoder.batch=2", "output.eval_every=1", "output.sample_every=0"]


@pytest.fixture()
def no_teacher(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A machine without the WCT teacher: no env var, an empty torch hub cache. Returns the hub's checkpoints dir."""
    monkeypatch.delenv(WCT_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # torch.hub.get_dir() follows TORCH_HOME
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def test_without_a_teacher_the_demo_goes_offline_and_says_so(no_teacher: Path) -> None:
    assert locate_wct() is None
    choice = choose_demo()
    assert choice.recipe.name == "demo_offline" and choice.teacher is None
    assert "was not found" in choice.note and "weights download wct-vgg19" in choice.note
    assert choose_demo(offline=True).recipe.name == "demo_offline"


def test_the_headline_recipe_without_a_teacher_is_one_line(no_teacher: Path) -> None:
    result = CliRunner().invoke(main, ["distill", "--recipe", "wct_vgg19", "--dry-run"])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert "\n" not in line and "no WCT VGG-19 teacher found" in line and "weights download wct-vgg19" in line
    assert WCT_ENV in line


def test_named_teacher_locations_must_exist(no_teacher: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(CDCompressError, match="no such file or directory"):
        locate_wct(tmp_path / "missing")
    monkeypatch.setenv(WCT_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(CDCompressError, match=f"{WCT_ENV}=.*nowhere: no such directory"):
        choose_demo()
    with pytest.raises(RecipeError, match="no such directory"):
        check_paths(load_recipe("wct_vgg19"), "wct_vgg19")


def test_the_weights_cache_is_found(no_teacher: Path) -> None:
    """What `weights download wct-vgg19` leaves in the cache (a model directory) is what `auto` finds."""
    torch.manual_seed(0)
    spec = VGGSpec.vgg19(2)
    save(CDModel(encoders={2: VGGEncoder(spec)}, decoders={1: VGGDecoder(VGGSpec.vgg19(1)), 2: VGGDecoder(spec)}),
         no_teacher / "wct-vgg19")
    assert locate_wct() == no_teacher / "wct-vgg19"
    choice = choose_demo()
    assert choice.recipe.name == "demo" and choice.recipe.teacher.path == str(no_teacher / "wct-vgg19")
    teacher = load_teacher(TeacherSpec(source="wct-vgg19", path="auto"), 2)
    assert isinstance(teacher.encoder, VGGEncoder) and isinstance(teacher.decoder, VGGDecoder)
    assert "WCT VGG-19 teacher in" in teacher.note


@pytest.mark.skipif(not (WCT / "vgg_normalised_conv3_1.pth").is_file(), reason="../shared/reference/wct-vgg19 absent")
def test_demo_runs_on_the_real_teacher_from_the_env_var(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`cdcompress demo` with $CDCOMPRESS_WCT_VGG19 at the raw .pth folder: the real teacher, levels 1-3, curves."""
    monkeypatch.setenv(WCT_ENV, str(WCT))
    sets = [arg for item in TINY for arg in ("--set", item)]
    result = CliRunner().invoke(main, ["demo", *sets, "--set", "levels=[1,3]", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "recipe demo; teacher: the paper's WCT VGG-19" in result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert sorted(report["levels"]) == ["1", "3"]
    assert report["levels"]["3"]["teacher_psnr"] > 24  # the trained WCT decoder, not a stand-in
    curves = report["heldout_curves"]
    assert [step for step, _ in curves["distill_L3"]] == [0, 1, 2] and set(curves) == {
        "distill_L1", "decoder_L1", "distill_L3", "decoder_L3"}
    assert (tmp_path / "run" / "heldout.png").stat().st_size > 0
    _assert_tensorboard_shows(tmp_path / "run", curves)
    student = load(tmp_path / "run" / "student")
    assert student.encoder(1).spec.widths == (24,) and student.encoder(3).spec.widths == (16, 16, 32, 32, 64)


def _assert_tensorboard_shows(run_dir: Path, curves: dict) -> None:
    """`tensorboard --logdir <run_dir>` sees one run per stage whose held-out curve is the report's."""
    if importlib.util.find_spec("tensorboard") is None:  # the optional extra; the dev extra installs it
        return
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    events = EventMultiplexer().AddRunsFromDirectory(str(run_dir)).Reload()
    assert set(events.Runs()) == {f"tensorboard/{stage}" for stage in curves}
    for stage, curve in curves.items():
        shown = [(e.step, e.value) for e in events.Scalars(f"tensorboard/{stage}", f"{stage}/heldout/psnr")]
        assert [step for step, _ in shown] == [step for step, _ in curve]
        assert [value for _, value in shown] == pytest.approx([value for _, value in curve], abs=1e-3)


def test_the_offline_teacher_keeps_its_input_scale() -> None:
    """The stand-in's random VGG must not collapse to its biases by relu3_1 (torch's default init does: 13 dB)."""
    teacher = load_teacher(TeacherSpec(source="builtin", path="vgg19", pretrained="none"), 3)
    assert teacher.randomly_initialised
    image = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        features = teacher.encoder(image)
    centred = features - features.mean(dim=(0, 2, 3), keepdim=True)
    assert centred.std() > 0.2 * image.std()  # the image's variation survives five random convs
