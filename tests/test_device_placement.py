"""Device placement without a GPU: training, stylization and collectives on a virtual CUDA device.

Every test here runs the package's own code with ``cuda`` emulated by :mod:`devicecheck` (real numbers on the
CPU, CUDA's same-device rule enforced), so a CPU tensor meeting GPU weights, a module left behind, or a CPU
tensor handed to an NCCL collective fails in CI instead of on the first GPU run.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from devicecheck import OnDevice, checked_collectives, placement_hooks, virtual_cuda
from test_any_pair import loader, photo_batches
from zoo import ResNetDecoder, ResNetEncoder

import cdcompress
from cdcompress.core.registry import TEACHER_SOURCES
from cdcompress.distill import distributed
from cdcompress.surgery.modules import reinitialize

VGG_RECIPE = textwrap.dedent(
    """
    name: virtual_cuda_vgg
    device: cuda
    levels: [2]
    teacher: {source: builtin, path: vgg19, pretrained: none}
    collaborator: {source: train, min_psnr: 1}
    student: {width: 0.25}
    objective: {lambda_p: 0.1}
    data: {train: [skimage], eval: [skimage-heldout], resize: 40, crop: 32, eval_size: 48}
    stages:
      collaborator: {steps: 2, batch: 2, lr: 1.0e-3}
      distill: {steps: 2, batch: 2, lr: 1.0e-3}
      decoder: {steps: 2, batch: 2, lr: 1.0e-3, refit_output: true}
    output: {checkpoint_every: 1, log_every: 1, sample_every: 2, eval_every: 2}
    """
)

#: A BatchNorm ResNet pair whose teacher decoder is the collaborator (not VGG: taps found by probing the encoder).
PAIR_RECIPE = textwrap.dedent(
    """
    name: virtual_cuda_pair
    device: cuda
    levels: [1]
    teacher: {source: devicecheck-resnet, path: unused}
    collaborator: {source: teacher, min_psnr: 1.0e-6}
    student: {width: 0.5}
    embed: {taps: auto, beta: 1.0}
    data: {train: [skimage], eval: [skimage-heldout], resize: 40, crop: 32, eval_size: 48}
    stages:
      distill: {stages_placeholder}
      decoder: {steps: 2, batch: 2, lr: 1.0e-3}
    output: {checkpoint_every: 0, log_every: 1, sample_every: 2}
    """
)


@TEACHER_SOURCES.register("devicecheck-resnet")
def _resnet_teacher(path: str, level: int, width: int = 8) -> tuple[torch.nn.Module, torch.nn.Module]:
    generator = torch.Generator().manual_seed(0)
    encoder, decoder = ResNetEncoder(width), ResNetDecoder(width)
    for module in (encoder, decoder):
        reinitialize(module, generator)
    return encoder, decoder


def _run(tmp_path: Path, text: str) -> Path:
    from cdcompress.distill.recipe import load_recipe
    from cdcompress.distill.run import run_recipe

    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with virtual_cuda():
        run_recipe(load_recipe(path), tmp_path / "run")
    return tmp_path / "run"


def test_vgg_recipe_trains_on_a_virtual_gpu(tmp_path: Path) -> None:
    """All three stages, the collaborator check, checkpoints, samples, held-out curve, refit and the report."""
    run = _run(tmp_path, VGG_RECIPE)
    assert (run / "student" / "model.json").is_file() and (run / "report.md").is_file()
    assert list((run / "samples").glob("decoder_L2_step*.png"))


@pytest.mark.parametrize("distill", ["{steps: 2, batch: 2, lr: 1.0e-3}", "{enabled: false}"])
def test_non_vgg_recipe_trains_on_a_virtual_gpu(tmp_path: Path, distill: str) -> None:
    """A non-VGG pair: stage 2's perceptual taps are probed after the collaborator check put the teacher on the
    GPU; with stage 2 disabled, stage 3's sample grid shows a teacher pair that no fit() moved."""
    run = _run(tmp_path, PAIR_RECIPE.replace("{stages_placeholder}", distill))
    assert (run / "student" / "model.json").is_file() and (run / "report.md").is_file()
    assert list((run / "samples").glob("decoder_L1_step*.png"))


def test_any_pair_api_on_a_virtual_gpu(tmp_path: Path) -> None:
    """apply -> fit -> train_decoder (with sample grids) -> save on cuda, every module checked by placement hooks;
    the caller's modules stay on the CPU."""
    torch.manual_seed(0)
    encoder, decoder = ResNetEncoder(8), ResNetDecoder(8)
    data = loader(photo_batches(8), batch=4)
    with virtual_cuda():
        d = cdcompress.apply(encoder, decoder, slim=0.5)
        config = cdcompress.TrainConfig(steps=2, log_every=1, sample_every=2, device="cuda")
        with placement_hooks(d.student, d.teacher, d.collaborator, d.branches) as ran:
            d.fit(data, config, tmp_path / "fit")
        assert ran and isinstance(next(d.student.parameters()), OnDevice)
        small, _ = d.fit_decoder(data, config, run_dir=tmp_path / "decoder")
        d.save_student(tmp_path / "student", decoder=small)
    assert next(encoder.parameters()).device.type == "cpu"
    assert list((tmp_path / "decoder" / "samples").glob("*.png"))
    cdcompress.load(tmp_path / "student", encoder=ResNetEncoder, decoder=ResNetDecoder)


def test_mean_over_processes_reduces_on_the_nccl_device() -> None:
    """NCCL all-reduces only GPU tensors: the logged losses must be averaged on cuda:local_rank."""
    with virtual_cuda(), checked_collectives(simulate=("nccl", 2)) as seen:
        assert distributed.mean_over_processes({"total": 0.5, "pixel": 0.25}) == {"total": 0.5, "pixel": 0.25}
    assert seen == [("all_reduce", "cuda:0")]
    with checked_collectives(simulate=("gloo", 2)) as seen:
        assert distributed.mean_over_processes({"total": 0.5}) == {"total": 0.5}
    assert seen == [("all_reduce", "cpu")]


def test_harness_catches_a_cpu_tensor_meeting_gpu_weights() -> None:
    """The harness itself: a CPU input to a GPU module fails as on CUDA, and the hooks name the module."""
    with virtual_cuda():
        conv = torch.nn.Conv2d(3, 4, 3).to("cuda")
        with pytest.raises(RuntimeError, match="same device"):
            conv(torch.rand(1, 3, 8, 8))
        with placement_hooks(conv), pytest.raises(AssertionError, match="got input 0 on cpu"):
            conv(torch.rand(1, 3, 8, 8))
        out = conv(torch.rand(1, 3, 8, 8).cuda())
        assert out.device.type == "cuda" and out.cpu().device.type == "cpu" and out.sum().item() == out.cpu().sum()
    with checked_collectives(simulate=("nccl", 2)), pytest.raises(AssertionError, match="need cuda tensors"):
        torch.distributed.all_reduce(torch.ones(2))


def test_student_decoder_samples_without_fit_on_a_virtual_gpu(tmp_path: Path) -> None:
    """Stage 3 straight after apply() (no fit): its sample grid runs the teacher pair on the batch's device."""
    torch.manual_seed(0)
    data = loader(photo_batches(8), batch=4)
    with virtual_cuda():
        d = cdcompress.apply(ResNetEncoder(8), ResNetDecoder(8), slim=0.5)
        config = cdcompress.TrainConfig(steps=1, sample_every=1, device="cuda")
        d.fit_decoder(data, config, run_dir=tmp_path)
    assert list((tmp_path / "samples").glob("decoder_step*.png"))


def test_perceptual_taps_probe_leaves_the_global_rng_alone() -> None:
    from types import SimpleNamespace

    from cdcompress.distill.stages import perceptual_taps

    recipe = SimpleNamespace(objective=SimpleNamespace(perceptual_taps=None), seed=0)
    encoder = ResNetEncoder(8)
    before = torch.get_rng_state()
    assert perceptual_taps(recipe, encoder, 1) == ["output"]  # type: ignore[arg-type]
    assert torch.equal(before, torch.get_rng_state())


@pytest.mark.parametrize("tile", [0, 64])
def test_stylize_on_a_virtual_gpu_stays_there(tile: int) -> None:
    """The device-resident WCT cascade (untiled and tiled) on cuda: every network input is on the GPU, and the
    result equals the CPU computation."""
    from conftest import random_student

    from cdcompress.stylization import TorchBackend, stylize

    generator = torch.Generator().manual_seed(0)
    content, style = torch.rand(1, 3, 72, 88, generator=generator), torch.rand(1, 3, 48, 48, generator=generator)
    model = random_student()
    cpu = stylize(TorchBackend(model), content, style, levels=[3, 1], tile=tile)
    with virtual_cuda():
        backend = TorchBackend(model, device="cuda")
        assert next(model.encoder(3).parameters()).device.type == "cpu", "the caller's model was moved"
        with placement_hooks(*backend.model.encoders.values(), *backend.model.decoders.values()) as ran:
            gpu = stylize(backend, content, style, levels=[3, 1], tile=tile)
    assert ran and not isinstance(gpu, OnDevice) and gpu.device.type == "cpu"
    torch.testing.assert_close(gpu, cpu, atol=1e-5, rtol=0)
