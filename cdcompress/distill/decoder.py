"""Stage 1 (a collaborator decoder for a teacher) and stage 3 (a small decoder for the student).

Both are decoder-training tasks against a frozen encoder with the reconstruction loss: pixel
MSE + lambda_p * perceptual MSE on frozen-teacher features, between ``decoder(encoder(input))`` and
the batch's target (the input itself for autoencoding data, the clean image for paired data).
Stage 3 differs only in where its decoder starts (:func:`starting_decoder`): from what stage 2 left, handed over
as a :class:`StudentDecoderStart` (the distiller builds it; this module does not know the distiller).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..core.errors import CDCompressError
from ..data.batches import Batch
from ..surgery.modules import freeze, reinitialize
from .losses import FeatureExtractor, reconstruction_terms, total
from .settings import DECODER_INITS
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

    def sample_titles(self, batch: Batch) -> list[str]:
        """The titles of :meth:`samples`' views, in their order (the sample grids' header)."""
        titles = ["input", *(["teacher pair"] if self.reference is not None else []), "decoder"]
        return [*titles, "target"] if batch.paired else titles

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
    # The reference pair only shows in sample grids, but it runs on the batch's device: stage 3 hands over the
    # distiller's teacher pair, which no fit() has moved when stage 2 was skipped.
    reference = reference.to(device) if reference is not None else None
    task = DecoderTask(name, encoder.to(device), decoder.to(device), perceptual, lambda_p, reference)
    return Trainer(task, data, config, run_dir, held_out).fit(resume=resume)


@dataclass(frozen=True)
class StudentDecoderStart:
    """What stage 3 needs from stage 2 to start a decoder for the student, and no more."""

    slimmed: nn.Module  # the collaborator slimmed with the student (the ``pruned`` start)
    collaborator: nn.Module  # the full collaborator, whose first conv ``folded`` composes with Q
    output_branch: nn.Module | None  # Q at the encoder's output when that is one feature map, else None
    kept: Mapping[str, list[int]]  # per slimmed layer, the collaborator's filters kept (``SlimResult.kept``)
    seed: int  # the ``random`` start draws from a generator seeded with it


def starting_decoder(start: StudentDecoderStart, init: str = "pruned") -> nn.Module:
    """Stage 3's trainable starting point: the slimmed collaborator (``pruned``), the same with the trained output
    branch Q folded into its first conv (``folded``, VGG pairs), or re-initialised (``random``)."""
    if init not in DECODER_INITS:
        raise CDCompressError(f"decoder init must be one of {', '.join(DECODER_INITS)}, got {init!r}")
    decoder = copy.deepcopy(start.slimmed)
    if init == "random":  # drawn on the CPU from the start's seed: torch's global RNG is neither read nor advanced
        device = next(decoder.parameters()).device
        reinitialize(decoder.cpu(), torch.Generator().manual_seed(start.seed)).to(device)
    elif init == "folded":
        fold_output_branch(start, decoder)
    for p in decoder.parameters():
        p.requires_grad_(True)
    return decoder


@torch.no_grad()
def fold_output_branch(start: StudentDecoderStart, decoder: nn.Module) -> nn.Module:
    """Give ``decoder``'s first conv the collaborator's first conv composed with the output branch Q.

    Stage 2 trained Q so that the collaborator decodes Q·F'; the slimmed decoder's first conv instead reads
    F' directly through a slice of the collaborator's weights, which means nothing for the student's
    features. Folding W·Q (and W·q_bias into the bias, exact under reflection padding) makes the first
    layer's kept channels exactly the collaborator's on Q·F', so stage 3 starts from a working decoder."""
    from ..models.vgg import VGGDecoder

    collaborator, branch = start.collaborator, start.output_branch
    if not (isinstance(decoder, VGGDecoder) and isinstance(collaborator, VGGDecoder) and branch is not None):
        raise CDCompressError("decoder init 'folded' needs a VGG encoder/decoder pair (one feature-map output); "
                              "use init 'pruned' for other pairs")
    first = decoder.plan[0]
    small, full = getattr(decoder, first), getattr(collaborator, first)
    kept = start.kept.get(f"decoder.{first}", list(range(full.out_channels)))
    weight = full.weight[kept]  # [out', C, k, k]
    q = branch.weight[:, :, 0, 0]  # [C, C']
    small.weight.copy_(torch.einsum("ocij,cd->odij", weight, q))
    small.bias.copy_(full.bias[kept] + torch.einsum("ocij,c->o", weight, branch.bias))
    return decoder
