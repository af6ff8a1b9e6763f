"""Importance criteria: which filters slimming keeps (torch-pruning's ``importance(group) -> scores`` protocol).

The built-ins register in :data:`cdcompress.core.registry.IMPORTANCES` (``l1``, ``l2``, ``taylor``, ``random``)
when this module is imported (slimming imports it).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..core.errors import SlimmingError
from ..core.registry import IMPORTANCES

PRUNABLE = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
"""The layer types whose output channels slimming removes."""


def _out_filter_items(group: Any) -> Iterator[tuple[nn.Module, list[int], list[int]]]:
    """(layer, its channel indices, the root's indices) for every layer of the group that *produces* the channels."""
    for item in group:
        layer = item.dep.target.module
        if isinstance(layer, PRUNABLE) and getattr(item.dep.handler, "__name__", "") == "prune_out_channels":
            yield layer, list(item.idxs), list(item.root_idxs)


def _filters(layer: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """A weight-shaped tensor as one row per output channel (ConvTranspose stores [in, out, ...])."""
    return (tensor.transpose(0, 1) if isinstance(layer, nn.ConvTranspose2d) else tensor).flatten(1)


def _root_channels(group: Any) -> int:
    return len(group[0].idxs)


class FilterNorm:
    """Per-output-filter Lp norm summed over a channel's producers (the paper's L1 filter pruning for p=1).

    Unlike torch-pruning's default group reduction, the consumers' input weights are left out, so a
    VGG layer keeps exactly the filters the paper's per-filter criterion keeps."""

    needs_gradients = False

    def __init__(self, p: int = 1) -> None:
        self.p = p

    def __call__(self, group: Any) -> torch.Tensor:
        total = torch.zeros(_root_channels(group))
        for layer, idxs, root_idxs in _out_filter_items(group):
            norms = _filters(layer, layer.weight.detach()).abs().pow(self.p).sum(1).pow(1.0 / self.p)
            total[root_idxs] += norms[idxs].cpu()
        return total


class TaylorImportance:
    """|Σ w·∂L/∂w| per output filter: first-order estimate of the loss change when a filter is removed."""

    needs_gradients = True

    def __call__(self, group: Any) -> torch.Tensor:
        total = torch.zeros(_root_channels(group))
        for layer, idxs, root_idxs in _out_filter_items(group):
            if layer.weight.grad is None:
                raise SlimmingError("taylor importance needs gradients: pass a calibration loss (calibrate=...) to the slimmer")
            scores = _filters(layer, layer.weight.detach() * layer.weight.grad.detach()).sum(1).abs()
            total[root_idxs] += scores[idxs].cpu()
        return total


class RandomImportance:
    """Random scores from a seeded generator: the 'no criterion' baseline."""

    needs_gradients = False

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, group: Any) -> torch.Tensor:
        return torch.rand(_root_channels(group), generator=self.generator)


def l1() -> FilterNorm:
    """``l1``: the paper's criterion (the filters with the largest L1 norms are kept)."""
    return FilterNorm(1)


def l2() -> FilterNorm:
    """``l2``: the same with L2 norms."""
    return FilterNorm(2)


def taylor() -> TaylorImportance:
    """``taylor``: first-order loss change, from gradients on calibration data."""
    return TaylorImportance()


def random(seed: int = 0) -> RandomImportance:
    """``random``: the no-criterion baseline, seeded."""
    return RandomImportance(seed)


for _factory in (l1, l2, taylor, random):
    IMPORTANCES.register(_factory.__name__)(_factory)
