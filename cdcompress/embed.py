"""Linear-embedding branches Q that map student features (C') back to teacher width (C).

The paper's branches are 1x1 convolutions with bias and no activation; for token features
([B, N, C]) the same map is a ``Linear``. They exist only during training: the deployable
student never carries them, but the native model format keeps them beside it so a converted
release (whose ``conv*_aux`` layers are exactly these branches) round-trips.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


def make_branch(student_channels: int, teacher_channels: int, tokens: bool = False) -> nn.Module:
    """One embedding branch: 1x1 conv for NCHW maps, Linear for [B, N, C] tokens."""
    if tokens:
        return nn.Linear(student_channels, teacher_channels)
    return nn.Conv2d(student_channels, teacher_channels, kernel_size=1)


class EmbeddingBranches(nn.ModuleDict):
    """Named branches, one per feature tap: ``branches["relu3_1"](student_feature)``."""

    def __init__(self, widths: Mapping[str, tuple[int, int]], tokens: Mapping[str, bool] | None = None) -> None:
        tokens = tokens or {}
        super().__init__({tap: make_branch(cs, ct, tokens.get(tap, False)) for tap, (cs, ct) in widths.items()})

    @property
    def widths(self) -> dict[str, tuple[int, int]]:
        """``{tap: (student_channels, teacher_channels)}``."""
        return {tap: _io_channels(branch) for tap, branch in self.items()}

    @property
    def token_taps(self) -> dict[str, bool]:
        return {tap: isinstance(branch, nn.Linear) for tap, branch in self.items()}

    def embed(self, features: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map each student feature to teacher width (taps without a branch are skipped)."""
        return {tap: self[tap](f) for tap, f in features.items() if tap in self}


def _io_channels(branch: nn.Module) -> tuple[int, int]:
    if isinstance(branch, nn.Linear):
        return branch.in_features, branch.out_features
    assert isinstance(branch, nn.Conv2d)
    return branch.in_channels, branch.out_channels
