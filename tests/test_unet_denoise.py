"""The U-Net pair and the denoising task: shapes and layer types, reproducible noisy pairs, a learning teacher."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import cdcompress
from cdcompress.core.errors import CDCompressError, ImageError
from cdcompress.core.registry import ARCHITECTURES
from cdcompress.data.batches import skimage_photos
from cdcompress.data.images import crop_to_multiple
from cdcompress.data.noisy import NoisyPairs
from cdcompress.evaluation.metrics import mean_psnr
from cdcompress.models.unet import UNetDecoder, UNetEncoder, UNetShapeError, unet_decoder, unet_encoder
from cdcompress.surgery.modules import EncoderDecoderPair
from cdcompress.tasks.denoise import heldout_pairs, train_denoiser

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return skimage_photos(tmp_path_factory.mktemp("skimage"))


def test_unet_shapes_and_layers() -> None:
    encoder, decoder = UNetEncoder(widths=(16, 32, 64), groups=4), UNetDecoder(widths=(16, 32, 64), groups=4)
    features = encoder(torch.rand(2, 3, 40, 24))
    assert [tuple(f.shape) for f in features] == [(2, 16, 40, 24), (2, 32, 20, 12), (2, 64, 10, 6)]
    assert decoder(features).shape == (2, 3, 40, 24)
    kinds = {type(m) for m in [*encoder.modules(), *decoder.modules()]}
    assert {nn.GroupNorm, nn.ConvTranspose2d, nn.Conv2d} <= kinds
    assert not any(isinstance(m, nn.MaxPool2d) for m in encoder.modules())
    assert isinstance(decoder.head, nn.Conv2d) and decoder.head.kernel_size == (1, 1)
    # The skip is concatenated: the first conv after each upsampling sees twice the skip's channels.
    assert [stage[0].in_channels for stage in decoder.stages] == [64, 32]


def test_unet_factories_registered_with_teacher_defaults() -> None:
    assert ARCHITECTURES.get("unet-encoder") is unet_encoder and ARCHITECTURES.get("unet-decoder") is unet_decoder
    assert unet_encoder().widths == (32, 64, 128) and unet_decoder().widths == (32, 64, 128)


def test_quarter_width_student_keeps_several_channels_per_group() -> None:
    """Slimming keeps GroupNorm's group count: with one channel per group the student loses global colour."""
    import cdcompress

    distiller = cdcompress.apply(unet_encoder(), unet_decoder(), slim=0.25, lambda_p=0.0)
    norms = [m for part in (distiller.student, distiller.decoder_init) for m in part.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 10
    assert min(m.num_channels // m.num_groups for m in norms) >= 4


@pytest.mark.parametrize("make, message", [
    (lambda: UNetEncoder(widths=(30, 64), groups=8), "multiples of GroupNorm groups=8"),
    (lambda: UNetDecoder(widths=(32,)), "at least two levels"),
    (lambda: UNetEncoder()(torch.rand(1, 3, 30, 32)), "multiples of 4"),
    (lambda: UNetDecoder()(UNetEncoder()(torch.rand(1, 3, 8, 8))[1:]), "expects 3 features"),
])
def test_unet_bad_input_is_one_line(make, message: str) -> None:
    with pytest.raises(UNetShapeError, match=message) as info:
        make()
    assert "\n" not in str(info.value)


def test_noisy_pairs_deterministic_and_recreatable(photos: list[Path]) -> None:
    make = lambda seed: NoisyPairs(photos, batch_size=3, resize=96, crop=32, sigma=0.1, seed=seed)  # noqa: E731
    pairs = make(0)
    noisy, clean = pairs.batch(5)
    assert noisy.shape == clean.shape == (3, 3, 32, 32)
    assert float(noisy.min()) >= 0 and float(noisy.max()) <= 1
    # Noise is really there, with about the requested std (clamping at 0 and 1 only shrinks it).
    assert 0.07 < float((noisy - clean).std()) <= 0.101
    again = make(0)
    assert all(torch.equal(a, b) for a, b in zip(again.batch(5), (noisy, clean), strict=True))
    first_two = [b for _, b in zip(range(2), iter(pairs), strict=False)]
    assert torch.equal(first_two[1][0], again.batch(1)[0])
    assert not torch.equal(pairs.batch(4)[0], noisy)
    other_seed = make(1).batch(5)
    assert not torch.equal(other_seed[0] - other_seed[1], noisy - clean)


def test_noisy_pairs_reject_bad_settings(photos: list[Path]) -> None:
    with pytest.raises(CDCompressError, match="sigma"):
        NoisyPairs(photos, sigma=-0.1)
    with pytest.raises(CDCompressError, match="no training images"):
        NoisyPairs([])


def test_heldout_pairs_fixed_and_cropped_to_stride(photos: list[Path]) -> None:
    pairs = heldout_pairs(photos[-2:], size=66, multiple=4)
    assert all(n.shape == c.shape and n.shape[-1] % 4 == 0 and n.shape[-2] % 4 == 0 for n, c in pairs)
    assert min(pairs[0][1].shape[-2:]) == 64
    assert all(torch.equal(a[0], b[0]) for a, b in zip(pairs, heldout_pairs(photos[-2:], size=66), strict=True))
    assert 18 < mean_psnr(None, pairs) < 23  # sigma 0.1 -> 20 dB before clamping
    assert mean_psnr(lambda x: x, pairs) == pytest.approx(mean_psnr(None, pairs))
    # Centred: a 10x7 image cropped to multiples of 4 keeps rows 1..8 and columns 1..4.
    image = torch.arange(70.0).reshape(1, 1, 10, 7)
    assert torch.equal(crop_to_multiple(image, 4, anchor="center"), image[..., 1:9, 1:5])
    assert torch.equal(crop_to_multiple(image, 4), image[..., :8, :4])
    with pytest.raises(ImageError, match="smaller than the required multiple 4") as info:
        heldout_pairs(photos[-1:], size=3, multiple=4)  # a 3-pixel shorter side: nothing divisible by the stride
    assert str(photos[-1]) in str(info.value) and "\n" not in str(info.value)


def test_teacher_steps_reduce_loss_and_weights_round_trip(photos: list[Path], tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = EncoderDecoderPair(UNetEncoder(widths=(16, 32), groups=4), UNetDecoder(widths=(16, 32), groups=4))
    logged: list[tuple[int, float]] = []
    log = train_denoiser(model, NoisyPairs(photos[:-2], batch_size=4, resize=96, crop=32), steps=60, lr=3e-3,
                         log=lambda step, loss: logged.append((step, loss)), log_every=20)
    assert len(log.losses) == 60
    assert logged == [(n, pytest.approx(sum(log.losses[n - 20 : n]) / 20)) for n in (20, 40, 60)]
    assert sum(log.losses[-10:]) / 10 < 0.5 * sum(log.losses[:5]) / 5
    # Saved as the benchmark caches it: a model directory rebuilt from the registered names, no factories needed.
    assert not model.training  # left in eval mode, as the benchmark scores it
    teacher = EncoderDecoderPair(unet_encoder(widths=(16, 32), groups=4), unet_decoder(widths=(16, 32), groups=4))
    teacher.load_state_dict(model.state_dict())
    cdcompress.save_pair(teacher.encoder, teacher.decoder, tmp_path / "teacher", meta={"teacher_training": {"steps": 60}})
    loaded = cdcompress.load(tmp_path / "teacher")
    assert loaded.meta["teacher_training"] == {"steps": 60}
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(loaded.decoder()(loaded.encoder()(x)), model(x))


@pytest.mark.slow
def test_quick_benchmark_prints_table(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, str(REPO / "benchmarks/denoise_unet.py"), "--quick", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| method |" in result.stdout and "teacher" in result.stdout
    assert (tmp_path / "denoise_comparison.png").is_file()


def test_bundled_recipe_distills_a_saved_unet_teacher(tmp_path: Path) -> None:
    """recipes/unet_denoise.yaml: registered architecture names, the noisy-pairs data source, a module-family student."""
    import json

    from click.testing import CliRunner

    from cdcompress.cli import main

    torch.manual_seed(0)
    cdcompress.save_pair(unet_encoder(widths=(8, 16), groups=2), unet_decoder(widths=(8, 16), groups=2), tmp_path / "t")
    small = ["--set", f"teacher.path={tmp_path / 't'}", "--set", "data.resize=48", "--set", "data.crop=32",
             "--set", "data.eval_size=48", "--set", "collaborator.min_psnr=0"]
    for stage in ("distill", "decoder"):
        small += ["--set", f"stages.{stage}.steps=3", "--set", f"stages.{stage}.batch=2"]
    result = CliRunner().invoke(main, ["distill", "--recipe", "unet_denoise", *small, "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    spec = json.loads((tmp_path / "run" / "student" / "model.json").read_text())
    assert spec["architecture"]["encoder"]["registered"] == {"name": "unet-encoder", "kwargs": {"widths": [8, 16], "groups": 2}}
    student = cdcompress.load(tmp_path / "run" / "student")  # no factories: the names are registered built-ins
    assert student.encoder().stages[0][0].out_channels == 4
    assert (tmp_path / "run" / "report.md").is_file()
