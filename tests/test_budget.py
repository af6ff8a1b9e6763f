"""Compressing to a budget: params, MACs and latency targets met within tolerance, the sensitivity allocation
spending width where the reconstruction needs it, and bad or unreachable targets refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import cdcompress
from cdcompress.core.budget import Budget, BudgetError
from cdcompress.cost.static import count_macs
from cdcompress.distill.width_search import CostMeter
from cdcompress.surgery.modules import count_parameters
from cdcompress.surgery.slim import Slimming


def conv_pair(width: int = 32) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
                            nn.ReLU(), nn.Conv2d(2 * width, 2 * width, 3, padding=1))
    decoder = nn.Sequential(nn.Conv2d(2 * width, width, 3, padding=1), nn.ReLU(), nn.Upsample(scale_factor=2),
                            nn.Conv2d(width, 3, 3, padding=1))
    return encoder, decoder


def cut(target: dict, **slimming: object) -> cdcompress.Distiller:
    encoder, decoder = conv_pair()
    return cdcompress.apply(encoder, decoder, slim=Slimming(target=target, **slimming))


def within(value: float, goal: float, tolerance: float = 0.05) -> bool:
    return abs(value / goal - 1) <= tolerance


@pytest.mark.parametrize("goal", [12_000, 30_000])
def test_params_target_is_met_and_moves_the_widths(goal: int) -> None:
    distiller = cut({"params": goal, "allocation": "uniform"})
    params = count_parameters(distiller.student)
    assert within(params, goal), params
    assert distiller.slimmed.budget.met and distiller.slimmed.budget.measured == params


def test_macs_target_honours_round_to_and_protected_layers() -> None:
    encoder, _ = conv_pair()
    teacher_macs = count_macs(encoder, (1, 3, 96, 96))
    distiller = cut({"macs": "60%", "size": 96, "allocation": "uniform"}, round_to=8, keep=["encoder.4"])
    student_macs = count_macs(distiller.student, (1, 3, 96, 96))
    assert within(student_macs, 0.6 * teacher_macs), (student_macs, teacher_macs)
    widths = distiller.slimmed.widths()
    assert widths["encoder.4"] == 64  # protected: full width
    assert all(w % 8 == 0 for name, w in widths.items() if name not in distiller.slimmed.protected)


def test_pair_part_counts_the_decoder_too() -> None:
    encoder, decoder = conv_pair()
    goal = (count_parameters(encoder) + count_parameters(decoder)) // 3
    distiller = cut({"params": goal, "part": "pair", "allocation": "uniform"})
    total = count_parameters(distiller.student) + count_parameters(distiller.slimmed.decoder)
    assert within(total, goal), (total, goal)


@pytest.mark.parametrize(("target", "message"), [
    ({"params": 20}, "cannot be met: the narrowest student reachable"),
    ({"params": 10**9}, "the teacher itself costs"),
    ({"macs": "99.9%", "size": 64}, "nothing needs cutting"),
])
def test_unreachable_targets_say_so_with_the_closest_value(target: dict, message: str) -> None:
    with pytest.raises(BudgetError, match=message) as caught:
        cut({**target, "allocation": "uniform"})
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("fields", "message"), [
    ({}, "set exactly one of"),
    ({"params": 1, "macs": 2}, "set exactly one of"),
    ({"params": -3}, "must be > 0"),
    ({"macs": "150%"}, "not below the teacher"),
    ({"macs": "half"}, "share of the teacher"),
    ({"params": 1000, "runtime": "tpu"}, "runtime 'tpu'"),
    ({"params": 1000, "size": [0, 4]}, "size"),
    ({"params": 1000, "tolerance": 0.0}, "tolerance"),
    ({"params": 1000, "allocation": "greedy"}, "allocation"),
])
def test_api_and_recipe_refuse_the_same_budgets(fields: dict, message: str, tmp_path: Path) -> None:
    from cdcompress.distill.recipe import RecipeError, load_recipe

    with pytest.raises(BudgetError, match=message):
        Budget.of(fields)
    from test_recipes import VALID

    path = tmp_path / "r.yaml"
    path.write_text(VALID)
    overrides = [f"student.target.{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in fields.items()]
    with pytest.raises(RecipeError, match="student.target") as caught:
        load_recipe(path, overrides=overrides or ["student.target={}"])
    assert message.split("'")[0].strip() in str(caught.value)


# ----------------------------------------------------------------------------- sensitivity


def redundant_then_dense_pair() -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """conv ``a`` copies RGB into 3 strong channels and 13 near-zero ones (cutting it costs nothing), conv ``b`` mixes
    them into 16 channels the decoder needs all of (cutting it costs a lot): the allocation must favour ``b``."""
    generator = torch.Generator().manual_seed(0)
    a, b = nn.Conv2d(3, 16, 1), nn.Conv2d(16, 16, 1)
    decoder = nn.Conv2d(16, 3, 1)
    with torch.no_grad():
        a.weight.zero_()
        a.weight[:3, :, 0, 0] = torch.eye(3)
        a.weight[3:, :, 0, 0] = 1e-3 * torch.rand(13, 3, generator=generator)
        a.bias.zero_()
        b.weight.copy_(torch.randn(16, 16, 1, 1, generator=generator))
        b.bias.zero_()
        mixing = b.weight[:, :, 0, 0] @ a.weight[:, :, 0, 0]  # 16 x 3
        decoder.weight.copy_(torch.linalg.pinv(mixing)[:, :, None, None])
        decoder.bias.zero_()
    encoder = nn.Sequential(a, nn.ReLU(), b)
    images = torch.rand(4, 3, 32, 32, generator=generator)
    return encoder, decoder, images


def test_sensitivity_allocation_keeps_width_where_the_cut_hurts() -> None:
    encoder, decoder, images = redundant_then_dense_pair()
    assert torch.allclose(decoder(encoder(images)), images, atol=1e-4)
    budget = {"params": 180, "allocation": "sensitivity"}
    uniform = cdcompress.apply(encoder, decoder, slim=Slimming(target={**budget, "allocation": "uniform"}))
    allocated = cdcompress.apply(encoder, decoder, slim=Slimming(target=budget, calibration=images))
    search = allocated.slimmed.budget
    assert search.allocation == "sensitivity", search.summary()
    assert search.sensitivity_db["encoder.2"] > search.sensitivity_db["encoder.0"] + 1
    assert allocated.slimmed.widths()["encoder.2"] > uniform.slimmed.widths()["encoder.2"]
    assert search.prune_psnr["sensitivity"] > search.prune_psnr["uniform"]
    assert within(count_parameters(allocated.student), 180)


def test_sensitivity_without_calibration_data_is_refused() -> None:
    with pytest.raises(BudgetError, match="needs calibration data"):
        cut({"params": 20_000, "allocation": "sensitivity"})


# ----------------------------------------------------------------------------- latency


class ModelledLatency(CostMeter):
    """A deterministic, non-linear stand-in for a runtime: ms grows with MACs and with each layer's width
    rounded up to 8 (as vectorised kernels do), so MACs alone mispredict it and the search must correct."""

    calls = 0

    def latency(self, encoder: nn.Module, decoder: nn.Module) -> float:
        ModelledLatency.calls += 1
        macs = count_macs(encoder, self.shape)
        padded = sum(-(-m.out_channels // 8) * 8 for m in encoder.modules() if isinstance(m, nn.Conv2d))
        return 0.4 + 3e-8 * macs ** 1.05 + 0.01 * padded


@pytest.mark.parametrize("share", [0.3, 0.6])
def test_latency_target_is_met_after_measuring(share: float, monkeypatch: pytest.MonkeyPatch) -> None:
    import cdcompress.distill.width_search as search_module

    monkeypatch.setattr(search_module, "CostMeter", ModelledLatency)
    encoder, _ = conv_pair()
    teacher_ms = ModelledLatency(Budget(latency_ms=1.0, size=128), 3).latency(encoder, None)
    goal = share * teacher_ms
    distiller = cut({"latency_ms": goal, "size": 128, "allocation": "uniform"})
    search = distiller.slimmed.budget
    assert search.met, search.summary()
    assert within(ModelledLatency(Budget(latency_ms=1.0, size=128), 3).latency(distiller.student, None), goal)
    assert len(search.latency_points) >= 5  # teacher, three uniform probes, the chosen student


@pytest.mark.parametrize("runtime", ["eager", "bundle", "int8"])
def test_latency_is_measured_on_each_runtime(runtime: str) -> None:
    pytest.importorskip("onnxruntime")
    from cdcompress.cost.latency import measure_latency

    encoder, decoder = conv_pair(8)
    for part in (None, decoder):
        ms = measure_latency(encoder, part, (1, 3, 32, 32), runtime, threads=1, repeats=2)
        assert 0 < ms < 10_000


def test_cuda_runtime_without_a_gpu_is_one_line() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from cdcompress.cost.latency import measure_latency

    with pytest.raises(BudgetError, match="needs a CUDA GPU"):
        measure_latency(*conv_pair(8), (1, 3, 32, 32), "cuda")


# ----------------------------------------------------------------------------- recipes and the CLI


def test_recipe_target_drives_the_student_and_the_report(tmp_path: Path) -> None:
    from test_recipes import VALID

    from cdcompress.distill.recipe import load_recipe
    from cdcompress.distill.run import run_recipe

    path = tmp_path / "tiny.yaml"
    path.write_text(VALID)
    recipe = load_recipe(path, overrides=["student.target.macs=35%", "student.target.size=64", "embed.init=random"])
    run_recipe(recipe, tmp_path / "run")
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    search = report["levels"]["1"]["budget"]
    assert search["met"] and search["budget"]["macs"] == "35%"
    student = cdcompress.load(tmp_path / "run" / "student")
    macs = count_macs(student.encoder(1), (1, 3, 64, 64))
    assert within(macs, search["goal"]), (macs, search["goal"])
    assert "## Budget (student.target)" in (tmp_path / "run" / "report.md").read_text()


@pytest.mark.parametrize("source", ["images", "noisy-pairs"])
def test_dry_run_prints_the_chosen_widths_and_their_cost(source: str, tmp_path: Path) -> None:
    """Also on a paired data source, whose sampler is iterated, not indexed (the calibration batch comes from it)."""
    from test_recipes import VALID

    from cdcompress.cli import main

    path = tmp_path / "tiny.yaml"
    path.write_text(VALID.replace("data: {", f"data: {{source: {source}, "))
    result = CliRunner().invoke(main, ["distill", "--recipe", str(path), "--set", "student.target.params=50%",
                                       "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "budget: encoder params 50%" in result.output
    assert "predicted" in result.output and "measured" in result.output and ": met" in result.output


def test_vgg_pair_budget_of_the_whole_pair() -> None:
    """A VGG pair mirrors encoder widths into its decoder; a pair budget names decoder layers too, and wins."""
    from cdcompress.models.vgg import VGGDecoder, VGGEncoder, VGGSpec

    torch.manual_seed(0)
    spec = VGGSpec.vgg19(2)
    encoder, decoder = VGGEncoder(spec), VGGDecoder(spec)
    goal = (count_parameters(encoder) + count_parameters(decoder)) // 4
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    d = cdcompress.apply(encoder, decoder, slim=Slimming(target={"params": goal, "part": "pair"}, calibration=images))
    total = count_parameters(d.student) + count_parameters(d.slimmed.decoder)
    assert within(total, goal), (total, goal, d.slimmed.summary())
    assert d.slimmed.widths() == d.slimmed.budget.widths


def test_int8_runtime_that_cannot_quantize_a_graph_says_so_in_one_line() -> None:
    """onnxruntime's quantizer refuses the U-Net encoder graph (a weight shared between QDQ nodes): a budget on
    ``int8`` for it must say so and name the fix, not raise the quantizer's traceback."""
    pytest.importorskip("onnxruntime")
    from cdcompress.cost.latency import measure_latency
    from cdcompress.models.unet import unet_encoder

    torch.manual_seed(0)
    with pytest.raises(BudgetError, match="cannot quantize this encoder graph.*measure on 'bundle'") as caught:
        measure_latency(unet_encoder(), None, (1, 3, 32, 32), "int8", threads=1, repeats=1)
    assert "\n" not in str(caught.value)
