"""A recipe's three stages as small objects, run in order for each level.

Each stage reads what the stages before it left in the level's :class:`LevelState` and adds its own
product: stage 1 the collaborator (the teacher's own decoder, or one trained for it), stage 2 the
distilled student (``apply`` + ``Distiller.fit``), stage 3 the student's decoder. The run lends them the data,
the held-out images, the timing and the notes through :class:`~cdcompress.distill.context.StageContext` (the narrow
view :class:`~cdcompress.distill.run.RecipeRun` provides), so a stage holds only its own decisions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch
from torch import nn

from ..core.device import module_device, resolve_device
from ..core.errors import CDCompressError
from ..core.registry import OBJECTIVES
from ..core.user_code import accepted
from ..data.batches import as_batch, batches
from ..evaluation.metrics import reconstruction_psnr
from ..models.vgg import VGGDecoder, VGGEncoder, VGGSpec, level_taps
from ..surgery.embed import flatten_outputs
from ..surgery.modules import freeze
from ..surgery.slim import Slimming, needs_gradients
from .context import StageContext
from .decoder import train_decoder
from .distiller import Distiller, apply
from .recipe import Recipe, StageSpec, plugin_reference
from .teachers import Teacher

log = logging.getLogger(__name__)


@dataclass
class LevelState:
    """One level's products, filled in stage by stage."""

    level: int
    teacher: Teacher
    collaborator: nn.Module | None = None
    distiller: Distiller | None = None
    decoder: nn.Module | None = None


class Stage(Protocol):
    """One step of a recipe run; ``key`` names its settings (``recipe.stages.<key>``)."""

    key: str

    def run(self, run: StageContext, state: LevelState) -> None: ...


class CollaboratorStage:
    """Stage 1: the teacher's own decoder, or a decoder trained for the frozen teacher; then its quality check."""

    key = "collaborator"

    def run(self, run: StageContext, state: LevelState) -> None:
        state.collaborator = self.collaborator(run, state)
        self.check(run, state)

    def collaborator(self, run: StageContext, state: LevelState) -> nn.Module:
        recipe, teacher, level = run.recipe, state.teacher, state.level
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
        name = f"collaborator_L{level}"
        with run.timed(name):
            train_decoder(name, teacher.encoder, decoder, run.sampler(run.train_paths, stage.batch, 1), run.config(stage),
                          teacher.encoder, perceptual_taps(recipe, teacher.encoder, level), stage_lambda(stage, recipe),
                          run.run_dir, run.resume, held_out=run.curve_images())
            if stage.refit_output:
                refit_decoder_output(run, level, "collaborator", teacher.encoder, decoder, stage.batch)
        return freeze(decoder)

    def check(self, run: StageContext, state: LevelState) -> None:
        """Distilling against an untrained decoder teaches the student nothing: measure it before stage 2."""
        recipe, level = run.recipe, state.level
        floor = recipe.collaborator.min_psnr
        images = run.held_out_images()
        if not floor or not images or state.collaborator is None:
            return
        device = resolve_device(recipe.device)
        encoder, decoder = state.teacher.encoder.to(device).eval(), state.collaborator.to(device).eval()
        measured = reconstruction_psnr(encoder, decoder, [x.to(device) for _, x in images])
        run.collaborator_psnr[level] = measured
        if measured >= floor:
            return
        message = (f"level {level}: the collaborator reconstructs the eval images at {measured:.2f} dB, below "
                   f"collaborator.min_psnr {floor:g} dB: it is not a trained decoder for this encoder")
        if recipe.collaborator.source == "teacher":
            raise CDCompressError(f"recipe {recipe.name}: {message}; use a teacher with trained decoders (e.g. "
                                  "`cdcompress weights download wct-vgg19`) or --set collaborator.min_psnr=0 to go on")
        run.note(message, warn=True)


class DistillStage:
    """Stage 2: slim the teacher (``apply``) and train student + branches through the frozen collaborator."""

    key = "distill"

    def run(self, run: StageContext, state: LevelState) -> None:
        recipe, level = run.recipe, state.level
        note_pruned_teacher(run, state)
        distiller = state.distiller = self.prepare(run, state)
        distiller.name = f"distill_L{level}"
        stage = recipe.stages.distill
        if not stage.enabled:
            run.note(f"level {level}: stage 2 disabled, the student is the pruned teacher (prune-only baseline)")
            return
        sampler: Any = run.sampler(run.train_paths, stage.batch, 2)
        if recipe.objective.kind == "style-transfer":
            sampler = PairedSampler(sampler, run.sampler(run.style_paths, stage.batch, 3))
        with run.timed(distiller.name):
            distiller.fit(sampler, run.config(stage), run.run_dir, run.resume, held_out=run.curve_images())

    def prepare(self, run: StageContext, state: LevelState) -> Distiller:
        """``apply()`` with the recipe's student, embedding and objective settings (no training yet)."""
        recipe, encoder, level = run.recipe, state.teacher.encoder, state.level
        if state.collaborator is None:
            raise CDCompressError("stage 2 needs a collaborator: run the collaborator stage first")
        student = recipe.student
        width: Any = student.width
        if level in student.level_width:
            base = {"*": width} if not isinstance(width, dict) else dict(width)
            width = {**base, **student.level_width[level]}
        importance = plugin_reference(student.importance)
        # A gradient criterion scores filters on the run's own training data (a paired source's targets included).
        target = student.target
        # A budget's sensitivity allocation measures the collaborator's reconstruction on the same kind of batch.
        wants_data = needs_gradients(importance) or (target is not None and target.get("allocation", "auto") != "uniform")
        calibration = next(batches(run.sampler(run.train_paths, recipe.stages.distill.batch, 6), 0, 1)) if wants_data else None
        slimming = Slimming(width, importance, student.round_to, student.keep, student.init, recipe.seed, calibration,
                            target, student.latent)
        objective = recipe.objective
        standard = {"lambda_p": objective.lambda_p, "lambda_s": objective.lambda_s,
                    "perceptual_taps": perceptual_taps(recipe, encoder, level)}
        options = {**accepted(OBJECTIVES.get(objective.kind), standard), **objective.kwargs}
        example = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(recipe.seed))
        distiller = apply(encoder, state.collaborator, slim=slimming, objective=objective.kind,
                          taps=embedding_taps(recipe, encoder, level), beta=recipe.embed.beta, seed=recipe.seed,
                          example_inputs=(example,), quantize=student.quantize, **options)
        distiller.init_branches = recipe.embed.init == "lstsq"
        return distiller


class DecoderStage:
    """Stage 3: the student's own small decoder (started pruned, folded or random), trained for deployment."""

    key = "decoder"

    def run(self, run: StageContext, state: LevelState) -> None:
        recipe, level, distiller = run.recipe, state.level, state.distiller
        stage = recipe.stages.decoder
        if not stage.enabled:
            raise CDCompressError(f"recipe {recipe.name}: stages.decoder must be enabled to deploy a student")
        if distiller is None:
            raise CDCompressError("stage 3 needs a student: run the distill stage first")
        init = stage.init
        if init == "folded" and not recipe.stages.distill.enabled:
            init = "pruned"  # untrained branches: folding them in would scramble the decoder's first layer
            run.note(f"level {level}: stage 2 disabled, so the stage-3 decoder starts pruned, not folded")
        name = f"decoder_L{level}"
        with run.timed(name):
            decoder, _ = distiller.fit_decoder(run.sampler(run.train_paths, stage.batch, 4), run.config(stage), init,
                                               stage_lambda(stage, recipe), run.run_dir, run.resume, name=name,
                                               held_out=run.curve_images())
            if stage.refit_output:
                refit_decoder_output(run, level, "student decoder", distiller.deployable(), decoder, stage.batch)
        state.decoder = freeze(decoder)


#: Training images the output-layer solve sees (pixels are subsampled per image, so more would add little).
REFIT_IMAGES = 64


def refit_decoder_output(run: StageContext, level: int, what: str, encoder: nn.Module, decoder: nn.Module,
                         batch: int) -> None:
    """A decoder stage's optional finish: the output conv set to its least-squares optimum for the frozen encoder and
    the trained layers before it (Adam is far from it on VGG features at CPU budgets: docs/reproduction_wct.md)."""
    from ..evaluation.ceiling import refit_output_conv

    recipe = run.recipe
    device = resolve_device(recipe.device)
    encoder = encoder.to(device).eval()
    sampler = run.sampler(run.train_paths, batch, 5)
    batches = [as_batch(sampler[i]).to(device) for i in range(-(-REFIT_IMAGES // batch))]
    # Held-out images judge autoencoding only (paired data's held-out images have no targets here).
    held_out = [] if batches[0].paired else [x.to(device) for _, x in run.held_out_images()]
    before = reconstruction_psnr(encoder, decoder.eval(), held_out) if held_out else None
    refit_output_conv(encoder, decoder, batches, seed=recipe.seed)
    if before is not None:
        after = reconstruction_psnr(encoder, decoder, held_out)
        run.note(f"level {level}: {what}'s output conv refitted by least squares, held-out {before:.2f} -> {after:.2f} dB")


#: What a recipe run does for each level, in order.
STAGES: tuple[Stage, ...] = (CollaboratorStage(), DistillStage(), DecoderStage())


class PairedSampler:
    """[content; style] batches for the style-transfer objective (both deterministic per step)."""

    def __init__(self, content: Any, style: Any) -> None:
        self.content, self.style = content, style

    def __getitem__(self, step: int) -> torch.Tensor:
        return self.shard(step, 0, 1)

    def shard(self, step: int, rank: int, world: int) -> torch.Tensor:
        return torch.cat([self.content.shard(step, rank, world), self.style.shard(step, rank, world)])


def embedding_taps(recipe: Recipe, encoder: nn.Module, level: int) -> Any:
    """The recipe's ``embed.taps`` for ``encoder``: a VGG level's own taps, ``auto``, none, or a list."""
    taps = recipe.embed.taps
    if taps == "level":
        return level_taps(level) if isinstance(encoder, VGGEncoder) else "auto"
    return None if taps == "none" else taps


def perceptual_taps(recipe: Recipe, encoder: nn.Module, level: int) -> list[str]:
    """Where the perceptual loss compares features: the recipe's choice, a VGG level's taps, or every output."""
    chosen = recipe.objective.perceptual_taps
    if chosen is not None:
        return chosen
    if isinstance(encoder, VGGEncoder):
        return level_taps(level)
    # Every output of the encoder ("output", or "output_0".. for tuples of skips), probed where the encoder is (an
    # earlier stage may have put it on the GPU) with an image of its own: torch's global RNG is left alone.
    probe = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(recipe.seed))
    with torch.no_grad():
        return list(flatten_outputs(encoder(probe.to(module_device(encoder)))))


def stage_lambda(stage: StageSpec, recipe: Recipe) -> float:
    """A decoder stage's perceptual weight: its own ``lambda_p``, else the objective's."""
    return recipe.objective.lambda_p if stage.lambda_p is None else stage.lambda_p


def note_pruned_teacher(run: StageContext, state: LevelState) -> None:
    """A teacher narrower than VGG-19 is already a student: compressing it again compounds the loss."""
    encoder = state.teacher.encoder
    spec = getattr(encoder, "spec", None)
    if not isinstance(encoder, VGGEncoder) or spec is None:
        return
    full = VGGSpec.vgg19(spec.level).widths
    if spec.widths != full:
        run.note(f"level {state.level}: the teacher is itself pruned (widths {list(spec.widths)}, VGG-19 has "
                 f"{list(full)}); the student will be {run.recipe.student.width} of that", warn=True)


def fresh_decoder(encoder: nn.Module, level: int) -> nn.Module:
    """A stage-1 decoder mirroring a VGG teacher, with a linear RGB conv as the WCT decoders have: a final ReLU
    can die early in training and leave a black decoder for good (measured on the offline demo at lr 3e-3)."""
    if isinstance(encoder, VGGEncoder):
        return VGGDecoder(replace(encoder.spec, output_relu=False))
    raise CDCompressError(
        "stage 1 can build a decoder only for VGG teachers; have the teacher import return (encoder, decoder)"
    )
