"""Small helpers on ``nn.Module`` shared by slimming, distillation, cost and model code."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode, no gradients: a frozen network stays frozen whatever the trainer does."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def reinitialize(module: nn.Module) -> nn.Module:
    """Fresh random weights in every layer that knows how to reset itself."""
    for sub in module.modules():
        if sub is not module and hasattr(sub, "reset_parameters"):
            sub.reset_parameters()
    hook = getattr(module, "reset_output_bias", None)
    if callable(hook):
        hook()
    return module


class EncoderDecoderPair(nn.Module):
    """``decoder(encoder(x))`` as one module: one dependency graph for slimming, one forward for MAC counts."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x: torch.Tensor) -> Any:
        return self.decoder(self.encoder(x))
