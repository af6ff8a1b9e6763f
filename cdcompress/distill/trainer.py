"""One training loop for all three stages: optimiser, schedule, clipping, AMP, checkpoints, resume.

A stage is a :class:`Task` (which modules train, how the loss terms are computed, what a sample
grid shows). The trainer owns everything else. Resume is exact: a checkpoint holds the trainable
weights, optimiser and scheduler state and the RNG states, and batches are a pure function of the
step (see :mod:`cdcompress.data.batches`), so an interrupted run continues to bit-identical weights.
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from ..core.allocator import retained_heap
from ..core.atomic import save_torch
from ..core.errors import CDCompressError
from ..core.progress import Progress
from ..data.batches import Batch, as_batch, batches
from ..data.images import save_image
from ..evaluation.metrics import mean_psnr
from . import distributed
from .losses import detach_terms
from .run_log import RunLog
from .settings import AMP_MODES, LOWER_BOUNDS, OPTIMIZERS, SCHEDULES, SYNC_BATCHNORM, bound_problem, device_problem

log = logging.getLogger(__name__)



class TrainingError(CDCompressError):
    """Training cannot continue (diverged loss, unusable checkpoint)."""


@dataclass
class TrainConfig:
    """Optimisation settings of one stage (paper: Adam, lr 1e-4, batch 16)."""

    steps: int
    lr: float = 1e-4
    optimizer: str = "adam"
    weight_decay: float = 0.0
    schedule: str = "constant"
    lr_floor: float = 0.0  # cosine decays to lr_floor x lr (0: to zero)
    warmup_steps: int = 0
    step_size: int = 0
    gamma: float = 0.1
    grad_clip: float = 0.0
    amp: str = "off"
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 10
    sample_every: int = 0
    sample_count: int = 4
    eval_every: int = 0  # held-out PSNR every N steps (and at the start and end) when held-out images are given
    workers: int = 0
    device: str = "cpu"
    channels_last: bool = False
    accumulate: int = 1  # micro-batches per optimiser step: the global batch at a fraction of the memory
    sync_batchnorm: str = "auto"  # auto: synchronise BatchNorm over processes when there are several

    def __post_init__(self) -> None:
        """Every field checked once, here, with the recipe's rules: a bad value fails in one line, not mid-``fit``."""
        problem = next(filter(None, map(self._problem, fields(self))), None)
        if problem:
            raise CDCompressError(f"training config: {problem}; fix the value")

    def _problem(self, spec: Field) -> str | None:
        name, value = spec.name, getattr(self, spec.name)
        if name in _CHOICES:
            return None if value in _CHOICES[name] else f"{name} must be one of {', '.join(_CHOICES[name])}, got {value!r}"
        if name == "device":
            problem = device_problem(value)
            return f"{problem}, got {value!r}" if problem else None
        kind, noun = _TYPES[str(spec.type)]
        if isinstance(value, bool) is not (kind is bool) or not isinstance(value, kind):
            return f"{name} must be {noun}, got {value!r}"
        if name == "lr_floor" and value > 1:
            return f"lr_floor must be <= 1 (a share of lr), got {value}"
        if name == "step_size" and self.schedule == "step" and value == 0:
            return "schedule 'step' needs step_size > 0 (steps between decays)"
        return bound_problem(name, value) if name in LOWER_BOUNDS else None


#: Field types by annotation; numpy scalars count (``numbers`` registers them), booleans are not numbers here.
_TYPES: dict[str, tuple[type, str]] = {
    "int": (numbers.Integral, "an integer"), "float": (numbers.Real, "a number"), "bool": (bool, "True or False"),
    "str": (str, "a string")}
_CHOICES = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "amp": AMP_MODES, "sync_batchnorm": SYNC_BATCHNORM}


class Task(Protocol):
    """What a stage trains and how it is judged. A task may also define ``predict(images)``, its current
    output for an input, which the held-out learning curve (``eval_every``) compares with the target, and
    ``prepare(batch)``, run on the first batch before a run from step 0 (data-dependent initialisation) unless its
    ``needs_prepare`` is false (the batch is not even drawn then)."""

    name: str

    def trainable_modules(self) -> dict[str, nn.Module]: ...

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]: ...

    def samples(self, batch: Batch) -> list[torch.Tensor]: ...

    def set_train(self, mode: bool) -> None: ...


@dataclass
class TrainResult:
    stage: str
    steps: int
    seconds: float
    history: list[dict]
    resumed_from: int = 0
    curve: list[dict] = field(default_factory=list)  # {"step", "heldout/psnr"} when eval_every and held-out images


def _lr_lambda(config: TrainConfig):
    def factor(step: int) -> float:
        if config.warmup_steps and step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.schedule == "cosine":
            span = max(1, config.steps - config.warmup_steps)
            progress = min(1.0, (step - config.warmup_steps) / span)
            return config.lr_floor + (1 - config.lr_floor) * 0.5 * (1 + math.cos(math.pi * progress))
        if config.schedule == "step" and config.step_size:
            return config.gamma ** (step // config.step_size)
        return 1.0

    return factor


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, _, gauss = random.getstate()
    random.setstate((version, tuple(int(x) for x in state["python"]), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Runs a :class:`Task` for ``config.steps`` steps over ``data`` (see :func:`cdcompress.data.batches.batches`:
    a :class:`~cdcompress.data.batches.CropSampler`, a DataLoader or any iterable of batches, or a factory of one)."""

    def __init__(self, task: Task, data: object, config: TrainConfig, run_dir: str | Path | None = None,
                 held_out: Sequence[Batch | torch.Tensor] = ()) -> None:
        self.task, self.data, self.config = task, data, config
        self.held_out = [as_batch(b) for b in held_out]  # the learning curve: PSNR of task.predict every eval_every
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.device = torch.device(config.device)
        self.modules = task.trainable_modules()
        params = [p for m in self.modules.values() for p in m.parameters() if p.requires_grad]
        self._params = params
        if not params:
            raise TrainingError(f"stage {task.name}: nothing to train (no parameters require gradients)")
        opt_cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(params, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(config))
        self.scaler = torch.amp.GradScaler("cuda", enabled=config.amp == "fp16" and self.device.type == "cuda")
        self._amp = autocast_applies(config.amp, self.device)
        self._parallel: nn.Module | None = None  # the DDP-wrapped loss computation while a distributed fit runs
        self.run_log = RunLog(self.run_dir, task.name)  # metrics.jsonl and, with tensorboard installed, event files

    def continue_optimizer(self, state: Mapping[torch.Tensor, dict]) -> None:
        """Start from an earlier trainer's per-parameter optimiser state (Adam's moments and step counts).

        Why: successive ``fit`` calls are one optimisation to their caller, and a fresh Adam restarts its moment
        estimates (its first steps move every weight by about ``lr`` whatever its gradient). Parameters this
        trainer does not train are ignored; the state follows each parameter to its current device."""
        ours = set(self._params)
        for param, values in state.items():
            if param in ours:
                self.optimizer.state[param] = {k: v.to(param.device) if isinstance(v, torch.Tensor) and v.dim() else v
                                               for k, v in values.items()}

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_dir(self) -> Path | None:
        return self.run_dir / "checkpoints" if self.run_dir else None

    def _checkpoints(self) -> list[Path]:
        if self.checkpoint_dir is None or not self.checkpoint_dir.is_dir():
            return []
        return sorted(self.checkpoint_dir.glob(f"{self.task.name}_step*.pt"))

    def save_checkpoint(self, step: int) -> Path | None:
        if self.checkpoint_dir is None or not distributed.is_main():
            return None
        state = {
            "stage": self.task.name,
            "step": step,
            "modules": {name: m.state_dict() for name, m in self.modules.items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": _rng_state(),
        }
        path = self.checkpoint_dir / f"{self.task.name}_step{step:07d}.pt"
        save_torch(state, path)  # fsynced, replaced in one rename: never half a checkpoint
        for old in self._checkpoints()[: -self.config.keep_checkpoints]:
            old.unlink(missing_ok=True)
        return path

    def load_latest_checkpoint(self) -> int:
        """Restore the newest readable checkpoint of this stage; returns its step (0 if none).

        Rank 0 reads it (only rank 0 writes checkpoints) and every other process receives it, so a
        resumed multi-node job needs no shared file system for them."""
        state = self._read_latest_checkpoint() if distributed.is_main() else None
        state = distributed.from_main(state)
        if state is None:
            return 0
        for name, module in self.modules.items():
            module.load_state_dict(state["modules"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        return int(state["step"])

    def _read_latest_checkpoint(self) -> dict | None:
        """The newest checkpoint that loads into this stage's modules; falls back past corrupt ones."""
        for path in reversed(self._checkpoints()):
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
                for name, module in self.modules.items():  # a dry run on copies: catches foreign or truncated files
                    _check_state(module, state["modules"][name])
                missing = {"optimizer", "scheduler", "scaler", "rng", "step"} - state.keys()
                if missing:
                    raise KeyError(f"missing {sorted(missing)}")
            except Exception as exc:  # corrupt/truncated: fall back to the previous good one
                log.warning("checkpoint %s is unreadable (%s); trying the previous one", path, str(exc).splitlines()[0])
                continue
            return state
        return None

    # ------------------------------------------------------------------ loop
    def fit(self, resume: bool = False) -> TrainResult:
        """Train for ``config.steps`` steps (from the newest checkpoint with ``resume``).

        On CPU the loop runs inside :func:`~cdcompress.core.allocator.retained_heap`: every step frees and
        reallocates the same large activations, and glibc would otherwise unmap and re-fault them each
        time (half the CPU time in the kernel, measured; docs/benchmarks.md). Steady-state shapes make the
        retained heap's fragmentation cost nil; it is trimmed when the stage ends.

        Under torchrun the trained modules run under DistributedDataParallel, with BatchNorm synchronised
        over processes (``sync_batchnorm``), for this stage only."""
        self._prepare(resume)
        with ExitStack() as stack:
            stack.callback(self.run_log.close)  # event files flushed and closed however the stage ends
            if self.device.type == "cpu":
                stack.enter_context(retained_heap())
            if distributed.world_size() > 1:
                if self._sync_batchnorm():
                    stack.enter_context(distributed.synced_batchnorm(self.modules.values(), self.device))
                self._parallel = distributed.data_parallel(self.task.losses, self.modules, self.device)
                stack.callback(setattr, self, "_parallel", None)
            return self._fit(resume)

    def _prepare(self, resume: bool) -> None:
        """Show a task with ``prepare(batch)`` the first global batch before a run from step 0 (data-dependent
        initialisation). Every process sees the same whole batch, so they initialise alike; a one-shot iterator
        is not read ahead (its batch would be lost to training)."""
        prepare = getattr(self.task, "prepare", None)
        wanted = prepare is not None and getattr(self.task, "needs_prepare", True)
        if not wanted or isinstance(self.data, Iterator) or (resume and self._checkpoints()):
            return
        prepare(next(batches(self.data, 0, 1)).to(self.device))

    def _sync_batchnorm(self) -> bool:
        mode = self.config.sync_batchnorm
        return mode == "on" or (mode == "auto" and distributed.has_batchnorm(self.modules.values()))

    def _fit(self, resume: bool) -> TrainResult:
        start = self.load_latest_checkpoint() if resume else 0
        self.run_log.begin(start)
        history: list[dict] = []
        curve: list[dict] = []  # held-out PSNR records (config.eval_every)
        began = time.perf_counter()
        self.task.set_train(True)
        bar = Progress(self.config.steps, f"stage {self.task.name}", "step", initial=start, enabled=distributed.is_main())
        last_good = start
        if start == 0:
            self._evaluate(0, curve)
        stream = batches(self.data, start, self.config.steps, self.config.workers,
                         distributed.rank(), distributed.world_size())
        for step, batch in enumerate(stream, start=start):
            terms = self._step(batch.to(self.device), step)
            done = step + 1
            bar.update(1)
            if done % self.config.log_every == 0 or done == self.config.steps:
                record = {"stage": self.task.name, "step": done, "lr": self.scheduler.get_last_lr()[0],
                          "time": round(time.perf_counter() - began, 3), **terms}
                history.append(record)
                self.run_log.record(record)
                bar.set_postfix(loss=f"{terms['total']:.4g}")
            if self.config.sample_every and done % self.config.sample_every == 0:
                self.write_samples(batch, done)
            if self.config.eval_every and (done % self.config.eval_every == 0 or done == self.config.steps):
                self._evaluate(done, curve)
            if self.config.checkpoint_every and done % self.config.checkpoint_every == 0:
                self.save_checkpoint(done)
                last_good = done
        bar.close()
        if last_good != self.config.steps:
            self.save_checkpoint(self.config.steps)
        self.task.set_train(False)
        return TrainResult(self.task.name, self.config.steps, time.perf_counter() - began, history, start, curve)

    def _step(self, batch: Batch, step: int) -> dict[str, float]:
        """One optimiser step over this process's share of the global batch, in ``accumulate`` micro-batches."""
        if self.config.channels_last:  # CPU too: +23% stage 2, +48% stage 3 at level 3 (docs/reproduction_wct.md)
            batch = _channels_last(batch)
        parts = self._micro_batches(batch)
        self.optimizer.zero_grad(set_to_none=True)
        logged: dict[str, float] = {}
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            with self._parallel.no_sync() if self._parallel is not None and not last else nullcontext():
                terms = self._losses(part, step)
                self.scaler.scale(terms["total"] / len(parts)).backward()
            for key, value in detach_terms(terms).items():
                logged[key] = logged.get(key, 0.0) + value / len(parts)
        if self.config.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self._params, self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return distributed.mean_over_processes(logged)

    def _micro_batches(self, batch: Batch) -> list[Batch]:
        count = self.config.accumulate
        if count == 1:
            return [batch]
        size = len(batch.input)
        if size % count:
            raise TrainingError(f"stage {self.task.name}: {size} samples per process do not split into accumulate: "
                                f"{count} micro-batches; make the batch a multiple of processes x accumulate")
        per = size // count
        return [batch[i * per : (i + 1) * per] for i in range(count)]

    def _losses(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        amp = self._amp
        dtype = torch.bfloat16 if self.config.amp == "bf16" else torch.float16
        with torch.autocast(device_type=self.device.type, dtype=dtype, enabled=amp):
            terms = self._parallel(batch) if self._parallel is not None else self.task.losses(batch)
        loss = terms["total"]
        if not torch.isfinite(loss):
            good = self._checkpoints()
            where = f"; the last good checkpoint is {good[-1]}" if good else ""
            raise TrainingError(
                f"stage {self.task.name}: loss became {loss.item()} at step {step + 1}; lower the learning rate "
                f"or loss weights{where}"
            )
        return terms

    # ------------------------------------------------------------------ outputs
    def _evaluate(self, step: int, curve: list[dict]) -> None:
        """Held-out PSNR of the task's current output (a ``heldout/psnr`` record in metrics.jsonl)."""
        predict = getattr(self.task, "predict", None)
        if not self.config.eval_every or not self.held_out or predict is None:
            return
        self.task.set_train(False)
        score = mean_psnr(predict, [(b.input.to(self.device), b.target.to(self.device)) for b in self.held_out])
        self.task.set_train(True)
        record = {"stage": self.task.name, "step": step, "heldout/psnr": round(score, 4)}
        curve.append(record)
        self.run_log.record(record)

    def write_samples(self, batch: Batch, step: int) -> Path | None:
        """A PNG grid: one row per sample image, one column per view the task shows, under a header naming the
        stage, the step and each view when the task names them: ``task.sample_titles(batch)`` (or a plain
        ``sample_titles`` list), one title per view ``samples(batch)`` returns; without it, or when the count
        differs, the grid has no header. TensorBoard gets the same picture."""
        from ..data.annotate import with_header  # here: this method is all of the trainer that draws labels

        if self.run_dir is None or not distributed.is_main():
            return None
        sample = batch[: self.config.sample_count].to(self.device)
        self.task.set_train(False)
        with torch.no_grad():
            columns = self.task.samples(sample)
        self.task.set_train(True)
        rows = torch.cat([torch.cat([c[i : i + 1].float().cpu().clamp(0, 1) for c in columns], dim=-1)
                          for i in range(columns[0].shape[0])], dim=-2)
        titles = getattr(self.task, "sample_titles", None)
        titles = list(titles(sample) if callable(titles) else titles or ())
        if len(titles) == len(columns):
            rows = with_header(rows, titles, f"{self.task.name} · step {step}")
        self.run_log.image(rows[0], step)
        return save_image(rows, self.run_dir / "samples" / f"{self.task.name}_step{step:07d}.png")


def _check_state(module: nn.Module, state: dict) -> None:
    """Raise if ``state`` does not load into ``module`` (strictly), without touching the module."""
    own = module.state_dict()
    missing, unexpected = set(own) - set(state), set(state) - set(own)
    if missing or unexpected:
        raise KeyError(f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
    for key, value in own.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise ValueError(f"{key}: shape {tuple(state[key].shape)} instead of {tuple(value.shape)}")


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX); elsewhere bf16 autocast is emulated and slower."""
    capability = torch.backends.cpu.get_cpu_capability()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    return capability in ("AVX512", "AVX512_BF16", "AMX") and any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def autocast_applies(amp: str, device: torch.device) -> bool:
    """``amp`` runs on CUDA (bf16 or fp16) and, as bf16, on CPUs with native bf16 (+42% stage-2 crops/s at level 3,
    measured; docs/reproduction_wct.md). Elsewhere the stage runs in float32 and says so once."""
    if amp == "off":
        return False
    if device.type == "cuda" or (device.type == "cpu" and amp == "bf16" and cpu_has_bf16()):
        return True
    log.warning("amp %s does not apply on %s%s; training in float32", amp, device.type,
                " without native bf16" if amp == "bf16" and device.type == "cpu" else "")
    return False


def _channels_last(batch: Batch) -> Batch:
    image = batch.input.contiguous(memory_format=torch.channels_last)
    return Batch(image, image if not batch.paired else batch.target.contiguous(memory_format=torch.channels_last))
