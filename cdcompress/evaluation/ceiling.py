"""A decoder's output conv solved by least squares, and the ceiling it puts on a level-1 encoder.

When a decoder ends in a conv with nothing after it, the pixel loss is a linear least-squares problem in that
conv's weights given everything before it: the normal equations give its optimum in one pass over a few batches,
where Adam needs tens of thousands of steps on features this badly conditioned (VGG features in 255-scale units,
neighbouring pixels nearly collinear). A level-1 VGG decoder IS one such conv, so the solve is the best decoder
those features allow: it separates what the encoder (stage 2) keeps from how close stage 3 came to reading it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import CDCompressError
from ..data.batches import as_batch
from .metrics import reconstruction_psnr


def output_conv(decoder: nn.Module) -> nn.Conv2d:
    """The decoder's last ``Conv2d`` (module order); :func:`refit_output_conv` checks that nothing follows it."""
    convs = [m for m in decoder.modules() if isinstance(m, nn.Conv2d)]
    if not convs or convs[-1].groups != 1:
        raise CDCompressError("refitting the output layer needs a decoder ending in a plain (groups=1) Conv2d")
    return convs[-1]


def conv_columns(conv: nn.Conv2d, inputs: torch.Tensor) -> torch.Tensor:
    """Each output pixel's receptive field in ``conv``'s input, plus a 1 for the bias: [N, H'*W', C*k*k + 1]."""
    padding: tuple[int, ...] | int = conv.padding if isinstance(conv.padding, tuple) else 0
    if conv.padding_mode != "zeros" and any(padding):
        inputs = F.pad(inputs, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
        padding = 0
    columns = F.unfold(inputs, conv.kernel_size, conv.dilation, padding, conv.stride)
    ones = torch.ones(columns.shape[0], 1, columns.shape[2], dtype=columns.dtype, device=columns.device)
    return torch.cat([columns, ones], 1).transpose(1, 2)


@torch.no_grad()
def refit_output_conv(encoder: nn.Module, decoder: nn.Module, batches: Iterable[object], ridge: float = 1e-6,
                      pixels_per_image: int = 16384, seed: int = 0) -> nn.Conv2d:
    """Set ``decoder``'s output conv to the pixel-MSE optimum given ``encoder`` and the layers before it.

    ``batches``: image tensors (autoencoding) or anything :func:`cdcompress.data.batches.as_batch` reads, such as
    ``(input, target)`` pairs for image-to-image data.
    Normal equations in float64 over a random subset of pixels per image (the cost grows with the rows, the
    answer barely); ``ridge`` (relative to the mean diagonal) keeps dead channels solvable. Refuses a decoder
    whose output is not that conv's output (an activation or a skip after it)."""
    conv = output_conv(decoder)
    seen: dict[str, Any] = {}
    handle = conv.register_forward_hook(lambda _m, args, out: seen.update(inputs=args[0], outputs=out,
                                                                           version=out._version))
    generator = torch.Generator().manual_seed(seed)
    gram = cross = None
    try:
        for item in batches:
            batch = as_batch(item)
            output = decoder(encoder(batch.input))
            if output is not seen["outputs"] or output._version != seen["version"]:  # a new tensor or an in-place op
                raise CDCompressError("the decoder's output is not its last conv's output (an activation or skip "
                                      "follows it); refit only decoders with a linear output layer")
            columns = conv_columns(conv, seen["inputs"]).double()
            target = batch.target
            targets = target.permute(0, 2, 3, 1).reshape(target.shape[0], -1, target.shape[1]).double()
            for x, y in zip(columns, targets, strict=True):
                rows = torch.randperm(x.shape[0], generator=generator)[:pixels_per_image]
                x, y = x[rows], y[rows]
                gram = x.T @ x if gram is None else gram + x.T @ x
                cross = x.T @ y if cross is None else cross + x.T @ y
    finally:
        handle.remove()
    if gram is None or cross is None:
        raise CDCompressError("refitting the output layer needs at least one training batch")
    gram = gram + ridge * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    solution = torch.linalg.solve(gram, cross)  # [C*k*k + 1, out]
    conv.weight.copy_(solution[:-1].T.reshape(conv.weight.shape).to(conv.weight.dtype))
    if conv.bias is None:
        conv.bias = nn.Parameter(torch.zeros(conv.out_channels, dtype=conv.weight.dtype, device=conv.weight.device))
    conv.bias.copy_(solution[-1].to(conv.bias.dtype))
    return conv


def linear_ceiling(encoder: nn.Module, decoder: nn.Module, batches: Iterable[object],
                   held_out: Sequence[torch.Tensor], **options: float) -> float:
    """Held-out PSNR of a copy of ``decoder`` with its output conv refitted on ``batches``: for a one-conv
    (level-1) decoder, the best any linear 3x3 read-out of ``encoder``'s features can do."""
    refitted = copy.deepcopy(decoder).eval()
    refit_output_conv(encoder, refitted, batches, **options)  # type: ignore[arg-type]
    return reconstruction_psnr(encoder, refitted, held_out)


__all__ = ["conv_columns", "linear_ceiling", "output_conv", "refit_output_conv"]
