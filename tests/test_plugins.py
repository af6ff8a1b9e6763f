"""A user's YAML drives a user's pair: teacher source, data source, objective and importance named as plug-ins."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from cdcompress.cli import main

PLUGINS = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F

    from cdcompress.core.registry import DATA_SOURCES, IMPORTANCES, OBJECTIVES, TEACHER_SOURCES
    from cdcompress.data.batches import CropSampler
    from zoo import GNUNetDecoder, GNUNetEncoder

    CALLS = []


    @TEACHER_SOURCES.register("test-gn-unet")
    def gn_unet(path, level, width=16):
        torch.manual_seed(0)
        return GNUNetEncoder(width), GNUNetDecoder(width)


    class Blurred:
        def __init__(self, sampler, strength):
            self.sampler, self.strength = sampler, strength

        def shard(self, step, rank, world):
            sharp = self.sampler.shard(step, rank, world)
            return F.avg_pool2d(sharp, 3, 1, 1), sharp  # (input, target): learn to deblur


    @DATA_SOURCES.register("test-blurred")
    def blurred(paths, batch_size, resize, crop, seed, strength=1):
        return Blurred(CropSampler(paths, batch_size=batch_size, resize=resize, crop=crop, seed=seed), strength)


    @OBJECTIVES.register("test-l1")
    def l1_objective(weight=1.0):
        def objective(ctx):
            CALLS.append("objective")
            return {"l1": weight * F.l1_loss(ctx.collaborator(ctx.student_outputs), ctx.target)}
        return objective


    @IMPORTANCES.register("test-first")
    def first(seed=0):
        def score(group):
            CALLS.append("importance")
            return -torch.arange(len(group[0].idxs), dtype=torch.float32)
        return score
    """
)

RECIPE = textwrap.dedent(
    """
    name: user-pair
    levels: [1]
    teacher: {source: test-gn-unet, path: unused, kwargs: {width: 16}}
    collaborator: {source: teacher, min_psnr: 0}   # an untrained test pair: skip the trained-decoder guard
    student: {width: 0.5, importance: {name: test-first}, round_to: 4}
    embed: {taps: auto, beta: 1.0}
    objective: {kind: test-l1, kwargs: {weight: 2.0}}
    data: {source: {name: test-blurred, kwargs: {strength: 1}}, train: [skimage], eval: [skimage-heldout],
           resize: 40, crop: 32, eval_size: 48}
    stages:
      distill: {steps: 4, batch: 2, lr: 1.0e-3}
      decoder: {steps: 4, batch: 2, lr: 1.0e-3}
    output: {checkpoint_every: 2, log_every: 1}
    """
)


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "user_plugins.py").write_text(PLUGINS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    yield tmp_path
    sys.modules.pop("user_plugins", None)


def test_a_recipe_names_user_plugins(plugins: Path) -> None:
    recipe = plugins / "user.yaml"
    recipe.write_text(RECIPE)
    out = plugins / "run"
    result = CliRunner().invoke(main, ["--import", "user_plugins", "distill", "--recipe", str(recipe), "--out", str(out)])
    assert result.exit_code == 0, result.output
    import user_plugins

    assert {"objective", "importance"} <= set(user_plugins.CALLS)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("l1" in r for r in records if r["stage"].startswith("distill"))
    spec = json.loads((out / "student" / "model.json").read_text())
    assert spec["family"] == "module"
    widths = spec["architecture"]["widths"]
    assert widths["encoder.enc1.0"] == 8 and all(w % 4 == 0 for k, w in widths.items() if k != "decoder.head")


@pytest.mark.parametrize(("change", "message"), [
    (("test-gn-unet", "no-such-source"), "teacher.source: unknown teacher source 'no-such-source'"),
    (("name: test-blurred", "name: test-blured"), "did you mean 'test-blurred'"),
    (("kind: test-l1", "kind: test-l2"), "objective.kind: unknown objective 'test-l2'"),
    (("name: test-first", "name: l3"), "student.importance"),
])
def test_unknown_plugin_names_fail_in_one_line(plugins: Path, change: tuple[str, str], message: str) -> None:
    recipe = plugins / "bad.yaml"
    recipe.write_text(RECIPE.replace(*change))
    result = CliRunner().invoke(main, ["--import", "user_plugins", "distill", "--recipe", str(recipe), "--out",
                                       str(plugins / "never")])
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not (plugins / "never").exists()
