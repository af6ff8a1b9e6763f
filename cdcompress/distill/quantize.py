"""Quantization-aware collaborative distillation: fine-tune a float student so that its INT8 graphs keep its quality.

Why: post-training quantization of the paper's 16x students loses up to 12.9 dB at level 1 (docs/export.md), and
per-level errors compound through the five-level WCT cascade. Plain QAT distils a quantized network from its float
self; CD's insight is that an encoder is only as good as what its decoder can read. So, per level, as in CD:

- *stage 2, encoder*: the fake-quantized encoder (:mod:`cdcompress.surgery.fake_quant`, the exporter's exact
  scheme) is trained so that the frozen **float** decoder, the collaborator, reconstructs the photo from its
  features, plus ``beta`` x the feature MSE against the float encoder relative to the features' mean square (WCT
  reads feature statistics; relative, because feature scales differ by level and the pixel term must not drown);
- *stage 3, decoder*: the fake-quantized decoder is trained on the frozen INT8 encoder's features: pixel MSE of the
  reconstruction, plus ``wct_weight`` x MSE against the float pair's single-level WCT result (a photo stylized
  toward the next photo of the batch), the decoder's job in stylization.

Activation ranges are calibrated first (on the photos, and for a decoder on features as encoded and after WCT,
as the post-training exporter calibrates) and then kept; the model written holds the trained float weights and, in
``model.json`` under ``int8``, those ranges, which ``cdcompress export --int8`` hands to the quantizer unchanged.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import CDCompressError
from ..data.batches import Batch, CropSampler
from ..data.holdout import check_disjoint, content_digest
from ..export.errors import ExportError
from ..export.int8_record import META_KEY, SCHEME, level_record, trained_ranges
from ..models.format import CDModel
from ..surgery import fake_quant
from ..surgery.modules import EncoderDecoderPair, freeze
from .decoder import DecoderTask
from .trainer import TrainConfig, Trainer


@dataclass
class QuantizeSettings:
    """How :func:`quantize_model` fine-tunes: a short fine-tune of a trained float student (cosine from ``lr`` to a tenth)."""

    levels: tuple[int, ...] = ()  # () = every level of the model
    encoder_steps: int = 300
    decoder_steps: int = 300
    batch: int = 4
    resize: int = 160
    crop: int = 128
    lr: float = 1e-4
    beta: float = 1.0  # feature MSE against the float encoder, relative to the features' power (scale-free)
    wct_weight: float = 1.0  # stage 3: MSE against the float pair's WCT result
    percentile: float = fake_quant.DEFAULT_PERCENTILE
    calibration_photos: int = 16
    seed: int = 0
    checkpoint_every: int = 100
    log_every: int = 10
    eval_every: int = 100
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("encoder_steps", "decoder_steps"):
            if getattr(self, name) < 0:
                raise CDCompressError(f"quantize: {name} must be >= 0, got {getattr(self, name)}")
        if self.batch < 2:
            raise CDCompressError(f"quantize: batch must be >= 2 (stage 3 stylizes each photo toward another), got {self.batch}")


class EncoderQAT:
    """Stage 2 with the collaborator in the loop: INT8 encoder, frozen float decoder and float encoder."""

    def __init__(self, level: int, encoder: nn.Module, float_encoder: nn.Module, collaborator: nn.Module,
                 beta: float) -> None:
        self.name = f"qat_encoder{level}"
        self.encoder, self.float_encoder, self.collaborator, self.beta = encoder, float_encoder, collaborator, beta
        self.sample_titles = ["input", "float pair", "float decoder on INT8 encoder"]

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder}

    def set_train(self, mode: bool) -> None:
        self.encoder.train(mode)

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        features = self.encoder(batch.input)
        with torch.no_grad():
            target = self.float_encoder(batch.input)
        terms = {"pixel": F.mse_loss(self.collaborator(features), batch.input),
                 "embed": self.beta * F.mse_loss(features, target) / target.pow(2).mean().clamp_min(1e-12)}
        return {"total": terms["pixel"] + terms["embed"], **terms}

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.collaborator(self.encoder(images))

    def samples(self, batch: Batch) -> list[torch.Tensor]:
        return [batch.input, self.collaborator(self.float_encoder(batch.input)), self.predict(batch.input)]


class DecoderQAT(DecoderTask):
    """Stage 3: INT8 decoder on the frozen INT8 encoder, judged by reconstruction and by the float pair's WCT."""

    def __init__(self, level: int, decoder: nn.Module, encoder: nn.Module, float_pair: tuple[nn.Module, nn.Module],
                 wct_weight: float) -> None:
        super().__init__(f"qat_decoder{level}", encoder, decoder, None, 0.0, reference=EncoderDecoderPair(*float_pair))
        self.float_pair, self.wct_weight = float_pair, wct_weight

    def sample_titles(self, batch: Batch) -> list[str]:
        return ["input", "float pair", "INT8 pair"]

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        terms = super().losses(batch)  # pixel MSE of the reconstruction
        if self.wct_weight > 0:
            with torch.no_grad():
                mapped = stylized_features(self.encoder(batch.input))
                target = self.float_pair[1](stylized_features(self.float_pair[0](batch.input)))
            terms["wct"] = self.wct_weight * F.mse_loss(self.decoder(mapped), target)
            terms["total"] = terms["total"] + terms["wct"]
        return terms


def stylized_features(features: torch.Tensor) -> torch.Tensor:
    """Each sample's features whitened and coloured toward the next sample's (what a decoder reads in stylization)."""
    from ..stylization.wct import FeatureStats, wct_map

    stats = [FeatureStats.of(f) for f in features]
    rows = [wct_map(stats[i], stats[(i + 1) % len(stats)]).apply(f.unsqueeze(0)) for i, f in enumerate(features)]
    return torch.cat(rows).to(features.dtype)


def _calibration_images(paths: Sequence[Path], count: int) -> list[torch.Tensor]:
    """The exporter's calibration input: centred 256² crops of the first ``count`` photos."""
    from ..export.int8 import load_photo

    return [torch.from_numpy(load_photo(p, square=True)) for p in paths[:count]]


def calibrate_pair(encoder: nn.Module, decoder: nn.Module, images: Sequence[torch.Tensor],
                   percentile: float) -> None:
    """Ranges for a fake-quantized pair: the encoder on the photos, then :func:`calibrate_decoder`."""
    fake_quant.calibrate(encoder, images, percentile)
    calibrate_decoder(encoder, decoder, images, percentile)


def calibrate_decoder(encoder: nn.Module, decoder: nn.Module, images: Sequence[torch.Tensor],
                      percentile: float) -> None:
    """The decoder's ranges on what it decodes: the (fake-quantized) encoder's features as encoded and after WCT
    toward another photo's, as in stylization."""
    with torch.no_grad():
        features = [encoder(x) for x in images]
        mapped = [stylized_features(torch.cat([f, features[(i + 1) % len(features)]]))[:1]
                  for i, f in enumerate(features)]
    fake_quant.calibrate(decoder, [*features, *mapped], percentile)
    if fake_quant.is_fake_quantized(encoder):
        align_decoder_input(encoder, decoder)


#: At most this many of a decoder input's 256 steps go to negative values (WCT output) when aligned to its encoder.
MAX_NEGATIVE_STEPS = 64


def align_decoder_input(encoder: nn.Module, decoder: nn.Module) -> None:
    """Put the decoder's input on its encoder's output grid: the same scale, the zero point shifted just enough to
    hold the negative values WCT maps produce (at most :data:`MAX_NEGATIVE_STEPS` steps).

    Why: the encoder's features arrive already rounded to its grid; re-rounding them onto another grid (one wide
    enough for WCT maps) adds a second rounding error, which measured 1 dB of reconstruction at level 2 of the 16x
    students (33.5 vs 34.5 dB with only that point quantized). On the same grid a reconstruction passes unchanged,
    and only the rarest top values of a stylization clip."""
    output = fake_quant.quantizers(encoder)[fake_quant.quant_points(encoder)[-1]]
    head = fake_quant.quantizers(decoder)[fake_quant.INPUT]
    scale, _ = output.qparams()
    negative = min(math.ceil(max(0.0, -float(head.rmin)) / scale), MAX_NEGATIVE_STEPS)
    low = -negative * scale
    head.set_range(low, low + (fake_quant.ACTIVATION_QMAX - fake_quant.ACTIVATION_QMIN) * scale)


def _config(settings: QuantizeSettings, steps: int) -> TrainConfig:
    return TrainConfig(steps=steps, lr=settings.lr, schedule="cosine", lr_floor=0.1,
                       checkpoint_every=settings.checkpoint_every, log_every=settings.log_every,
                       eval_every=settings.eval_every, device=settings.device)


def quantize_level(model: CDModel, level: int, train: Sequence[Path], held_out: Sequence[torch.Tensor],
                   settings: QuantizeSettings, run_dir: Path | None, resume: bool) -> tuple[nn.Module, nn.Module, dict]:
    """QAT of one level: returns the float encoder and decoder it trained and their activation ranges."""
    float_encoder = freeze(copy.deepcopy(model.encoder(level))).to(settings.device)
    float_decoder = freeze(copy.deepcopy(model.decoder(level))).to(settings.device)
    encoder = fake_quant.attach_fake_quant(copy.deepcopy(float_encoder).requires_grad_(True))
    decoder = fake_quant.attach_fake_quant(copy.deepcopy(float_decoder).requires_grad_(True))
    images = [x.to(settings.device) for x in _calibration_images(train, settings.calibration_photos)]
    calibrate_pair(encoder, decoder, images, settings.percentile)
    data = CropSampler(list(train), batch_size=settings.batch, resize=settings.resize, crop=settings.crop,
                       seed=settings.seed + level)
    if settings.encoder_steps:
        task = EncoderQAT(level, encoder, float_encoder, float_decoder, settings.beta)
        Trainer(task, data, _config(settings, settings.encoder_steps), run_dir, held_out).fit(resume=resume)
    encoder.eval().requires_grad_(False)
    if settings.encoder_steps:  # the decoder reads the trained encoder's features: its input range follows them
        calibrate_decoder(encoder, decoder, images, settings.percentile)
    if settings.decoder_steps:
        task = DecoderQAT(level, decoder, encoder, (float_encoder, float_decoder), settings.wct_weight)
        Trainer(task, data, _config(settings, settings.decoder_steps), run_dir, held_out).fit(resume=resume)
    ranges = {"encoder": fake_quant.detach_fake_quant(encoder), "decoder": fake_quant.detach_fake_quant(decoder)}
    return freeze(encoder.cpu()), freeze(decoder.cpu()), ranges


def quantize_model(model: CDModel, train: Sequence[Path], held_out: Sequence[Path], settings: QuantizeSettings,
                   run_dir: str | Path | None = None, resume: bool = False, source: str = "") -> CDModel:
    """A copy of VGG-family ``model`` whose levels were fine-tuned for INT8; ``meta["int8"]`` holds, per level, the
    activation ranges the INT8 exporter must use, with the settings and photos (content digests) of the run."""
    if model.family != "vgg":
        raise CDCompressError(f"quantize: INT8 fine-tuning takes VGG-family models, got family {model.family!r}")
    levels = list(settings.levels or model.levels)
    missing = sorted(set(levels) - set(model.levels))
    if missing:
        raise CDCompressError(f"quantize: the model has no level(s) {missing} (levels: {model.levels}); fix --levels")
    check_disjoint(train, held_out, "quantize held-out photos")
    from ..export.int8 import load_photo

    images = [torch.from_numpy(load_photo(p)).to(settings.device) for p in held_out]
    result = CDModel(family=model.family, encoders=dict(model.encoders), decoders=dict(model.decoders),
                     branches=dict(model.branches), meta=copy.deepcopy(model.meta))
    record: dict[str, Any] = {"scheme": SCHEME, "levels": {}}
    for level in levels:
        level_dir = Path(run_dir) / f"level{level}" if run_dir is not None else None
        encoder, decoder, ranges = quantize_level(model, level, train, images, settings, level_dir, resume)
        result.encoders[level], result.decoders[level] = encoder, decoder
        record["levels"][str(level)] = level_record(encoder, decoder, ranges)
    record["training"] = {"how": "quantize", "settings": {**asdict(settings), "levels": levels}, "source": source,
                          "train": [{"name": Path(p).name, "content_sha256": content_digest(p)} for p in train],
                          "held_out": [{"name": Path(p).name, "content_sha256": content_digest(p)} for p in held_out]}
    result.meta[META_KEY] = record
    return result


def measure_int8(qat: CDModel, reference: CDModel | Path, levels: Sequence[int], held_out: Path | None,
                 echo: Callable[[str], None] | None = None, cascade: bool = True) -> Any:
    """The INT8 bundle of ``qat`` (its trained ranges) judged against ``reference``'s float32 graphs (a model, or its
    already exported float32 bundle) on the held-out photos (scikit-image's held-out pair when ``held_out`` is None):
    per-level and cascade gate, in a scratch folder. Returns the exporter's
    :class:`~cdcompress.export.int8.Int8Result` (its bundle is gone afterwards)."""
    import tempfile

    from ..export.int8 import quantize_bundle

    with tempfile.TemporaryDirectory(prefix="cdcompress-qat-") as scratch:
        bundle = _float_bundle(qat, Path(scratch) / "qat", levels)
        judge = reference if isinstance(reference, Path) else _float_bundle(reference, Path(scratch) / "reference", levels)
        return quantize_bundle(bundle, Path(scratch) / "int8", held_out=held_out, echo=echo or (lambda _: None),
                               ranges=trained_ranges(qat, levels), reference=judge, cascade=cascade)


def _float_bundle(model: CDModel, out: Path, levels: Sequence[int]) -> Path:
    from ..export import export_bundle

    export_bundle(model, out, "onnx-dynamic", sorted(levels), echo=lambda _line: None, progress=False)
    return out


def restore_float_levels(qat: CDModel, source: CDModel, levels: Sequence[int],
                         echo: Callable[[str], None] | None = None) -> None:
    """Give ``levels`` of ``qat`` back the source model's float weights and drop their INT8 ranges: a level that will
    run in float32 should run as the float model it replaces, not as weights tuned for rounding."""
    if levels and echo:
        echo(f"level(s) {','.join(map(str, levels))}: INT8 past the gate, so they keep the source model's float weights")
    for level in levels:
        qat.encoders[level] = copy.deepcopy(source.encoder(level))
        qat.decoders[level] = copy.deepcopy(source.decoder(level))
        qat.meta[META_KEY]["levels"].pop(str(level), None)
    qat.meta[META_KEY]["float_levels"] = sorted({*qat.meta[META_KEY].get("float_levels", []), *map(int, levels)})


def write_quantized(model: CDModel, train: Sequence[Path], held_out: Sequence[Path], settings: QuantizeSettings,
                    out: str | Path, *, held_out_folder: Path | None = None, run_dir: str | Path | None = None,
                    resume: bool = False, overwrite: bool = False, source: str = "",
                    echo: Callable[[str], None] | None = None) -> tuple[CDModel, Any]:
    """:func:`quantize_model`, its INT8 graphs measured against ``model`` (:func:`measure_int8`; the table and the
    cascade go to ``echo`` and into ``model.json``), then saved to ``out``. Levels whose INT8 graphs fail the gate get
    the source's float weights back (:func:`restore_float_levels`) and are measured again. Returns the model and the
    exporter's result (None when the gate refused every level: the model is written all the same)."""
    from ..models.format import save

    if Path(out).exists() and not overwrite:
        raise CDCompressError(f"{out} already exists; choose another --out or pass --force")
    qat = quantize_model(model, train, held_out, settings, run_dir, resume, source)
    result = settle_int8_levels(qat, model, held_out_folder, source, echo)
    save(qat, out, overwrite=overwrite)
    return qat, result


def settle_int8_levels(qat: CDModel, model: CDModel, held_out_folder: Path | None, source: str = "",
                       echo: Callable[[str], None] | None = None) -> Any:
    """Decide which fine-tuned levels of ``qat`` deploy in INT8, as ``export --int8`` will judge them against ``model``:
    per level first (a level past its own gate deploys in float32, so it gets the source's weights back), then the
    whole cascade (levels it sets back to float32 likewise); the final measurement goes to ``echo`` and into
    ``qat.meta["int8"]["quality"]``. Returns the exporter's result, or None when the gate refused every level."""
    import tempfile

    levels = sorted(int(k) for k in qat.meta[META_KEY]["levels"])
    say = echo or (lambda _line: None)
    try:
        with tempfile.TemporaryDirectory(prefix="cdcompress-qat-reference-") as scratch:
            judge = _float_bundle(model, Path(scratch) / "reference", levels)  # exported once for the three verdicts
            result = measure_int8(qat, judge, levels, held_out_folder, cascade=False)
            restore_float_levels(qat, model, [k for k in levels if k not in result.manifest["int8_levels"]], say)
            result = measure_int8(qat, judge, levels, held_out_folder)
            restore_float_levels(qat, model, result.cascade.kept_float, say)
            result = measure_int8(qat, judge, levels, held_out_folder, echo)
    except ExportError as exc:  # the fine-tune is kept (inspect it, or --resume with more steps); the record says why
        qat.meta[META_KEY]["quality"] = {"refused": str(exc), "int8_levels": []}
        say(f"no level passes the INT8 gate ({exc}); the fine-tuned model is written all the same, for inspection "
            "or a longer run with --resume")
        return None
    qat.meta[META_KEY]["quality"] = {"rows": [r.as_dict() for r in result.rows], "cascade": result.cascade.as_dict(),
                                     "int8_levels": result.manifest["int8_levels"], "reference": source or "source model"}
    return result


__all__ = ["DecoderQAT", "EncoderQAT", "QuantizeSettings", "calibrate_decoder", "calibrate_pair", "measure_int8",
           "align_decoder_input", "quantize_level", "quantize_model", "restore_float_levels", "settle_int8_levels",
           "stylized_features", "write_quantized"]
