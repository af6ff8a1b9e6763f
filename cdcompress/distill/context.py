"""What a recipe's stages and its report may use of the run, as protocols.

:class:`~cdcompress.distill.run.RecipeRun` provides both; the stages and the report depend on these narrow views,
not on the run, so neither imports ``run.py`` (which imports them) and each says exactly what it needs.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import torch

from .recipe import Recipe, StageSpec
from .trainer import TrainConfig


class ReportContext(Protocol):
    """The run as the report reads it: settings, outputs, held-out images and the bookkeeping of the stages."""

    recipe: Recipe
    run_dir: Path
    stage_seconds: dict[str, float]
    notes: list[str]

    def held_out_images(self) -> list[tuple[str, torch.Tensor]]: ...


class StageContext(ReportContext, Protocol):
    """The run as a stage uses it: the report's view plus data, trainer settings, timing and notes."""

    resume: bool
    train_paths: list[Path]
    style_paths: list[Path]
    collaborator_psnr: dict[int, float]

    def sampler(self, paths: list[Path], batch: int, offset: int) -> Any: ...

    def config(self, stage: StageSpec) -> TrainConfig: ...

    def timed(self, name: str) -> AbstractContextManager[None]: ...

    def note(self, message: str, warn: bool = False) -> None: ...

    def curve_images(self) -> list[torch.Tensor]: ...
