"""Run a validated recipe end to end: per level, stage 1 (if needed), 2 and 3, then report.

The run directory holds ``config.yaml`` (the resolved recipe), ``checkpoints/``,
``metrics.jsonl``, ``samples/*.png``, ``loss.png``, ``comparison.png``, ``student/`` (native model
format), ``report.md`` and ``report.json``. ``resume=True`` continues every stage from its last
checkpoint; finished stages are restored instantly.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import distributed
from ..data import DATA_SOURCES, CropSampler, image_paths, resize_shorter, skimage_photos
from ..device import resolve_device
from ..embed import flatten_outputs
from ..errors import CDCompressError
from ..images import crop_to_multiple, load_image
from ..metrics import psnr
from ..models.converters import wct_levels
from ..models.format import CDModel, save, spec_levels
from ..models.vgg import VGGDecoder, VGGEncoder, VGGSpec, level_taps
from ..modules import freeze
from ..recipe import Recipe, StageSpec, plugin_reference, to_yaml
from ..registry import accepted, build
from ..slim import Slimming
from .distiller import OBJECTIVES, Distiller, apply, portable_branches
from .stages import train_decoder
from .teachers import Teacher, load_teacher
from .trainer import TrainConfig

log = logging.getLogger(__name__)

@dataclass
class RunResult:
    run_dir: Path
    report: dict[str, Any]
    stage_seconds: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- data


class PairedSampler:
    """[content; style] batches for the style-transfer objective (both deterministic per step)."""

    def __init__(self, content: CropSampler, style: CropSampler) -> None:
        self.content, self.style = content, style

    def __getitem__(self, step: int) -> torch.Tensor:
        return self.shard(step, 0, 1)

    def shard(self, step: int, rank: int, world: int) -> torch.Tensor:
        return torch.cat([self.content.shard(step, rank, world), self.style.shard(step, rank, world)])


def data_paths(entries: list[str], scratch: Path) -> list[Path]:
    paths: list[Path] = []
    for entry in entries:
        if entry in ("skimage", "skimage-heldout"):
            photos = skimage_photos(scratch / "skimage_photos")
            # The last two photos are held out for evaluation; "skimage" trains on the rest.
            paths += photos[-2:] if entry == "skimage-heldout" else photos[:-2]
        elif Path(entry).is_file():
            paths.append(Path(entry))
        else:
            paths += image_paths(entry)
    return paths


def stage_config(recipe: Recipe, stage: StageSpec, n_images: int) -> TrainConfig:
    """The trainer's settings for ``stage``: every field the recipe's stage shares with :class:`TrainConfig` by
    name, the step count (``epochs`` converted), and the run-wide output, data and device settings."""
    shared = {f.name for f in fields(TrainConfig)} & set(StageSpec.model_fields)
    out = recipe.output
    return TrainConfig(
        **stage.model_dump(include=shared - {"steps"}),
        steps=stage.steps or max(1, math.ceil(stage.epochs * n_images / stage.batch)),
        checkpoint_every=out.checkpoint_every, log_every=out.log_every, sample_every=out.sample_every,
        eval_every=out.eval_every, workers=recipe.data.workers, device=recipe.device,
    )


# --------------------------------------------------------------------------- the run


class RecipeRun:
    """Executes one recipe into one run directory."""

    def __init__(self, recipe: Recipe, run_dir: Path, resume: bool = False) -> None:
        self.recipe, self.run_dir, self.resume = recipe, run_dir, resume
        with distributed.node_main_first():  # one process per node writes the bundled photos; the others read them
            self.train_paths = data_paths(recipe.data.train, run_dir)
            self.style_paths = data_paths(recipe.data.style, run_dir) if recipe.data.style else []
        self.stage_seconds: dict[str, float] = {}
        self.notes: list[str] = []
        self.samplers: list[Any] = []
        self.collaborator_psnr: dict[int, float] = {}
        self._held_out: list[tuple[str, torch.Tensor]] | None = None

    def sampler(self, paths: list[Path], batch: int, offset: int) -> Any:
        """A stage's training data from the recipe's data source (kept, to report the images it had to skip)."""
        d = self.recipe.data
        made = build(DATA_SOURCES, plugin_reference(d.source), paths=paths, batch_size=batch, resize=d.resize,
                     crop=d.crop, seed=self.recipe.seed * 1000 + offset)
        self.samplers.append(made)
        return made

    def _timed(self, name: str, started: float) -> None:
        self.stage_seconds[name] = round(time.perf_counter() - started, 2)

    def collaborator(self, level: int, teacher: Teacher) -> nn.Module:
        recipe = self.recipe
        if recipe.collaborator.source == "teacher":
            if teacher.decoder is None:
                raise CDCompressError(
                    f"recipe {recipe.name}: the teacher has no decoder for level {level}; "
                    "set collaborator.source: train (stage 1) or use a teacher model with decoders"
                )
            return teacher.decoder
        stage = recipe.stages.collaborator
        if not stage.enabled:
            raise CDCompressError(f"recipe {recipe.name}: collaborator.source is train but stages.collaborator is disabled")
        decoder = teacher.decoder if teacher.decoder is not None else fresh_decoder(teacher.encoder, level)
        config = stage_config(recipe, stage, len(self.train_paths))
        started = time.perf_counter()
        perceptual_taps = self._perceptual_taps(teacher.encoder, level)
        train_decoder(f"collaborator_L{level}", teacher.encoder, decoder,
                      self.sampler(self.train_paths, stage.batch, 1), config, teacher.encoder, perceptual_taps,
                      _lambda(stage, recipe), self.run_dir, self.resume, held_out=self.curve_images())
        self._timed(f"collaborator_L{level}", started)
        return freeze(decoder)

    def _taps(self, encoder: nn.Module, level: int) -> Any:
        taps = self.recipe.embed.taps
        if taps == "level":
            return level_taps(level) if isinstance(encoder, VGGEncoder) else "auto"
        return None if taps == "none" else taps

    def _perceptual_taps(self, encoder: nn.Module, level: int) -> list[str]:
        chosen = self.recipe.objective.perceptual_taps
        if chosen is not None:
            return chosen
        if isinstance(encoder, VGGEncoder):
            return level_taps(level)
        with torch.no_grad():  # every output of the encoder: "output", or "output_0".. for tuples of skips
            return list(flatten_outputs(encoder(torch.rand(1, 3, 64, 64))))

    def prepare(self, level: int, teacher: Teacher, collaborator: nn.Module) -> Distiller:
        """``apply()`` with the recipe's student, embedding and objective settings (no training yet)."""
        recipe = self.recipe
        width: Any = recipe.student.width
        if level in recipe.student.level_width:
            base = {"*": width} if not isinstance(width, dict) else dict(width)
            width = {**base, **recipe.student.level_width[level]}
        student = recipe.student
        slimming = Slimming(width, plugin_reference(student.importance), student.round_to, student.keep, student.init,
                            recipe.seed)
        objective = recipe.objective
        standard = {"lambda_p": objective.lambda_p, "lambda_s": objective.lambda_s,
                    "perceptual_taps": self._perceptual_taps(teacher.encoder, level)}
        options = {**accepted(OBJECTIVES.get(objective.kind), standard), **objective.kwargs}
        return apply(
            teacher.encoder, collaborator, slim=slimming, objective=objective.kind, taps=self._taps(teacher.encoder, level),
            beta=recipe.embed.beta, seed=recipe.seed,
            example_inputs=(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(recipe.seed)),), **options,
        )

    def distill(self, level: int, teacher: Teacher, collaborator: nn.Module) -> Distiller:
        recipe = self.recipe
        distiller = self.prepare(level, teacher, collaborator)
        distiller.name = f"distill_L{level}"
        stage = recipe.stages.distill
        if stage.enabled:
            sampler: Any = self.sampler(self.train_paths, stage.batch, 2)
            if recipe.objective.kind == "style-transfer":
                sampler = PairedSampler(sampler, self.sampler(self.style_paths, stage.batch, 3))
            started = time.perf_counter()
            distiller.fit(sampler, stage_config(recipe, stage, len(self.train_paths)), self.run_dir, self.resume,
                          held_out=self.curve_images())
            self._timed(distiller.name, started)
        else:
            self.notes.append(f"level {level}: stage 2 disabled, the student is the pruned teacher (prune-only baseline)")
        return distiller

    def student_decoder(self, level: int, distiller: Distiller) -> nn.Module:
        stage = self.recipe.stages.decoder
        if not stage.enabled:
            raise CDCompressError(f"recipe {self.recipe.name}: stages.decoder must be enabled to deploy a student")
        started = time.perf_counter()
        config = stage_config(self.recipe, stage, len(self.train_paths))
        sampler = self.sampler(self.train_paths, stage.batch, 4)
        init = stage.init
        if init == "folded" and not self.recipe.stages.distill.enabled:
            init = "pruned"  # untrained branches: folding them in would scramble the decoder's first layer
            self.notes.append(f"level {level}: stage 2 disabled, so the stage-3 decoder starts pruned, not folded")
        decoder, _ = distiller.train_decoder(sampler, config, init, _lambda(stage, self.recipe), self.run_dir,
                                             self.resume, name=f"decoder_L{level}", held_out=self.curve_images())
        self._timed(f"decoder_L{level}", started)
        return freeze(decoder)

    def held_out_images(self) -> list[tuple[str, torch.Tensor]]:
        """The recipe's eval images, decoded once per run (the collaborator check and the report both use them)."""
        if self._held_out is None:
            self._held_out = eval_images(self.recipe, self.run_dir)
        return self._held_out

    def curve_images(self) -> list[torch.Tensor]:
        """The held-out images the learning curve judges (none unless ``output.eval_every`` asks for one)."""
        if not self.recipe.output.eval_every or self.recipe.objective.kind == "style-transfer":
            return []
        return [image for _, image in self.held_out_images()]

    def check_collaborator(self, level: int, teacher: Teacher, collaborator: nn.Module) -> None:
        """Distilling against an untrained decoder teaches the student nothing: measure it before stage 2."""
        floor = self.recipe.collaborator.min_psnr
        images = self.held_out_images()
        if not floor or not images:
            return
        device = resolve_device(self.recipe.device)
        encoder, decoder = teacher.encoder.to(device).eval(), collaborator.to(device).eval()
        with torch.no_grad():
            scores = [psnr(decoder(encoder(x.to(device))).clamp(0, 1), x.to(device)) for _, x in images]
        measured = sum(scores) / len(scores)
        self.collaborator_psnr[level] = measured
        if measured >= floor:
            return
        message = (f"level {level}: the collaborator reconstructs the eval images at {measured:.2f} dB, below "
                   f"collaborator.min_psnr {floor:g} dB: it is not a trained decoder for this encoder")
        if self.recipe.collaborator.source == "teacher":
            raise CDCompressError(f"recipe {self.recipe.name}: {message}; use a teacher with trained decoders (e.g. "
                                  "`cdcompress weights download wct-vgg19`) or --set collaborator.min_psnr=0 to go on")
        self.notes.append(message)
        log.warning("%s", message)

    def _note_pruned_teacher(self, level: int, teacher: Teacher) -> None:
        """A teacher narrower than VGG-19 is already a student: compressing it again compounds the loss."""
        spec = getattr(teacher.encoder, "spec", None)
        if not isinstance(teacher.encoder, VGGEncoder) or spec is None:
            return
        full = VGGSpec.vgg19(spec.level).widths
        if spec.widths != full:
            message = (f"level {level}: the teacher is itself pruned (widths {list(spec.widths)}, VGG-19 has "
                       f"{list(full)}); the student will be {self.recipe.student.width} of that")
            self.notes.append(message)
            log.warning("%s", message)

    def levels(self) -> list[int]:
        """The recipe's levels that the teacher can serve (a WCT teacher converted from levels 1-3, say)."""
        wanted = self.recipe.levels
        sources = {"model": spec_levels, "wct-pytorch": wct_levels, "wct-vgg19": _located_wct_levels}
        if self.recipe.teacher.source not in sources or self.recipe.collaborator.source != "teacher":
            return wanted
        have = sources[self.recipe.teacher.source](self.recipe.teacher.path)  # from names and specs, no weights
        usable = [k for k in wanted if k in have]
        if not usable:
            raise CDCompressError(f"recipe {self.recipe.name}: the teacher {self.recipe.teacher.path} has encoder/decoder "
                                  f"pairs for levels {have}, none of the recipe's {wanted}; set levels or another teacher")
        if usable != wanted:
            skipped = [k for k in wanted if k not in have]
            self.notes.append(f"the teacher has levels {have}: ran {usable}, skipped {skipped}")
            log.warning("teacher has levels %s: running %s, skipping %s", have, usable, skipped)
        return usable

    def _save_student(self, student: CDModel, distillers: dict[int, Distiller]) -> None:
        """VGG students as one multi-level model directory; any other pair per level in the module family."""
        if _is_vgg(student):
            save(student, self.run_dir / "student", overwrite=True)
            return
        for level, distiller in distillers.items():
            name = "student" if len(distillers) == 1 else f"student_L{level}"
            distiller.save(self.run_dir / name, decoder=student.decoders[level], overwrite=True)

    def execute(self) -> RunResult:
        if distributed.is_main():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(to_yaml(self.recipe))
        torch.manual_seed(self.recipe.seed)
        student, teachers, distillers = CDModel(), {}, {}
        for level in self.levels():
            teacher = load_teacher(self.recipe.teacher, level)
            if teacher.randomly_initialised:
                log.warning("teacher: %s", teacher.note)
            collaborator = self.collaborator(level, teacher)
            self.check_collaborator(level, teacher, collaborator)
            self._note_pruned_teacher(level, teacher)
            distiller = self.distill(level, teacher, collaborator)
            decoder = self.student_decoder(level, distiller)
            student.encoders[level] = distiller.deployable()
            student.decoders[level] = decoder
            if isinstance(distiller.student, VGGEncoder) and isinstance(decoder, VGGDecoder):
                student.branches[level] = portable_branches(distiller.branches)
            teachers[level] = (teacher, collaborator)
            distillers[level] = distiller
        student.meta = {"name": f"{self.recipe.name}-student", "source": {"kind": "cdcompress-distill",
                                                                          "recipe": self.recipe.name}}
        if distributed.is_main():
            self._save_student(student, distillers)
        skipped = {path: why for sampler in self.samplers for path, why in getattr(sampler, "skipped", {}).items()}
        if skipped:
            self.notes.append(_skip_summary(skipped))
        report: dict[str, Any] = {}
        if distributed.is_main():
            from .report import write_outputs

            report = write_outputs(self, student, teachers, distillers)
        distributed.barrier()
        return RunResult(self.run_dir, report, self.stage_seconds)


def _located_wct_levels(path: str) -> list[int]:
    from ..weights import require_wct

    where = require_wct(path)
    return spec_levels(where) if (where / "model.json").is_file() else wct_levels(where)


def _is_vgg(model: CDModel) -> bool:
    return all(isinstance(m, (VGGEncoder, VGGDecoder)) for m in [*model.encoders.values(), *model.decoders.values()])


def _skip_summary(skipped: dict[str, str], shown: int = 20) -> str:
    """One note naming each skipped file and why (the reasons already start with the path)."""
    reasons = [skipped[path] for path in sorted(skipped)]
    more = f"; and {len(reasons) - shown} more" if len(reasons) > shown else ""
    return f"skipped {len(reasons)} training image(s) that could not be used: {'; '.join(reasons[:shown])}{more}"


def _lambda(stage: StageSpec, recipe: Recipe) -> float:
    return recipe.objective.lambda_p if stage.lambda_p is None else stage.lambda_p


def fresh_decoder(encoder: nn.Module, level: int) -> nn.Module:
    """A stage-1 decoder mirroring a VGG teacher, with a linear RGB conv as the WCT decoders have: a final ReLU
    can die early in training and leave a black decoder for good (measured on the offline demo at lr 3e-3)."""
    if isinstance(encoder, VGGEncoder):
        return VGGDecoder(replace(encoder.spec, output_relu=False))
    raise CDCompressError(
        "stage 1 can build a decoder only for VGG teachers; have the teacher import return (encoder, decoder)"
    )


def run_recipe(recipe: Recipe, out_dir: str | Path | None = None, resume: bool = False) -> RunResult:
    """Execute ``recipe`` into ``out_dir`` (default: the recipe's output.dir)."""
    resolve_device(recipe.device)  # a missing GPU fails here, in one line, before any model loads
    distributed.init_from_env(recipe.device)
    run_dir = Path(out_dir or recipe.output.dir.format(name=recipe.name))
    # Rank 0's run directory decides for every process (other nodes may not share its file system), and a
    # worker group that torchrun restarted after a failure continues from the checkpoints.
    resume, problem = distributed.from_main(_resume_decision(run_dir, resume) if distributed.is_main() else None)
    if problem:
        raise CDCompressError(problem)
    try:
        return RecipeRun(recipe, run_dir, resume).execute()
    except BaseException:
        _forget_untrained_run(run_dir, resume)
        raise


def _forget_untrained_run(run_dir: Path, resumed: bool) -> None:
    """A new run that failed before its first checkpoint leaves nothing to resume: drop its ``config.yaml``
    so the same command can simply be run again (a run with checkpoints keeps it, for ``--resume``)."""
    checkpoints = run_dir / "checkpoints"
    if resumed or not distributed.is_main() or (checkpoints.is_dir() and any(checkpoints.iterdir())):
        return
    (run_dir / "config.yaml").unlink(missing_ok=True)


def _resume_decision(run_dir: Path, resume: bool) -> tuple[bool, str]:
    """(resume?, error message or "") for a run into ``run_dir``."""
    exists = (run_dir / "config.yaml").exists()
    if distributed.restarted() and exists:
        return True, ""
    if exists and not resume:
        return resume, f"{run_dir} already holds a run; pass --resume to continue it or choose another --out"
    if resume and not exists:
        return resume, f"{run_dir}: nothing to resume (no config.yaml); drop --resume to start a new run"
    return resume, ""


def eval_images(recipe: Recipe, scratch: Path) -> list[tuple[str, torch.Tensor]]:
    """Held-out images, shorter side ``eval_size``, cropped to a multiple of 16."""
    images = []
    for path in data_paths(recipe.data.eval, scratch) if recipe.data.eval else []:
        image = resize_shorter(load_image(path), recipe.data.eval_size)
        images.append((path.name, crop_to_multiple(image, 16, path)))
    return images


__all__ = ["RecipeRun", "RunResult", "eval_images", "load_teacher", "run_recipe"]
