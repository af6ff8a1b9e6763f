"""Photo denoising as a distillation task: held-out pairs and a teacher loop over the deterministic noisy/clean
training pairs of :mod:`cdcompress.data.noisy`. Held-out pairs are whole photos (resized, centre-cropped to the
model's stride by :func:`~cdcompress.data.images.crop_to_multiple`) with fixed-seed noise, so PSNR numbers are
comparable across runs; score them with :func:`cdcompress.evaluation.metrics.mean_psnr`.

The teacher is one module, :class:`~cdcompress.surgery.modules.EncoderDecoderPair`, trained on pixel MSE
by :func:`train_denoiser`: a :class:`DenoiseTask` run by the library's one training loop,
:class:`~cdcompress.distill.trainer.Trainer`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.batches import Batch, DataError, resize_shorter
from ..data.images import crop_to_multiple, load_image
from ..data.noisy import DEFAULT_SIGMA, Pair, add_noise, noise_generator
from ..distill.trainer import TrainConfig, Trainer


def heldout_pairs(paths: Sequence[str | Path], size: int = 256, multiple: int = 4, sigma: float = DEFAULT_SIGMA,
                  seed: int = 1234) -> list[Pair]:
    """One fixed ``(noisy, clean)`` pair per photo: shorter side ``size``, centre-cropped to ``multiple``."""
    if not paths:
        raise DataError("no held-out photos; pass at least one image path")
    pairs = []
    for index, path in enumerate(paths):
        clean = crop_to_multiple(resize_shorter(load_image(path), size), multiple, path, anchor="center")
        pairs.append((add_noise(clean, sigma, noise_generator(seed, index)), clean))
    return pairs


class DenoiseTask:
    """The whole model trained on pixel MSE against the clean image (the PSNR objective): a
    :class:`~cdcompress.distill.trainer.Task` for :class:`~cdcompress.distill.trainer.Trainer`.

    ``losses_seen`` keeps every step's loss; ``log(step, mean loss)`` is called every ``log_every`` steps."""

    name = "denoise"

    def __init__(self, model: nn.Module, log: Callable[[int, float], None] | None = None, log_every: int = 100) -> None:
        self.model, self.log, self.log_every = model, log, log_every
        self.losses_seen: list[float] = []

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        total = F.mse_loss(self.model(batch.input), batch.target)
        self.losses_seen.append(float(total.detach()))
        done = len(self.losses_seen)
        if self.log is not None and done % self.log_every == 0:
            self.log(done, sum(self.losses_seen[-self.log_every :]) / self.log_every)
        return {"total": total}

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def samples(self, batch: Batch) -> list[torch.Tensor]:
        return [batch.input, self.predict(batch.input), batch.target]

    def set_train(self, mode: bool) -> None:
        self.model.train(mode)


@dataclass
class TeacherLog:
    losses: list[float]
    seconds: float


def train_denoiser(model: nn.Module, pairs: Iterable[Pair], steps: int, lr: float = 1e-3,
                   log: Callable[[int, float], None] | None = None, log_every: int = 100) -> TeacherLog:
    """Adam on pixel MSE (the PSNR objective) with a cosine learning-rate decay to 5% of ``lr``, by the
    :class:`~cdcompress.distill.trainer.Trainer` (no run directory: no checkpoints or files).

    ``pairs`` is a :class:`NoisyPairs` (or any sampler with ``shard``) or an iterable of ``(noisy, clean)``
    batches; batches go to the model's device. The model is left in eval mode."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    task = DenoiseTask(model, log, log_every)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))  # none: the Trainer says so
    config = TrainConfig(steps=steps, lr=lr, schedule="cosine", lr_floor=0.05, log_every=log_every, device=str(device))
    result = Trainer(task, pairs, config).fit()
    return TeacherLog(task.losses_seen, result.seconds)
