"""CUDA paths on real computation: stylization on the GPU, and training with AMP and channels-last.

Marked ``cuda``: skipped without a CUDA GPU (CI has none); on a GPU machine ``pytest --device cuda`` runs them
with the rest of the suite on the GPU (``scripts/gpu_check.sh`` does, and records the result).
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from cdcompress.data.images import load_image
from cdcompress.distill.recipe import load_recipe
from cdcompress.distill.run import run_recipe
from cdcompress.models import CDModel, load
from cdcompress.stylization import TorchBackend, stylize

pytestmark = pytest.mark.cuda  # skipped without a GPU (tests/conftest.py); run with pytest --device cuda


@pytest.fixture(autouse=True)
def full_precision_matmuls() -> Iterator[None]:
    """TF32 would make GPU-vs-CPU comparisons test TF32's rounding, not our code."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _gpu_model(released_model_dir: Path) -> TorchBackend:
    return TorchBackend(load(released_model_dir), device="cuda")


def test_cuda_stylize_matches_cpu(released_model_dir: Path, content: torch.Tensor, style: torch.Tensor) -> None:
    cpu = stylize(TorchBackend(load(released_model_dir)), content, style, tile=0)
    gpu = stylize(_gpu_model(released_model_dir), content, style, tile=0)
    assert gpu.device.type == "cpu" and gpu.shape == cpu.shape
    diff = (gpu - cpu).abs()
    assert diff.max() < 1e-2 and diff.mean() < 1e-3, (diff.max().item(), diff.mean().item())


@pytest.mark.parametrize("tile", [64, 128])
def test_cuda_tiled_equals_untiled(released_model_dir: Path, content: torch.Tensor, style: torch.Tensor,
                                   tile: int) -> None:
    backend = _gpu_model(released_model_dir)
    untiled = stylize(backend, content, style, tile=0)
    tiled = stylize(backend, content, style, tile=tile)
    torch.testing.assert_close(tiled, untiled, atol=1e-3, rtol=0)


def test_cuda_adain(released_model_dir: Path, content: torch.Tensor, style: torch.Tensor) -> None:
    cpu = stylize(TorchBackend(load(released_model_dir)), content, style, method="adain", tile=0)
    gpu = stylize(_gpu_model(released_model_dir), content, style, method="adain", tile=0)
    assert (gpu - cpu).abs().max() < 1e-2


RECIPE = textwrap.dedent(
    """
    name: cuda_{amp}
    device: cuda
    levels: [2]
    teacher: {{source: builtin, path: vgg19, pretrained: none}}
    collaborator: {{source: train}}
    student: {{width: 0.25}}
    objective: {{lambda_p: 0.1}}
    data: {{train: [skimage], eval: [skimage-heldout], resize: 96, crop: 64, eval_size: 96}}
    stages:
      collaborator: {{steps: 40, batch: 8, lr: 2.0e-3, amp: {amp}, channels_last: true}}
      distill: {{steps: 40, batch: 8, lr: 2.0e-3, amp: {amp}, channels_last: true}}
      decoder: {{steps: 40, batch: 8, lr: 2.0e-3, amp: {amp}, channels_last: true}}
    output: {{checkpoint_every: 20, log_every: 5}}
    """
)


@pytest.mark.parametrize("amp", ["bf16", "fp16", "off"])
def test_cuda_distill_with_amp_and_channels_last(tmp_path: Path, amp: str, images_dir: Path) -> None:
    """All three stages train on the GPU: losses finite and falling, a student that loads and stylizes."""
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(amp=amp))
    result = run_recipe(load_recipe(path), tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for stage in ("collaborator_L2", "distill_L2", "decoder_L2"):
        losses = [r["total"] for r in records if r["stage"] == stage]
        assert len(losses) == 40 // 5, stage
        assert all(torch.isfinite(torch.tensor(losses))), (stage, losses)
        assert min(losses[-2:]) < losses[0], (stage, losses)
    assert (tmp_path / "run" / "report.md").is_file()
    assert result.report
    student: CDModel = load(tmp_path / "run" / "student")
    image = load_image(images_dir / "content/in4.jpg")[..., :96, :96]
    out = stylize(TorchBackend(student, device="cuda"), image, image, levels=[2], tile=0)
    assert out.shape == image.shape and torch.isfinite(out).all()


def test_cuda_stylize_cli(released_model_dir: Path, images_dir: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cdcompress.cli import main

    out = tmp_path / "out.png"
    args = ["stylize", "--model", str(released_model_dir), "--content", str(images_dir / "content/in4.jpg"),
            "--style", str(images_dir / "style/in2.jpg"), "--style-size", "128", "--device", "cuda", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    cpu = CliRunner().invoke(main, [*args[:-4], "--out", str(tmp_path / "cpu.png")])
    assert cpu.exit_code == 0, cpu.output
    a, b = load_image(out), load_image(tmp_path / "cpu.png")
    assert a.shape == b.shape and (a - b).abs().mean() < 2e-3  # 8-bit PNGs of the same result


class _DeviceLog:
    """Forwards to a backend and records the device of every tensor handed to it and back."""

    def __init__(self, inner: TorchBackend) -> None:
        self.inner, self.devices = inner, []
        self.device = inner.device

    @property
    def levels(self) -> list[int]:
        return self.inner.levels

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def encode(self, level: int, image: torch.Tensor) -> torch.Tensor:
        out = self.inner.encode(level, image)
        self.devices += [image.device.type, out.device.type]
        return out

    def decode(self, level: int, features: torch.Tensor) -> torch.Tensor:
        out = self.inner.decode(level, features)
        self.devices += [features.device.type, out.device.type]
        return out


def test_cuda_cascade_stays_on_the_device(released_model_dir: Path, content: torch.Tensor, style: torch.Tensor) -> None:
    """Device-resident WCT: every feature map and intermediate image of the untiled cascade lives on the GPU,
    and the result equals the CPU computation (TF32 off; cuDNN's algorithms still round differently)."""
    logged = _DeviceLog(_gpu_model(released_model_dir))
    gpu = stylize(logged, content, style, tile=0)
    assert set(logged.devices) == {"cuda"}, logged.devices
    cpu = stylize(TorchBackend(load(released_model_dir)), content, style, tile=0)
    diff = (gpu - cpu).abs()
    assert gpu.device.type == "cpu" and diff.max() < 1e-2 and diff.mean() < 1e-3, (diff.max().item(), diff.mean().item())


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_half_precision_stays_close(released_model_dir: Path, content: torch.Tensor, style: torch.Tensor,
                                         precision: str) -> None:
    full = stylize(_gpu_model(released_model_dir), content, style, tile=0)
    half = stylize(TorchBackend(load(released_model_dir), device="cuda", precision=precision), content, style, tile=0)
    rms = (half - full).pow(2).mean().sqrt().item()
    assert rms < 0.03, rms
