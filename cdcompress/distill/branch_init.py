"""Embedding branches Q started at the least-squares map from student to teacher features.

Why: the collaborator is frozen, so stage 2 is only as good as Q·F' is close to F. A random Q feeds
the collaborator a random mix of the student's channels (5.1 dB through the residual pair's decoder,
docs/residual_pairs.md), and Adam moves each weight by about ``lr`` per step, so at lr 1e-4 a Q entry
travels ~0.03 in 300 steps while it starts ~0.5 from where it must be. Solved on one training batch
(a ridge-regularised least squares per branch, float64), Q starts where the pruned student already
agrees with the teacher: 17 dB at step 0 and 22.5 instead of 9.8 after 300 steps.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

RIDGE = 1e-3
"""Relative ridge: keeps the solve defined when a student channel is dead or two are collinear, and well
conditioned: at 1e-6 the float32 rounding differences between one process and two (tests/test_reliability.py)
were amplified into weights 2e-4 apart."""


def _rows(feature: torch.Tensor) -> torch.Tensor:
    """Samples x channels: every pixel (NCHW) or token ([B, N, C]) is one sample."""
    if feature.dim() == 4:
        feature = feature.permute(0, 2, 3, 1)
    return feature.reshape(-1, feature.shape[-1]).double()


def least_squares_map(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W, b)`` minimising ``|student_rows @ W.T + b - teacher_rows|²`` (plus a tiny ridge on W)."""
    x, y = _rows(student), _rows(teacher)
    mean_x, mean_y = x.mean(0), y.mean(0)
    xc, yc = x - mean_x, y - mean_y
    gram = xc.T @ xc
    gram += torch.eye(len(gram), dtype=gram.dtype, device=gram.device) * (RIDGE * gram.trace() / len(gram) + 1e-12)
    weight = torch.linalg.solve(gram, xc.T @ yc).T
    return weight, mean_y - weight @ mean_x


def fit_branches(branches: Mapping[str, nn.Module], student: Mapping[str, torch.Tensor],
                 teacher: Mapping[str, torch.Tensor]) -> None:
    """Set each branch (1x1 Conv2d or Linear, keyed like ``student``/``teacher``) to its least-squares map."""
    with torch.no_grad():
        for key, branch in branches.items():
            weight, bias = least_squares_map(student[key], teacher[key])
            branch.weight.copy_(weight.reshape(branch.weight.shape).to(branch.weight.dtype))
            if branch.bias is not None:
                branch.bias.copy_(bias.to(branch.bias.dtype))
