"""Quantization-aware training for INT8: the fake-quantized network is the exported INT8 graph, the QAT fine-tune
trains and records its ranges, and the cascade gate refuses what the per-level gate lets through."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import random_student
from PIL import Image

from cdcompress.cli import main
from cdcompress.core.errors import CDCompressError
from cdcompress.export.errors import ExportError
from cdcompress.surgery import fake_quant as fq

pytest.importorskip("onnxruntime.quantization")


def _photos(count: int, seed: int, side: int = 96) -> list[torch.Tensor]:
    """Smooth random colour fields with edges: photo-like statistics without files."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        coarse = torch.rand(1, 3, 6, 6, generator=generator)
        image = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
        out.append((image + 0.05 * torch.rand(1, 3, side, side, generator=generator)).clamp(0, 1))
    return out


def test_scales_are_onnxruntimes() -> None:
    """Weight and activation scales/zero points computed as onnxruntime computes them, value for value."""
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(8, 4, 3, 3, generator=generator) * torch.rand(8, 1, 1, 1, generator=generator)
    qmin, qmax = get_qmin_qmax_for_qType(TensorProto.INT8, symmetric=True)
    for channel, scale in enumerate(fq.weight_scales(weight)):
        w = weight[channel].numpy()
        _, expected = compute_scale_zp(np.array(w.min()), np.array(w.max()), qmin, qmax, symmetric=True)
        assert np.float32(scale) == np.float32(expected)
    qmin, qmax = get_qmin_qmax_for_qType(TensorProto.UINT8)
    for rmin, rmax in ((0.0, 58.31), (-16.47, 65.81), (-123.28, 151.3), (0.0, 3e-3), (-2.0, -1.0)):
        zero, scale = compute_scale_zp(np.array(rmin, np.float32), np.array(rmax, np.float32), qmin, qmax)
        assert fq.activation_qparams(rmin, rmax) == (float(scale), int(zero))


def test_attach_detach_round_trip() -> None:
    """Attaching changes the forward (rounding) and the checkpointed state (ranges); detaching restores the float
    network exactly, with the ranges handed back."""
    student = random_student()
    encoder = copy.deepcopy(student.encoder(3))
    float_out = encoder(_photos(1, 0)[0])
    keys = set(encoder.state_dict())
    fq.attach_fake_quant(encoder)
    with pytest.raises(fq.QuantizationError, match="no calibrated range"):
        encoder(_photos(1, 0)[0])
    ranges = fq.calibrate(encoder, _photos(3, 1))
    assert list(ranges) == ["conv0", "relu1_1", "relu1_2", "relu2_1", "relu2_2", "relu3_1"]
    assert {"fake_quant.relu3_1.rmax", "conv11.parametrizations.weight.original"} <= set(encoder.state_dict())
    quantized = encoder(_photos(1, 0)[0])
    assert 0 < (quantized - float_out).abs().max() < 0.2 * float_out.abs().max()
    clone = copy.deepcopy(encoder)  # training copies modules (stage 3's frozen encoder)
    assert torch.equal(clone(_photos(1, 0)[0]), quantized)
    assert fq.detach_fake_quant(encoder) == ranges
    assert set(encoder.state_dict()) == keys and torch.equal(encoder(_photos(1, 0)[0]), float_out)
    assert torch.equal(clone(_photos(1, 0)[0]), quantized)  # a copy (sharing the parametrized class) still works
    decoder = fq.attach_fake_quant(copy.deepcopy(student.decoder(3)))
    assert fq.quant_points(decoder) == ["input", "relu3_1", "relu2_2", "relu2_1", "relu1_2"]  # not the RGB ReLU
    with pytest.raises(fq.QuantizationError, match="do not fit"):
        fq.set_ranges(decoder, ranges)


def test_decoder_input_sits_on_the_encoder_grid() -> None:
    """Calibrating a pair puts the decoder's input on the encoder's output grid (same scale, a few negative steps for
    WCT maps): the encoder's rounded features then pass into the decoder without a second rounding."""
    from cdcompress.distill.quantize import MAX_NEGATIVE_STEPS, calibrate_pair

    student = random_student()
    encoder = fq.attach_fake_quant(copy.deepcopy(student.encoder(3)))
    decoder = fq.attach_fake_quant(copy.deepcopy(student.decoder(3)))
    calibrate_pair(encoder, decoder, _photos(4, 1), fq.DEFAULT_PERCENTILE)
    out_scale, _ = fq.activation_qparams(*fq.ranges_of(encoder)["relu3_1"])
    in_scale, zero = fq.activation_qparams(*fq.ranges_of(decoder)["input"])
    assert in_scale == pytest.approx(out_scale, rel=1e-6) and 0 < zero <= MAX_NEGATIVE_STEPS  # WCT maps go negative
    with torch.no_grad():
        features = encoder(_photos(1, 5)[0])
        requantized = fq.quantizers(decoder)["input"](features)
    held = features <= (255 - zero) * in_scale
    assert held.float().mean() > 0.99
    assert torch.allclose(requantized[held], features[held], atol=1e-4 * in_scale)


@pytest.mark.parametrize("level", [1, 3, 5])
def test_fake_quantized_pair_is_the_exported_int8_graph(level: int, tmp_path: Path) -> None:
    """The INT8 graphs written with a pair's ranges compute what the fake-quantized PyTorch pair computes. Integer
    and float accumulation meet rounding ties differently, and a one-step difference travels through the later
    layers (measured on the released level-5 student: 24% of features one step apart, none more than two, mean
    difference 0.007 step, PSNR equal within 0.02 dB), so the check is: under 3 steps, no bias, small RMS."""
    from cdcompress.distill.quantize import calibrate_pair
    from cdcompress.export import export_bundle
    from cdcompress.export.int8 import quantize_graph
    from cdcompress.export.runtime import make_session

    student = random_student()
    export_bundle(student, tmp_path / "fp32", "onnx-dynamic", [level], echo=lambda _: None, progress=False)
    encoder = fq.attach_fake_quant(copy.deepcopy(student.encoder(level)))
    decoder = fq.attach_fake_quant(copy.deepcopy(student.decoder(level)))
    calibrate_pair(encoder, decoder, _photos(4, 1), fq.DEFAULT_PERCENTILE)
    samples = [x.numpy() for x in _photos(2, 2)]
    quantize_graph(tmp_path / "fp32" / f"enc{level}.onnx", tmp_path / "enc.onnx", samples, "encoder",
                   fq.ranges_of(encoder))
    quantize_graph(tmp_path / "fp32" / f"dec{level}.onnx", tmp_path / "dec.onnx", [encoder(x).detach().numpy()
                   for x in _photos(2, 2)], "decoder", fq.ranges_of(decoder))
    enc, dec = make_session(tmp_path / "enc.onnx"), make_session(tmp_path / "dec.onnx")
    image = _photos(1, 3, side=128)[0]
    with torch.no_grad():
        features, output = encoder(image), decoder(encoder(image))
    graph_features = enc.run(None, {enc.get_inputs()[0].name: image.numpy()})[0]
    graph_output = dec.run(None, {dec.get_inputs()[0].name: graph_features})[0]
    step = fq.activation_qparams(*fq.ranges_of(encoder)[f"relu{level}_1"])[0]
    difference = graph_features - features.numpy()
    assert np.abs(difference).max() <= 3.01 * step and abs(difference.mean()) < 0.05 * step
    assert np.sqrt((difference ** 2).mean()) < 0.6 * step
    assert np.sqrt(((graph_output - output.numpy()) ** 2).mean()) < 6e-3
    assert np.abs(graph_output - output.numpy()).max() < 0.1


def test_exporter_refuses_ranges_of_another_network(tmp_path: Path) -> None:
    from cdcompress.export import export_bundle
    from cdcompress.export.int8 import quantize_graph

    student = random_student()
    export_bundle(student, tmp_path / "fp32", "onnx-dynamic", [2], echo=lambda _: None, progress=False)
    encoder = fq.attach_fake_quant(copy.deepcopy(student.encoder(3)))
    ranges = fq.calibrate(encoder, _photos(2, 0))
    with pytest.raises(ExportError, match="do not fit this encoder graph"):
        quantize_graph(tmp_path / "fp32" / "enc2.onnx", tmp_path / "enc.onnx", [_photos(1, 0)[0].numpy()], "encoder",
                       ranges)


def _photo_folder(folder: Path, count: int, seed: int) -> Path:
    folder.mkdir(parents=True)
    for i, image in enumerate(_photos(count, seed, side=160)):
        Image.fromarray((image[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(folder / f"p{i}.png")
    return folder


def test_quantize_fine_tunes_records_and_exports_trained_ranges(tmp_path: Path) -> None:
    """``cdcompress quantize`` trains both stages, gates the INT8 graphs against the source model and writes the
    ranges; ``export --int8`` then quantizes with exactly those ranges; changed weights void them."""
    from cdcompress.models import load, save

    source = save(random_student(), tmp_path / "float")
    data, held_out = _photo_folder(tmp_path / "train", 6, 0), _photo_folder(tmp_path / "held", 2, 1)
    out = tmp_path / "qat"
    result = CliRunner().invoke(main, ["quantize", str(source), "--out", str(out), "--levels", "2", "--data", str(data),
                                       "--held-out", str(held_out), "--encoder-steps", "4", "--decoder-steps", "4",
                                       "--crop", "64", "--resize", "96", "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    # a random student decodes noise: pass or fail, the gate's verdict is printed
    assert "| 2 | trained |" in result.output or "quality gate failed at every level (level 2:" in result.output
    qat = load(out)
    record = qat.meta["int8"]
    assert record["training"]["settings"]["encoder_steps"] == 4 and "quality" in record
    original = load(source)
    passed = record["quality"]["int8_levels"] == [2]
    assert passed or "no level passes the INT8 gate" in result.output  # written all the same, saying so
    assert list(record["levels"]) == ["2"]
    assert not torch.equal(qat.encoder(2).conv21.weight, original.encoder(2).conv21.weight)  # trained
    assert torch.equal(qat.encoder(3).conv31.weight, original.encoder(3).conv31.weight)  # other levels untouched
    metrics = [json.loads(line) for line in (tmp_path / "run" / "level2" / "metrics.jsonl").read_text().splitlines()]
    assert {"qat_encoder2", "qat_decoder2"} <= {m.get("stage") for m in metrics}

    bundle = tmp_path / "bundle"
    result = CliRunner().invoke(main, ["export", str(out), "--int8", "--levels", "2", "--quiet", "--calibration", str(data),
                                       "--held-out", str(held_out), "--out", str(bundle)])
    assert "gate reference: the float32 graphs of" in result.output  # the source model, found from the record
    assert "| 2 | trained |" in result.output, result.output
    assert (result.exit_code == 0) == passed == bundle.exists(), result.output  # the same gate, the same verdict
    if passed:
        manifest = json.loads((bundle / "manifest.json").read_text())
        assert manifest["int8"]["trained_ranges"] == [2] and "cascade" in manifest["int8"]

    with torch.no_grad():
        qat.encoder(2).conv21.weight.mul_(1.01)
    save(qat, tmp_path / "edited")
    result = CliRunner().invoke(main, ["export", str(tmp_path / "edited"), "--int8", "--levels", "2", "--quiet",
                                       "--out", str(tmp_path / "b2")])
    assert result.exit_code == 2 and "weights changed after its INT8 ranges were trained" in result.output


@pytest.fixture(scope="module")
def released_fp32(released_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The released students' float32 bundle at levels 3, 2, 1 (random weights decode noise, no cascade to judge)."""
    from cdcompress.export import export_bundle
    from cdcompress.models import load

    out = tmp_path_factory.mktemp("released") / "fp32"
    export_bundle(load(released_model_dir), out, "onnx-dynamic", [3, 2, 1], echo=lambda _: None, progress=False)
    return out


def test_cascade_gate_fails_loudly_on_a_bad_calibration(released_fp32: Path, images_dir: Path, tmp_path: Path) -> None:
    """Flat grey calibration photos give ranges that fit no real photo; with the per-level gate opened wide every
    level 'passes' on its own, and the whole-cascade gate must still refuse the bundle (and write nothing)."""
    from cdcompress.export.int8 import QualityGate, quantize_bundle

    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        Image.fromarray(np.full((64, 64, 3), 120 + i, dtype=np.uint8)).save(flat / f"grey{i}.png")
    lines: list[str] = []
    with pytest.raises(ExportError, match="INT8 cascade gate failed"):
        quantize_bundle(released_fp32, tmp_path / "int8", flat, images_dir / "content", echo=lines.append,
                        gate=QualityGate(max_psnr_drop=100, max_wct_rmse=1, max_cascade_rmse=0.03))
    assert not (tmp_path / "int8").exists()
    assert "| NO |" not in lines[0]  # every level passed its own (opened) gate
    assert "kept in float32 because the cascade needs it" in lines[1]


def test_cascade_gate_keeps_levels_float_and_says_so(released_fp32: Path, images_dir: Path, tmp_path: Path) -> None:
    """A cascade limit between the all-int8 and all-float results: some levels go back to float32, the manifest and
    the printed line say which, and the written bundle's cascade is within the limit."""
    from cdcompress.export.int8 import QualityGate, quantize_bundle

    calibration, held_out = images_dir / "style", images_dir / "content"
    loose = quantize_bundle(released_fp32, tmp_path / "all", calibration, held_out, echo=lambda _: None,
                            gate=QualityGate(max_psnr_drop=100, max_wct_rmse=1, max_cascade_rmse=1))
    assert loose.cascade.int8_levels == [1, 2, 3] and loose.cascade.rmse > 0
    assert json.loads((tmp_path / "all" / "manifest.json").read_text())["int8"]["cascade"]["rmse"] == loose.cascade.rmse
    lines: list[str] = []
    limit = loose.cascade.rmse * 0.6
    try:
        result = quantize_bundle(released_fp32, tmp_path / "some", calibration, held_out, echo=lines.append,
                                 gate=QualityGate(max_psnr_drop=100, max_wct_rmse=1, max_cascade_rmse=limit))
    except ExportError as exc:  # even one int8 level exceeds the limit: refused loudly instead
        assert "only with every level back in float32" in str(exc)
        return
    kept = result.cascade.kept_float
    assert kept and result.cascade.rmse <= limit
    assert sorted(result.manifest["int8_levels"] + kept) == [1, 2, 3]
    assert all(result.manifest["level_precision"][str(k)] == "fp32" for k in kept)
    assert "because the cascade needs it" in lines[1]


def test_trained_ranges_errors_are_one_line(random_student_dir: Path, tmp_path: Path) -> None:
    from cdcompress.export.int8_record import trained_ranges
    from cdcompress.models import load

    model = load(random_student_dir)
    model.meta["int8"] = {"levels": {"2": {"encoder": "nonsense"}}}
    with pytest.raises(CDCompressError, match="record is malformed; re-run `cdcompress quantize`"):
        trained_ranges(model)
    result = CliRunner().invoke(main, ["quantize", str(random_student_dir), "--out", str(tmp_path / "q"), "--levels", "7"])
    assert result.exit_code == 2 and "--levels '7'" in result.output


INT8_RECIPE = """
name: tiny-int8
seed: 0
levels: [2]
teacher: {source: bundled, path: offline-vgg19}
collaborator: {source: teacher}
objective: {lambda_p: 0.0}
student: {width: 0.25, quantize: int8}
data: {train: [skimage], resize: 48, crop: 32, eval_size: 64}
stages:
  distill: {steps: 3, batch: 2}
  decoder: {steps: 3, batch: 2}
output: {checkpoint_every: 1, eval_every: 0, sample_every: 0}
"""


def test_a_recipe_trains_an_int8_student_and_resumes_it(tmp_path: Path) -> None:
    """``student.quantize: int8``: stages 2 and 3 train fake-quantized, the saved student is float with the ranges it
    trained with (ready for ``export --int8``), and a resumed run restores the ranges from its checkpoints."""
    from cdcompress.distill.recipe import load_recipe
    from cdcompress.distill.run import run_recipe
    from cdcompress.export.int8_record import trained_ranges
    from cdcompress.models import load

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(INT8_RECIPE)
    run_recipe(load_recipe(recipe), tmp_path / "run")
    student = load(tmp_path / "run" / "student")
    ranges = trained_ranges(student)
    assert list(ranges) == [2] and student.meta["int8"]["training"]["how"] == "distill"
    assert list(ranges[2]["encoder"]) == fq.quant_points(student.encoder(2))
    assert not fq.is_fake_quantized(student.encoder(2))
    checkpoint = torch.load(next((tmp_path / "run" / "checkpoints").glob("distill_L2_step*.pt")), weights_only=True)
    assert "fake_quant.relu2_1.rmax" in checkpoint["modules"]["student"]
    run_recipe(load_recipe(recipe), tmp_path / "run", resume=True)
    again = load(tmp_path / "run" / "student")
    assert trained_ranges(again) == ranges
    assert torch.equal(again.encoder(2).conv21.weight, student.encoder(2).conv21.weight)


def test_int8_recipe_settings_are_checked() -> None:
    import yaml

    from cdcompress.distill.recipe import RecipeError, validate

    data = yaml.safe_load(INT8_RECIPE)
    assert validate(data, "tiny").student.quantize == "int8"
    data["student"]["drop_in"] = "auto"
    with pytest.raises(RecipeError, match="quantize int8 and drop_in exclude each other"):
        validate(data, "tiny")
    data["student"] = {"quantize": "int4"}
    with pytest.raises(RecipeError, match="quantize"):
        validate(data, "tiny")
