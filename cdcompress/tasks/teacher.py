"""Train a teacher from scratch: a VGG-19-topology encoder with one decoder per cut level, jointly on pixel MSE.

Why: Collaborative Distillation needs a *trained* teacher. Without the paper's (a download) there is nothing real to
compress, and a random encoder with trained decoders reconstructs blurred, colour-shifted images. An encoder and
its decoders trained together as autoencoders reconstruct sharply at every level, so the product can show the
method doing real work with no network at all: ``cdcompress train-teacher`` makes such a teacher on any photos, and
the offline demo's bundled teacher (:mod:`cdcompress.models.bundled`) was made by it on scikit-image's photos.

The encoder is one network; level ``k`` reads it at ``relu{k}_1`` (as the WCT teacher's encoders are prefixes of
one VGG-19). Loss: the sum over levels of the pixel MSE of ``decoder_k(encoder(x) at relu{k}_1)``, so each level's
decoder and the layers below it learn together. :class:`TeacherTask` is run by the library's one training loop
(checkpoints, resume, held-out curve, progress).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ModelFormatError
from ..data.batches import Batch, CropSampler, DataError, image_paths, resize_shorter, skimage_split
from ..data.holdout import check_disjoint, content_digest
from ..data.images import crop_to_multiple, load_image
from ..distill.trainer import TrainConfig, Trainer
from ..evaluation.metrics import reconstruction_psnr
from ..models.format import CDModel, save
from ..models.vgg import VGGDecoder, VGGEncoder, VGGSpec, relu_name


def level_tap(level: int) -> str:
    """The encoder activation level ``level`` decodes (``relu{level}_1``)."""
    return relu_name(f"conv{level}1")


class TeacherTask:
    """One encoder and a decoder per level, trained together on the summed per-level pixel MSE: a
    :class:`~cdcompress.distill.trainer.Task`. ``predict`` (the held-out curve) is the deepest level's reconstruction,
    the hardest one."""

    name = "teacher"

    def __init__(self, encoder: VGGEncoder, decoders: dict[int, VGGDecoder]) -> None:
        self.encoder, self.decoders = encoder, decoders
        self.taps = {level: level_tap(level) for level in decoders}

    @property
    def sample_titles(self) -> list[str]:
        return ["input", *(f"level {level}" for level in sorted(self.decoders))]

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder, **{f"decoder{level}": d for level, d in self.decoders.items()}}

    def reconstructions(self, images: torch.Tensor) -> dict[int, torch.Tensor]:
        features = self.encoder.features(images, self.taps.values())
        return {level: self.decoders[level](features[tap]) for level, tap in self.taps.items()}

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        terms = {f"pixel_L{level}": F.mse_loss(out, batch.target) for level, out in self.reconstructions(batch.input).items()}
        return {"total": sum(terms.values()), **terms}

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        deepest = max(self.decoders)
        return self.decoders[deepest](self.encoder.features(images, [self.taps[deepest]])[self.taps[deepest]])

    def samples(self, batch: Batch) -> list[torch.Tensor]:
        outputs = self.reconstructions(batch.input)
        return [batch.input, *(outputs[level] for level in sorted(outputs))]

    def set_train(self, mode: bool) -> None:
        for module in self.trainable_modules().values():
            module.train(mode)


@dataclass
class TeacherSettings:
    """How :func:`train_teacher` trains. The defaults made the bundled offline teacher (its ``model.json`` records
    the values used); warm-up keeps Adam's first steps from killing the decoders' ReLUs, which at full rate
    left whole levels dead (measured: a level stuck at 6.5 dB)."""

    levels: tuple[int, ...] = (1, 2, 3)
    steps: int = 1500
    batch: int = 4
    resize: int = 160
    crop: int = 128
    lr: float = 1e-3
    warmup_steps: int = 100
    seed: int = 0
    eval_size: int = 256
    checkpoint_every: int = 250
    log_every: int = 10
    sample_every: int = 500
    eval_every: int = 250
    device: str = "cpu"


def fresh_teacher(levels: Sequence[int], seed: int) -> tuple[VGGEncoder, dict[int, VGGDecoder]]:
    """A VGG-19 encoder to ``relu{max}_1`` and its mirrored decoders, He-initialised (scale-preserving through
    ReLUs) with each decoder's output starting at mid-grey."""
    torch.manual_seed(seed)
    encoder = VGGEncoder(VGGSpec.vgg19(max(levels)))
    decoders = {level: VGGDecoder(VGGSpec.vgg19(level)) for level in sorted(levels)}
    for module in (encoder, *decoders.values()):
        for conv in (m for m in module.modules() if isinstance(m, nn.Conv2d)):
            nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
    for decoder in decoders.values():
        decoder.reset_output_bias()
    return encoder, decoders


def held_out_images(paths: Sequence[Path], size: int, stride: int) -> list[torch.Tensor]:
    """Whole photos, shorter side ``size``, centre-cropped to the encoder's stride."""
    return [crop_to_multiple(resize_shorter(load_image(p), size), stride, p, anchor="center") for p in paths]


def level_psnr(model: CDModel, images: Sequence[torch.Tensor]) -> dict[int, float]:
    """Held-out reconstruction PSNR (dB) of every level of ``model``."""
    with torch.no_grad():
        return {level: round(reconstruction_psnr(model.encoder(level), model.decoder(level), images), 2)
                for level in model.levels}


def train_teacher(train: Sequence[Path], held_out: Sequence[Path], settings: TeacherSettings,
                  run_dir: str | Path | None = None, resume: bool = False) -> CDModel:
    """Train a teacher on ``train`` photos and score it on ``held_out`` (disjoint by content); the model's
    ``meta`` records the settings, the photos' content digests and the held-out PSNR per level."""
    check_disjoint(train, held_out, "teacher held-out photos")
    encoder, decoders = fresh_teacher(settings.levels, settings.seed)
    task = TeacherTask(encoder, decoders)
    stride = 2 ** (max(settings.levels) - 1)
    images = held_out_images(held_out, settings.eval_size, stride)
    config = TrainConfig(steps=settings.steps, lr=settings.lr, schedule="cosine", lr_floor=0.05,
                         warmup_steps=settings.warmup_steps, checkpoint_every=settings.checkpoint_every,
                         log_every=settings.log_every, sample_every=settings.sample_every,
                         eval_every=settings.eval_every, device=settings.device)
    data = CropSampler(list(train), batch_size=settings.batch, resize=settings.resize, crop=settings.crop,
                       seed=settings.seed)
    encoder.to(settings.device)
    for decoder in decoders.values():
        decoder.to(settings.device)
    Trainer(task, data, config, run_dir, held_out=images).fit(resume=resume)
    model = CDModel(encoders={max(settings.levels): encoder.cpu().eval()},
                    decoders={level: d.cpu().eval() for level, d in decoders.items()})
    model.meta = {"source": {"kind": "trained-teacher", "settings": _settings_record(settings),
                             "train": _photo_records(train), "held_out": _photo_records(held_out)}}
    model.meta["source"]["held_out_psnr"] = {str(k): v for k, v in level_psnr(model, images).items()}
    return model


def teacher_photos(train: Sequence[Path], held_out: Sequence[Path], scratch: Path) -> tuple[list[Path], list[Path]]:
    """The photos to train and score on: the given folders/files, or scikit-image's split (written to ``scratch``)."""
    if bool(train) != bool(held_out):
        raise DataError("give both --data and --held-out, or neither (scikit-image's photos and their held-out pair)")
    if not train:
        return skimage_split(Path(scratch) / "skimage_photos")
    return image_paths(list(train)), image_paths(list(held_out))


def write_teacher(train: Sequence[Path], held_out: Sequence[Path], settings: TeacherSettings, out: str | Path, *,
                  run_dir: str | Path | None = None, resume: bool = False, half: bool = False,
                  overwrite: bool = False) -> CDModel:
    """:func:`train_teacher`, then save it to ``out`` (float16 with ``half``, scored again after the rounding)."""
    if Path(out).exists() and not overwrite:
        raise ModelFormatError(f"{out} already exists; choose another --out or pass --force")
    model = train_teacher(train, held_out, settings, run_dir, resume)
    if half:
        model = half_precision(model)
        read_back = copy.deepcopy(model).to("cpu", torch.float32)  # what loading the stored weights gives
        images = held_out_images(held_out, settings.eval_size, 2 ** (max(settings.levels) - 1))
        model.meta["source"]["held_out_psnr"] = {str(k): v for k, v in level_psnr(read_back, images).items()}
        model.meta["source"]["weights_dtype"] = "float16"
    save(model, out, overwrite=overwrite)
    return model


def _settings_record(settings: TeacherSettings) -> dict:
    return {**vars(settings), "levels": list(settings.levels)}


def _photo_records(paths: Sequence[Path]) -> list[dict[str, str]]:
    return [{"name": Path(p).name, "content_sha256": content_digest(p)} for p in paths]


def half_precision(model: CDModel) -> CDModel:
    """The model with float16 weights: half the bytes on disk (a bundled teacher ships in the wheel); loading
    casts back to float32, and the held-out PSNR is measured again after the rounding."""
    return model.to("cpu", torch.float16)


__all__ = ["TeacherSettings", "TeacherTask", "fresh_teacher", "half_precision", "level_psnr", "level_tap",
           "teacher_photos", "train_teacher", "write_teacher"]
