"""cdcompress.apply on structurally different encoder-decoder pairs, trained for real on CPU."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from torch import nn
from zoo import ResNetDecoder, ResNetEncoder, TokenDecoder, TokenEncoder, UNetDecoder, UNetEncoder

from cdcompress.core.errors import CDCompressError
from cdcompress.data.batches import Batch, CropSampler, skimage_photos
from cdcompress.distill import TrainConfig, apply
from cdcompress.models.vgg import VGGDecoder, VGGEncoder, VGGSpec
from cdcompress.surgery.modules import count_parameters
from cdcompress.surgery.slim import Slimming, SlimmingError, slim_pair


def checksum(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return skimage_photos(tmp_path_factory.mktemp("photos"))


def vgg_pair() -> tuple[nn.Module, nn.Module]:
    spec = VGGSpec.vgg19(3).scaled(0.25)
    return VGGEncoder(spec), VGGDecoder(spec)


PAIRS = {
    "vgg": (vgg_pair, {"taps": ["relu1_1", "relu2_1", "relu3_1"]}),
    "resnet-bn": (lambda: (ResNetEncoder(), ResNetDecoder()), {"taps": "auto"}),
    "unet-skips": (lambda: (UNetEncoder(), UNetDecoder()), {"taps": "auto"}),
}


@pytest.mark.parametrize("kind", sorted(PAIRS))
def test_apply_trains_a_slim_student_that_drives_the_frozen_collaborator(kind: str, photos: list[Path]) -> None:
    torch.manual_seed(0)
    build, options = PAIRS[kind]
    teacher, collaborator = build()
    before = (checksum(teacher), checksum(collaborator))
    distiller = apply(teacher, collaborator, slim=0.5, beta=1.0, lambda_p=0.1, **options)
    # Random Q (the paper's init): what this checks is that the loop trains the student and Q from far off;
    # the least-squares Q starts near the minimum of these random-weight teachers (tests/test_residual_pair.py).
    distiller.init_branches = False

    # Slimmed as asked: half the channels is about a quarter of the conv parameters.
    full, slim = count_parameters(teacher), count_parameters(distiller.student)
    assert slim < 0.35 * full, (full, slim)

    sampler = CropSampler(photos, batch_size=4, resize=64, crop=32, seed=1)
    result = distiller.fit(sampler, TrainConfig(steps=40, lr=2e-3, log_every=1))
    losses = [h["total"] for h in result.history]
    assert sum(losses[-8:]) / 8 < 0.7 * sum(losses[:8]) / 8, losses

    assert (checksum(teacher), checksum(collaborator)) == before, "teacher or collaborator changed"
    assert all(not p.requires_grad for p in distiller.collaborator.parameters())

    student = distiller.deployable()
    assert count_parameters(student) == count_parameters(distiller.student)
    assert not any(isinstance(m, type(distiller.branches)) for m in student.modules())
    assert all(not m._forward_hooks for m in student.modules()), "hooks leaked into the deployable student"

    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        teacher_out = distiller.teacher(x)
        _, embedded = distiller.embedded_features(x)
        decoded = distiller.collaborator(embedded)
    teacher_shapes = [t.shape for t in (teacher_out.values() if isinstance(teacher_out, dict) else [teacher_out])]
    embedded_shapes = [t.shape for t in (embedded.values() if isinstance(embedded, dict) else [embedded])]
    assert embedded_shapes == teacher_shapes and decoded.shape == x.shape
    raw = student(x)
    raw_widths = [t.shape[1] for t in (raw.values() if isinstance(raw, dict) else [raw])]
    assert all(s < t[1] for s, t in zip(raw_widths, teacher_shapes, strict=True)), "output width was not slimmed"


def test_token_encoder_gets_linear_branches() -> None:
    teacher, collaborator = TokenEncoder(), TokenDecoder()
    distiller = apply(teacher, collaborator, slim=Slimming(0.5, keep=["decoder.fc"]), taps=None,
                      example_inputs=(torch.rand(1, 3, 32, 32),))
    branch = distiller.branches["output"]
    assert isinstance(branch, nn.Linear) and (branch.in_features, branch.out_features) == (16, 32)
    terms = distiller.losses(torch.rand(2, 3, 32, 32))
    assert torch.isfinite(terms["total"]) and set(terms) >= {"embed", "pixel", "total"}


def test_vgg_slimming_uses_per_filter_l1_and_mirrors_widths() -> None:
    torch.manual_seed(0)
    teacher, collaborator = vgg_pair()
    distiller = apply(teacher, collaborator, slim={"conv11": 12, "*": 0.5}, taps=None)
    assert distiller.student.spec.widths == (12, 8, 16, 16, 32)
    assert distiller.decoder_init.spec.widths == (12, 8, 16, 16, 32)  # decoder conv12 outputs conv11's width
    l1 = teacher.conv11.weight.abs().flatten(1).sum(1)
    kept = sorted(torch.topk(l1, 12).indices.tolist())
    torch.testing.assert_close(distiller.student.conv11.weight, teacher.conv11.weight[kept])


@pytest.mark.parametrize("importance", ["l1", "l2", "random", "taylor"])
def test_importance_criteria(importance: str) -> None:
    torch.manual_seed(0)
    teacher, collaborator = vgg_pair()
    images = torch.rand(2, 3, 32, 32)  # a gradient criterion's calibration data: a VGG pair reconstructs its input
    slimming = Slimming(0.5, importance=importance, calibration=images if importance == "taylor" else None)
    distiller = apply(teacher, collaborator, slim=slimming, taps=None)
    assert distiller.student.spec.widths == (8, 8, 16, 16, 32)
    assert count_parameters(distiller.student) < count_parameters(teacher)


def _kept_conv11_filters(teacher: nn.Module, collaborator: nn.Module, importance: str, seed: int = 0) -> list[int]:
    student = apply(teacher, collaborator, slim=Slimming(0.5, importance=importance, seed=seed), taps=None).student
    return [i for i in range(teacher.conv11.out_channels)
            if any(torch.equal(teacher.conv11.weight[i], w) for w in student.conv11.weight)]


def test_each_criterion_keeps_the_filters_it_should() -> None:
    """A crafted conv11 whose L1 and L2 rankings disagree: filters 0-7 spread small weights (L1 ~2.7, L2 ~0.52),
    filters 8-15 hold one large weight (L1 = L2 ~1.1). L1 must keep 0-7, L2 8-15; random keeps a seed's choice.
    Every filter is distinct, so a kept filter is found in the teacher by value."""
    torch.manual_seed(0)
    teacher, collaborator = vgg_pair()
    with torch.no_grad():
        teacher.conv11.weight.zero_()
        for i in range(8):
            teacher.conv11.weight[i] = 0.1 + 0.001 * i
        for i in range(8, 16):
            teacher.conv11.weight[i, i % 3, 1, 1] = 1.0 + 0.01 * i  # distinct, so no two filters tie
    assert _kept_conv11_filters(teacher, collaborator, "l1") == list(range(8))
    assert _kept_conv11_filters(teacher, collaborator, "l2") == list(range(8, 16))
    random0 = _kept_conv11_filters(teacher, collaborator, "random", seed=0)
    assert random0 == _kept_conv11_filters(teacher, collaborator, "random", seed=0) and len(random0) == 8
    assert random0 != _kept_conv11_filters(teacher, collaborator, "random", seed=1)


def test_random_init_differs_from_pruned_init() -> None:
    torch.manual_seed(0)
    teacher, collaborator = vgg_pair()
    pruned = apply(teacher, collaborator, slim=Slimming(0.5, init="pruned"), taps=None).student
    fresh = apply(teacher, collaborator, slim=Slimming(0.5, init="random"), taps=None).student
    assert pruned.spec == fresh.spec
    assert not torch.equal(pruned.conv11.weight, fresh.conv11.weight)


def test_slimming_that_removes_nothing_fails_loudly() -> None:
    teacher, collaborator = vgg_pair()
    with pytest.raises(SlimmingError, match="removed nothing"):
        slim_pair(teacher, collaborator, (torch.rand(1, 3, 32, 32),), width=1.0)
    with pytest.raises(SlimmingError, match="tuple"):
        slim_pair(teacher, collaborator, torch.rand(1, 3, 32, 32), width=0.5)  # type: ignore[arg-type]
    with pytest.raises(SlimmingError, match="ratio"):
        slim_pair(teacher, collaborator, (torch.rand(1, 3, 32, 32),), width=1.5)


class _Interrupted(Exception):
    pass


class _CrashingSampler(CropSampler):
    crash_at: int = -1

    def shard(self, step: int, rank: int, world: int) -> torch.Tensor:
        if step == self.crash_at:
            raise _Interrupted(step)
        return super().shard(step, rank, world)


def _fresh_distiller() -> object:
    torch.manual_seed(0)
    teacher, collaborator = vgg_pair()
    return apply(teacher, collaborator, slim=0.5, taps=["relu1_1", "relu2_1"], beta=1.0, lambda_p=0.1, seed=3)


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(photos: list[Path], tmp_path: Path) -> None:
    config = TrainConfig(steps=12, lr=1e-3, schedule="cosine", checkpoint_every=4, log_every=2)

    straight = _fresh_distiller()
    straight.fit(CropSampler(photos, batch_size=2, resize=48, crop=32, seed=5), config, tmp_path / "a")

    interrupted = _fresh_distiller()
    sampler = _CrashingSampler(photos, batch_size=2, resize=48, crop=32, seed=5)
    sampler.crash_at = 9
    with pytest.raises(_Interrupted):
        interrupted.fit(sampler, config, tmp_path / "b")
    resumed = _fresh_distiller()
    result = resumed.fit(CropSampler(photos, batch_size=2, resize=48, crop=32, seed=5), config, tmp_path / "b", resume=True)

    assert result.resumed_from == 8
    for name in ("student", "branches"):
        ours = resumed.trainable_modules()[name].state_dict()
        theirs = straight.trainable_modules()[name].state_dict()
        for key in theirs:
            assert torch.equal(ours[key], theirs[key]), f"{name}.{key} differs after resume"
    steps = [line for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 6, "metrics of the interrupted tail were not trimmed"


def test_stage3_decoder_and_sample_grid(photos: list[Path], tmp_path: Path) -> None:
    distiller = _fresh_distiller()
    sampler = CropSampler(photos, batch_size=2, resize=48, crop=32, seed=5)
    decoder, result = distiller.fit_decoder(sampler, TrainConfig(steps=20, lr=2e-3, log_every=1, sample_every=10),
                                              run_dir=tmp_path)
    assert decoder.spec.widths == distiller.student.spec.widths
    losses = [h["total"] for h in result.history]
    assert sum(losses[-5:]) < sum(losses[:5])
    grid = tmp_path / "samples" / "decoder_step0000020.png"
    assert grid.is_file()
    from PIL import Image

    from cdcompress.data.annotate import header_height

    header = header_height(3 * 32, ["input", "teacher pair", "decoder"], "decoder · step 20")
    assert Image.open(grid).size == (3 * 32, 2 * 32 + header)  # input | teacher path | student path, 2 rows, titled


class _DivergingTask:
    """A real one-layer task whose loss turns NaN at a chosen step."""

    name = "diverge"

    def __init__(self, nan_at: int) -> None:
        self.layer = nn.Conv2d(3, 3, 1)
        self.nan_at, self.calls = nan_at, 0

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"layer": self.layer}

    def set_train(self, mode: bool) -> None:
        self.layer.train(mode)

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        self.calls += 1
        loss = torch.nn.functional.mse_loss(self.layer(batch.input), batch.target)
        if self.calls == self.nan_at:
            loss = loss * float("nan")
        return {"total": loss}

    def samples(self, batch: Batch) -> list[torch.Tensor]:
        return [batch.input]


def test_nan_loss_stops_with_the_last_good_checkpoint(photos: list[Path], tmp_path: Path) -> None:
    from cdcompress.distill import Trainer, TrainingError

    sampler = CropSampler(photos, batch_size=2, resize=40, crop=32)
    trainer = Trainer(_DivergingTask(nan_at=6), sampler, TrainConfig(steps=10, checkpoint_every=2), tmp_path)
    with pytest.raises(TrainingError, match=r"loss became nan at step 6.*diverge_step0000004\.pt"):
        trainer.fit()


def test_accumulation_splits_the_batch_or_says_why(photos: list[Path]) -> None:
    """accumulate: K takes K micro-batches per step (K forwards); a batch that does not split is one line."""
    from cdcompress.distill import Trainer, TrainingError

    task = _DivergingTask(nan_at=-1)
    Trainer(task, CropSampler(photos, batch_size=4, resize=40, crop=32), TrainConfig(steps=3, accumulate=2)).fit()
    assert task.calls == 3 * 2
    odd = Trainer(_DivergingTask(nan_at=-1), CropSampler(photos, batch_size=4, resize=40, crop=32),
                  TrainConfig(steps=1, accumulate=3))
    with pytest.raises(TrainingError, match=r"4 samples per process do not split into accumulate: 3 micro-batches"):
        odd.fit()


def test_crafted_trainer_checkpoint_is_not_executed(photos: list[Path], tmp_path: Path) -> None:
    from cdcompress.distill import Trainer

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    sampler = CropSampler(photos, batch_size=2, resize=40, crop=32)
    first = Trainer(_DivergingTask(nan_at=-1), sampler, TrainConfig(steps=4, checkpoint_every=2), tmp_path)
    first.fit()
    torch.save({"stage": "diverge", "step": 6, "modules": Evil()}, tmp_path / "checkpoints" / "diverge_step0000006.pt")
    resumed = Trainer(_DivergingTask(nan_at=-1), sampler, TrainConfig(steps=8, checkpoint_every=2), tmp_path)
    result = resumed.fit(resume=True)
    assert not marker.exists(), "a crafted checkpoint executed code"
    assert result.resumed_from == 4  # the crafted file was refused, the previous good one used


def test_the_collaborator_term_drives_the_student() -> None:
    """β = 0 leaves only the loss through the frozen collaborator: the student must still learn from it, and end
    elsewhere than the feature-KD run that has the embedding loss alone (no collaborator)."""
    torch.manual_seed(0)
    teacher, collaborator = vgg_pair()
    batches = [torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    config = TrainConfig(steps=4, lr=1e-2, log_every=1)
    only_collaborator = apply(teacher, collaborator, slim=0.5, beta=0.0, taps=None)
    start = only_collaborator.student.conv11.weight.detach().clone()
    result = only_collaborator.fit(batches, config)
    assert set(result.history[0]) >= {"pixel", "total"} and result.history[0].get("embed", 0.0) == 0.0
    assert not torch.equal(only_collaborator.student.conv11.weight, start)  # gradients came through the collaborator
    feature_kd = apply(teacher, collaborator, slim=0.5, beta=1.0, objective="feature-kd", taps=None)
    feature_kd.fit(batches, config)
    assert not torch.allclose(only_collaborator.student.conv11.weight, feature_kd.student.conv11.weight, atol=1e-4)


class _SharedReluEncoder(nn.Module):
    """Like torchvision's BasicBlock: one ReLU module runs twice, then a stride-2 conv downsamples."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.act = nn.ReLU()
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv2(self.relu(self.conv1(x))))
        return self.pool(self.act(self.conv3(self.down(x))))


def test_shared_activation_modules_are_not_tapped() -> None:
    """A hook on a module that runs twice sees only its last call: auto taps skip it, explicit taps are refused."""
    from cdcompress.surgery.embed import auto_taps

    encoder, example = _SharedReluEncoder(), torch.rand(1, 3, 32, 32)
    assert auto_taps(encoder, example) == ["act"]  # not the shared "relu" before the stride-2 conv
    decoder = nn.Sequential(nn.Upsample(scale_factor=4.0), nn.Conv2d(16, 3, 3, padding=1))
    with pytest.raises(CDCompressError, match=r"run more than once per forward"):
        apply(encoder, decoder, slim=0.5, taps=["relu"], example_inputs=(example,))
    assert apply(encoder, decoder, slim=0.5, taps=["act"], example_inputs=(example,)).features[0] == "act"
