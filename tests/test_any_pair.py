"""Any encoder-decoder pair end to end: apply -> fit(DataLoader) -> train_decoder -> save -> load -> export."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from zoo import GNUNetDecoder, GNUNetEncoder, ResNetDecoder, ResNetEncoder

import cdcompress
from cdcompress.cli import main
from cdcompress.surgery.modules import count_parameters

PAIRS = {"unet-convtranspose-groupnorm": (GNUNetEncoder, GNUNetDecoder), "resnet-batchnorm": (ResNetEncoder, ResNetDecoder)}


def photo_batches(count: int = 24, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth random images (low-frequency noise upsampled): learnable, unlike white noise."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, size // 8, size // 8, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def loader(images: torch.Tensor, batch: int = 8) -> DataLoader:
    return DataLoader(TensorDataset(images), batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kind", sorted(PAIRS))
def test_own_pair_end_to_end(kind: str, tmp_path: Path, device: str) -> None:
    make_encoder, make_decoder = PAIRS[kind]
    torch.manual_seed(0)
    encoder, decoder = make_encoder(), make_decoder()
    data = loader(photo_batches())

    d = cdcompress.apply(encoder, decoder, slim=0.5)
    fitted = d.fit(data, cdcompress.TrainConfig(steps=30, lr=2e-3, log_every=1, device=device))
    losses = [h["total"] for h in fitted.history]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    small, result = d.fit_decoder(data, cdcompress.TrainConfig(steps=20, lr=2e-3, log_every=1, device=device))
    assert result.history[-1]["total"] < result.history[0]["total"]

    d.save_student(tmp_path / "student", decoder=small)
    spec = json.loads((tmp_path / "student" / "model.json").read_text())
    assert spec["family"] == "module" and spec["architecture"]["widths"]
    m = cdcompress.load(tmp_path / "student", encoder=make_encoder, decoder=make_decoder)
    for ours, theirs in ((m.encoder(), d.student), (m.decoder(), small)):
        for (key, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
            assert torch.equal(a, b.cpu()), key  # weights restored exactly

    # Asked for half the channels: both sides at most 0.3x the parameters.
    assert count_parameters(m.encoder()) <= 0.3 * count_parameters(encoder)
    assert count_parameters(m.decoder()) <= 0.3 * count_parameters(decoder)

    exported = cdcompress.export.export_bundle(m, tmp_path / "bundle", echo=lambda _: None, progress=False)
    assert len(exported.rows) == 6 and all(r.ok and r.error <= 1e-4 for r in exported.rows)
    from cdcompress.export.pair import PairRunner

    image = photo_batches(1, 48, seed=5)
    with torch.no_grad():
        want = m.decoder()(m.encoder()(image))
    assert torch.allclose(PairRunner(tmp_path / "bundle")(image), want, atol=1e-4)


def test_slimming_reports_and_checks_both_sides() -> None:
    d = cdcompress.apply(GNUNetEncoder(), GNUNetDecoder(), slim=cdcompress.Slimming(0.3, round_to=8))
    widths = d.slimmed.widths()
    assert widths["decoder.head"] == 3, "the output layer must keep the image's channels"
    assert {name: w % 8 for name, w in widths.items() if name != "decoder.head"} == dict.fromkeys(
        [n for n in widths if n != "decoder.head"], 0)
    assert widths["decoder.up2"] < 32 and widths["decoder.up1"] < 16, "ConvTranspose layers must be slimmed"
    assert d.slimmed.decoder_kept < 0.5 and d.slimmed.encoder_kept < 0.5 and d.slimmed.compression > 2
    table = d.slimmed.summary()
    assert "| decoder.up1 | 16 | 8 | 8 |" in table and "protected" in table


class _DepthwiseEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.norm = nn.InstanceNorm2d(16, affine=True)
        self.pointwise = nn.Conv2d(16, 32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.pointwise(self.norm(self.grouped(torch.relu(self.depthwise(self.stem(x)))))))


def test_depthwise_grouped_and_instancenorm_slim_consistently() -> None:
    d = cdcompress.apply(_DepthwiseEncoder(), nn.Conv2d(32, 3, 1), slim=0.5, taps=None)
    widths = d.slimmed.widths()
    assert widths["encoder.depthwise"] == widths["encoder.stem"] == 8 and d.student.depthwise.groups == 8
    assert widths["encoder.grouped"] % 4 == 0 and d.student.norm.num_features == widths["encoder.grouped"]
    d.losses(torch.rand(2, 3, 16, 16))  # the slimmed graph runs


class _TokenEncoderWithLayerNorm(nn.Module):
    """Patch tokens, LayerNorm and a residual MLP: [B, N, C] features."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.norm(self.patch(x).flatten(2).transpose(1, 2))
        return tokens + self.fc2(self.act(self.fc1(tokens)))


def test_layernorm_and_linear_tokens_slim_with_the_residual() -> None:
    from zoo import TokenDecoder

    d = cdcompress.apply(_TokenEncoderWithLayerNorm(), TokenDecoder(), slim=cdcompress.Slimming(0.5, keep=["decoder.fc"]),
                         taps=None, example_inputs=(torch.rand(1, 3, 32, 32),))
    assert d.student.norm.normalized_shape == (16,) and d.student.fc2.out_features == 16
    assert isinstance(d.branches["output"], nn.Linear)
    assert torch.isfinite(d.losses(torch.rand(2, 3, 32, 32))["total"])


def test_importance_plugins_from_torch_pruning_and_the_registry() -> None:
    import torch_pruning as tp

    from cdcompress.core.registry import IMPORTANCES

    magnitude = cdcompress.Slimming(0.5, importance=tp.importance.GroupMagnitudeImportance())
    d = cdcompress.apply(ResNetEncoder(), ResNetDecoder(), slim=magnitude)
    assert count_parameters(d.student) < 0.3 * count_parameters(ResNetEncoder())

    calls = []

    @IMPORTANCES.register("test-last-channels")
    def last_channels(seed: int = 0):
        def score(group):
            calls.append(group)
            return torch.arange(len(group[0].idxs), dtype=torch.float32)
        return score

    teacher = GNUNetEncoder()
    d = cdcompress.apply(teacher, GNUNetDecoder(), slim=cdcompress.Slimming(0.5, importance="test-last-channels"))
    assert calls and torch.equal(d.student.enc1[0].weight, teacher.enc1[0].weight[8:])
    with pytest.raises(cdcompress.CDCompressError, match="unknown importance 'l3'"):
        cdcompress.apply(GNUNetEncoder(), GNUNetDecoder(), slim=cdcompress.Slimming(0.5, importance="l3"))


def test_paired_data_trains_towards_the_target() -> None:
    """(input, target) batches: the collaborator's output is judged against the target, not the input."""
    clean = photo_batches(8)
    noisy = (clean + 0.2 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    d = cdcompress.apply(GNUNetEncoder(), GNUNetDecoder(), slim=0.5, beta=0.0, lambda_p=0.0)
    paired = d.losses(cdcompress.Batch(noisy, clean))["pixel"]
    with torch.no_grad():
        out = d.collaborator(d.embedded_features(noisy)[1])
    assert torch.isclose(paired, torch.nn.functional.mse_loss(out, clean))
    assert not torch.isclose(paired, torch.nn.functional.mse_loss(out, noisy))


def test_any_iterable_is_training_data_and_resume_is_exact(tmp_path: Path) -> None:
    images = photo_batches(16)

    def make_loader() -> DataLoader:  # re-creatable: the same sequence every time
        return loader(images, batch=4)

    def run(steps: int, out: Path, resume: bool = False) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        d = cdcompress.apply(ResNetEncoder(), ResNetDecoder(), slim=0.5, seed=1)
        d.fit(make_loader, cdcompress.TrainConfig(steps=steps, lr=1e-3, checkpoint_every=3), out, resume=resume)
        return d.student.state_dict()

    straight = run(6, tmp_path / "a")
    run(3, tmp_path / "b")
    resumed = run(6, tmp_path / "b", resume=True)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)

    d = cdcompress.apply(ResNetEncoder(), ResNetDecoder(), slim=0.5)
    d.fit([images[:4], images[4:8]], cdcompress.TrainConfig(steps=5))  # a list is re-iterated
    d.fit((images[i : i + 2] for i in range(0, 16, 2)), cdcompress.TrainConfig(steps=8))  # a generator, used once
    with pytest.raises(cdcompress.CDCompressError, match="ran out after 2 batches"):
        d.fit(iter([images[:2], images[2:4]]), cdcompress.TrainConfig(steps=3))
    labels = DataLoader(TensorDataset(images, torch.zeros(16, dtype=torch.long)), batch_size=4)
    with pytest.raises(cdcompress.CDCompressError, match="class labels cannot be targets"):
        d.fit(labels, cdcompress.TrainConfig(steps=1))


def test_a_model_file_cannot_name_code_to_run(tmp_path: Path) -> None:
    d = cdcompress.apply(GNUNetEncoder(), GNUNetDecoder(), slim=0.5)
    d.save_student(tmp_path / "student", decoder=d.decoder_init)  # the format is under test, not the training
    marker = tmp_path / "ran"
    spec_path = tmp_path / "student" / "model.json"
    spec = json.loads(spec_path.read_text())
    for role in ("encoder", "decoder"):
        spec["architecture"][role] = {"class": "os.system",
                                      "registered": {"name": "os:system", "kwargs": {"command": f"touch {marker}"}}}
    spec_path.write_text(json.dumps(spec))
    with pytest.raises(cdcompress.CDCompressError, match="user architecture"):
        cdcompress.load(tmp_path / "student")
    result = CliRunner().invoke(main, ["--import", "json", "export", str(tmp_path / "student"), "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "user architecture (os.system)" in result.output
    assert not marker.exists()
    # The caller's own factories still rebuild it (the manifest's claims are only ever names).
    assert cdcompress.load(tmp_path / "student", encoder=GNUNetEncoder, decoder=GNUNetDecoder).encoder() is not None


def test_registered_architecture_loads_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "userpkg"
    package.mkdir()
    shutil.copy(Path(__file__).parent / "zoo.py", package / "zoo.py")
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(
        "from cdcompress import ARCHITECTURES\nfrom userpkg.zoo import GNUNetDecoder, GNUNetEncoder\n\n"
        "@ARCHITECTURES.register('test-gn-unet-encoder')\ndef encoder(width=16):\n    return GNUNetEncoder(width)\n\n"
        "@ARCHITECTURES.register('test-gn-unet-decoder')\ndef decoder(width=16):\n    return GNUNetDecoder(width)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import userpkg.models as user

    d = cdcompress.apply(user.encoder(width=8), user.decoder(width=8), slim=0.5)
    d.save_student(tmp_path / "student", decoder=d.decoder_init)  # the format is under test, not the training
    record = json.loads((tmp_path / "student" / "model.json").read_text())["architecture"]
    assert record["encoder"]["registered"] == {"name": "test-gn-unet-encoder", "kwargs": {"width": 8}}

    photo = tmp_path / "photo.png"
    from cdcompress.data.images import save_image

    save_image(photo_batches(1, 48), photo)
    runner = CliRunner()
    recon = runner.invoke(main, ["--import", "userpkg.models", "eval", "recon", str(tmp_path / "student"), str(photo)])
    assert recon.exit_code == 0, recon.output
    assert "| 1 | 48x48 |" in recon.output
    missing = runner.invoke(main, ["--import", "userpkg.nothere", "inspect", str(tmp_path / "student")])
    assert missing.exit_code == 2 and "--import userpkg.nothere" in missing.output
    threads = torch.get_num_threads()
    cost = runner.invoke(main, ["--import", "userpkg.models", "eval", "cost", str(tmp_path / "student"),
                                "--time-size", "64", "--repeats", "3", "--threads", "1"])
    assert cost.exit_code == 0, cost.output
    assert torch.get_num_threads() == threads, "eval cost must restore the caller's thread count"
    inspected = runner.invoke(main, ["--import", "userpkg.models", "inspect", str(tmp_path / "student"), "--size", "64", "64"])
    assert inspected.exit_code == 0, inspected.output
    assert "| encoder | 1 |" in inspected.output and "| decoder | 1 |" in inspected.output
    assert "onnxruntime ms" in cost.output and "| teacher / student |" in cost.output
    exported = runner.invoke(main, ["--import", "userpkg.models", "export", str(tmp_path / "student"), "--onnx", "--quiet",
                                    "--out", str(tmp_path / "bundle")])
    assert exported.exit_code == 0, exported.output
    assert json.loads((tmp_path / "bundle" / "manifest.json").read_text())["family"] == "module"
    sys.modules.pop("userpkg.models", None)


def test_groupnorm_reduced_to_instance_norm_is_reported() -> None:
    """Slimming keeps GroupNorm's group count: at one channel per group the pair lost its channel means."""
    quarter = cdcompress.apply(GNUNetEncoder(), GNUNetDecoder(), slim=0.25, taps=None)
    assert any("encoder.enc1.1: GroupNorm(4) now has one channel per group" in w for w in quarter.slimmed.warnings)
    assert "warning: encoder.enc1.1" in quarter.slimmed.summary()
    assert cdcompress.apply(GNUNetEncoder(), GNUNetDecoder(), slim=0.5, taps=None).slimmed.warnings == []


def test_apply_draws_from_its_own_generator_not_torchs(monkeypatch: pytest.MonkeyPatch) -> None:
    """``apply(seed=)`` alone decides the student and branches: torch's global RNG is neither read nor advanced,
    nor seeded and restored, also when the slimmed pair is re-initialised (BatchNorm included) with random
    importance."""
    torch.manual_seed(0)
    encoder, decoder = ResNetEncoder(), ResNetDecoder()
    slimming = cdcompress.Slimming(0.5, importance="random", init="random")
    results = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        with monkeypatch.context() as patch:  # another thread's random stream would be disturbed by these
            for name in ("manual_seed", "seed", "set_rng_state"):
                patch.setattr(torch, name, _refuse)
            patch.setattr(torch.random, "fork_rng", _refuse)
            d = cdcompress.apply(encoder, decoder, slim=slimming, seed=7)
        assert torch.equal(torch.get_rng_state(), before)
        results.append({**d.student.state_dict(), **d.branches.state_dict()})
    assert results[0].keys() == results[1].keys()
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])
    other = cdcompress.apply(encoder, decoder, slim=slimming, seed=8)
    assert any(not torch.equal(v, other.branches.state_dict()[k]) for k, v in d.branches.state_dict().items())


def _refuse(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("apply() touched torch's global RNG")
