"""Run a validated recipe end to end: per level, stage 1 (if needed), 2 and 3, then report.

The run directory holds ``config.yaml`` (the resolved recipe), ``checkpoints/``,
``metrics.jsonl`` (and ``tensorboard/<stage>/`` event files with the ``tensorboard`` extra), ``samples/*.png``,
``loss.png``, ``comparison.png``, ``student/`` (native model
format), ``report.md`` and ``report.json``. ``resume=True`` continues every stage from its last
checkpoint; finished stages are restored instantly.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from ..core.device import resolve_device
from ..core.errors import CDCompressError
from ..core.registry import DATA_SOURCES, build
from ..data import noisy  # noqa: F401  (registers the noisy-pairs data source)
from ..data.batches import image_paths, resize_shorter, skimage_split
from ..data.holdout import check_disjoint
from ..data.images import crop_to_multiple, load_image
from ..models.converters import wct_levels
from ..models.format import CDModel, save, spec_levels
from ..models.vgg import VGGDecoder, VGGEncoder
from ..surgery.drop_in import Form as DropInForm
from ..surgery.modules import freeze
from . import distributed
from .distiller import Distiller, portable_branches
from .recipe import Recipe, StageSpec, plugin_reference, to_yaml
from .stages import STAGES, LevelState
from .teachers import load_teacher
from .trainer import TrainConfig

log = logging.getLogger(__name__)

@dataclass
class RunResult:
    run_dir: Path
    report: dict[str, Any]
    stage_seconds: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- data


def data_paths(entries: list[str], scratch: Path) -> list[Path]:
    paths: list[Path] = []
    for entry in entries:
        if entry in ("skimage", "skimage-heldout"):
            # The last two photos, distinct in content from the rest, are held out; "skimage" trains on the rest.
            train, held_out = skimage_split(scratch / "skimage_photos")
            paths += held_out if entry == "skimage-heldout" else train
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
            if recipe.data.eval:  # a held-out score on a training photo (renamed or re-saved) would measure memory
                check_disjoint(self.train_paths, data_paths(recipe.data.eval, run_dir))
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

    def config(self, stage: StageSpec) -> TrainConfig:
        return stage_config(self.recipe, stage, len(self.train_paths))

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Record a stage's wall time under ``name`` for the report."""
        started = time.perf_counter()
        yield
        self.stage_seconds[name] = round(time.perf_counter() - started, 2)

    def note(self, message: str, warn: bool = False) -> None:
        """A line for the report's notes (and the log, for what a user should see while it runs)."""
        self.notes.append(message)
        if warn:
            log.warning("%s", message)

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

    def levels(self) -> list[int]:
        """The recipe's levels that the teacher can serve (a WCT teacher converted from levels 1-3, say)."""
        wanted = self.recipe.levels
        # A WCT folder's encoders come with its decoders, so its levels bound a run even when stage 1 trains the
        # collaborators; a model directory's usable levels count only when its decoders are the collaborators.
        sources = {"wct-pytorch": wct_levels, "wct-vgg19": _located_wct_levels}
        if self.recipe.collaborator.source == "teacher":
            sources["model"] = spec_levels
            sources["bundled"] = _bundled_levels
        if self.recipe.teacher.source not in sources:
            return wanted
        have = sources[self.recipe.teacher.source](self.recipe.teacher.path)  # from names and specs, no weights
        usable = [k for k in wanted if k in have]
        if not usable:
            raise CDCompressError(f"recipe {self.recipe.name}: the teacher {self.recipe.teacher.path} has encoder/decoder "
                                  f"pairs for levels {have}, none of the recipe's {wanted}; set levels or another teacher")
        if usable != wanted:
            skipped = [k for k in wanted if k not in have]
            self.note(f"the teacher has levels {have}: ran {usable}, skipped {skipped}", warn=True)
        return usable

    def _save_student(self, student: CDModel, distillers: dict[int, Distiller]) -> None:
        """VGG students as one multi-level model directory; any other pair per level in the module family."""
        form = self.recipe.student.drop_in
        if _is_vgg(student):
            if self.recipe.student.quantize == "int8":  # float weights + the ranges they trained with
                from ..export.int8_record import with_trained_ranges

                student = with_trained_ranges(student, "distill")
            save(student, self.run_dir / "student", overwrite=True)
            if form != "off":
                save(drop_in_model(distillers, form), self.run_dir / "drop_in", overwrite=True)
            return
        for level, distiller in distillers.items():
            name = "student" if len(distillers) == 1 else f"student_L{level}"
            distiller.save_student(self.run_dir / name, decoder=student.decoders[level], overwrite=True)
            if form != "off":
                distiller.save_drop_in(self.run_dir / name.replace("student", "drop_in"), form, overwrite=True)

    def execute(self) -> RunResult:
        if distributed.is_main():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(to_yaml(self.recipe))
        with seeded_rng(self.recipe.seed, self.recipe.device):
            return self._execute()

    def _execute(self) -> RunResult:
        student, teachers, distillers = CDModel(), {}, {}
        for level in self.levels():
            state = LevelState(level, load_teacher(self.recipe.teacher, level))
            if state.teacher.randomly_initialised:
                log.warning("teacher: %s", state.teacher.note)
            for stage in STAGES:
                stage.run(self, state)
            distiller, decoder = state.distiller, state.decoder
            assert distiller is not None and decoder is not None and state.collaborator is not None
            student.encoders[level] = distiller.deployable()
            student.decoders[level] = decoder
            if isinstance(distiller.student, VGGEncoder) and isinstance(decoder, VGGDecoder):
                student.branches[level] = portable_branches(distiller.branches)
            teachers[level] = (state.teacher, state.collaborator)
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


def drop_in_model(distillers: dict[int, Distiller], form: DropInForm) -> CDModel:
    """Every level's drop-in student with the decoder it was distilled against: the teacher's interface kept."""
    return CDModel(encoders={k: d.drop_in_encoder(form) for k, d in distillers.items()},
                   decoders={k: freeze(copy.deepcopy(d.collaborator)) for k, d in distillers.items()},
                   meta={"source": {"kind": "cdcompress-drop-in", "form": form}})


@contextmanager
def seeded_rng(seed: int, device: str) -> Iterator[None]:
    """Torch's global RNG seeded with the recipe's ``seed`` inside the block and restored after it.

    Whatever draws from the global stream during a run (a user model's dropout, say) is reproducible from the
    recipe, and the caller's RNG is left exactly as it was; CUDA generators are forked only for a CUDA run."""
    cuda = device.startswith("cuda") and torch.cuda.is_available()
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if cuda else []):
        if cuda:
            torch.manual_seed(seed)  # CPU and every CUDA device
        else:
            torch.default_generator.manual_seed(seed)  # the CPU stream only: CUDA's are not forked here
        yield


def _bundled_levels(name: str) -> list[int]:
    from ..models.bundled import bundled_teacher

    return spec_levels(bundled_teacher(name))


def _located_wct_levels(path: str) -> list[int]:
    from ..models.weights import require_wct

    where = require_wct(path)
    return spec_levels(where) if (where / "model.json").is_file() else wct_levels(where)


def _is_vgg(model: CDModel) -> bool:
    return all(isinstance(m, (VGGEncoder, VGGDecoder)) for m in [*model.encoders.values(), *model.decoders.values()])


def _skip_summary(skipped: dict[str, str], shown: int = 20) -> str:
    """One note naming each skipped file and why (the reasons already start with the path)."""
    reasons = [skipped[path] for path in sorted(skipped)]
    more = f"; and {len(reasons) - shown} more" if len(reasons) > shown else ""
    return f"skipped {len(reasons)} training image(s) that could not be used: {'; '.join(reasons[:shown])}{more}"


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
