"""Stage 1 (a collaborator decoder for a teacher) and stage 3 (a small decoder for the student).

Both are decoder-training tasks against a frozen encoder with the reconstruction loss: pixel
MSE + lambda_p * perceptual MSE on frozen-teacher features, between ``decoder(encoder(input))`` and
the batch's target (the input itself for autoencoding data, the clean image for paired data).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..data import Batch
from ..losses import FeatureExtractor, reconstruction_terms, total
from ..modules import freeze
from .trainer import TrainConfig, Trainer, TrainResult


class DecoderTask:
    """Train ``decoder`` so ``decoder(encoder(input))`` reproduces the target (encoder frozen)."""

    def __init__(
        self,
        name: str,
        encoder: nn.Module,
        decoder: nn.Module,
        perceptual: FeatureExtractor | None,
        lambda_p: float = 1.0,
        reference: nn.Module | None = None,
    ) -> None:
        self.name = name
        self.encoder = freeze(encoder)
        self.decoder = decoder
        self.perceptual = freeze(perceptual) if perceptual is not None else None
        self.lambda_p = lambda_p
        self.reference = reference  # optional teacher autoencoder shown in sample grids

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"decoder": self.decoder}

    def set_train(self, mode: bool) -> None:
        self.decoder.train(mode)

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            features = self.encoder(batch.input)
        output = self.decoder(features)
        terms = reconstruction_terms(output, batch.target, self.perceptual, self.lambda_p)
        terms["total"] = total(terms)
        return terms

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(images))

    def samples(self, batch: Batch) -> list[torch.Tensor]:
        views = [batch.input]
        if self.reference is not None:
            views.append(self.reference(batch.input))
        views.append(self.decoder(self.encoder(batch.input)))
        return [*views, batch.target] if batch.paired else views


def train_decoder(
    name: str,
    encoder: nn.Module,
    decoder: nn.Module,
    data: object,
    config: TrainConfig,
    perceptual_net: nn.Module | None = None,
    perceptual_taps: Sequence[str] = (),
    lambda_p: float = 1.0,
    run_dir: str | Path | None = None,
    resume: bool = False,
    reference: nn.Module | None = None,
    held_out: Sequence[torch.Tensor | Batch] = (),
) -> TrainResult:
    """Stage 1 (encoder = teacher) or stage 3 (encoder = student): fit ``decoder`` in place."""
    device = torch.device(config.device)
    perceptual = None
    if perceptual_net is not None and perceptual_taps and lambda_p > 0:
        perceptual = FeatureExtractor(freeze(copy.deepcopy(perceptual_net)).to(device), perceptual_taps)
    task = DecoderTask(name, encoder.to(device), decoder.to(device), perceptual, lambda_p, reference)
    return Trainer(task, data, config, run_dir, held_out).fit(resume=resume)
