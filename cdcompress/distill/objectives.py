"""Stage 2's objectives: what the frozen collaborator must achieve from the student's embedded features.

An objective is ``(ObjectiveContext) -> {term: loss}``, registered by name in :data:`OBJECTIVES` so a recipe
can pick one (``reconstruction`` for WCT-style autoencoders, ``style-transfer`` for AdaIN, ``feature-kd`` for
the embedding loss alone, the KD baseline) and plugins can add their own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.errors import CDCompressError
from ..core.registry import OBJECTIVES
from ..surgery.embed import OUTPUT
from .losses import FeatureExtractor, adain, reconstruction_terms, style_transfer_terms


@dataclass
class ObjectiveContext:
    """What an objective sees: the batch (input and target), the student's embedded outputs (in the
    encoder's output structure, ready for the collaborator), the frozen collaborator and teacher features
    of the input."""

    images: torch.Tensor
    student_outputs: Any
    teacher_features: dict[str, torch.Tensor]
    collaborator: nn.Module
    perceptual: FeatureExtractor
    targets: torch.Tensor | None = None

    @property
    def target(self) -> torch.Tensor:
        """What the collaborator should produce: the batch's target, or the input for autoencoding data."""
        return self.images if self.targets is None else self.targets


Objective = Callable[[ObjectiveContext], dict[str, torch.Tensor]]


@OBJECTIVES.register("reconstruction")
class ReconstructionObjective:
    """The paper's WCT case: the collaborator must produce the target from Q·F' (pixel + λp·perceptual)."""

    def __init__(self, lambda_p: float = 1.0, perceptual_taps: Sequence[str] | None = None) -> None:
        self.lambda_p = lambda_p
        self.perceptual_taps = None if perceptual_taps is None else list(perceptual_taps)

    def __call__(self, ctx: ObjectiveContext) -> dict[str, torch.Tensor]:
        output = ctx.collaborator(ctx.student_outputs)
        if ctx.targets is None:
            targets = {t: ctx.teacher_features[t] for t in ctx.perceptual.taps}
            return reconstruction_terms(output, ctx.images, ctx.perceptual, self.lambda_p, targets)
        return reconstruction_terms(output, ctx.target, ctx.perceptual, self.lambda_p)


@OBJECTIVES.register("style-transfer")
class StyleTransferObjective:
    """AdaIN: batches are [content; style]; the collaborator decodes AdaIN(Q·F'_c, Q·F'_s) and is
    judged by content (to the AdaIN target) and style (feature mean/std) losses on teacher features."""

    def __init__(self, lambda_s: float = 10.0, perceptual_taps: Sequence[str] | None = None) -> None:
        self.lambda_s = lambda_s
        self.perceptual_taps = None if perceptual_taps is None else list(perceptual_taps)

    def __call__(self, ctx: ObjectiveContext) -> dict[str, torch.Tensor]:
        if not isinstance(ctx.student_outputs, torch.Tensor):
            raise CDCompressError("the style-transfer objective needs an encoder with a single feature-map output")
        half = ctx.images.shape[0] // 2
        content, style = ctx.student_outputs[:half], ctx.student_outputs[half:]
        target = adain(content, style)
        output = ctx.collaborator(target)
        out_features = ctx.perceptual(output)
        style_features = {t: f[half:] for t, f in ctx.teacher_features.items() if t in ctx.perceptual.taps}
        return style_transfer_terms(out_features, target, style_features, OUTPUT, self.lambda_s)




@OBJECTIVES.register("feature-kd")
def feature_kd() -> None:
    """The KD baseline: no collaborator term, the embedding loss alone. It takes no options, so a recipe or
    ``apply`` call that passes one (``lambda_p``, say) is told so instead of having it silently ignored."""
    return None
