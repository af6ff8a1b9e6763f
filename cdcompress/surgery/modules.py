"""Small helpers on ``nn.Module`` shared by slimming, distillation, cost and model code."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

#: Layers whose default initialisation :func:`default_init` reproduces from a local generator.
WEIGHTED_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                   nn.Linear)
#: Layers whose ``reset_parameters`` draws no random numbers (ones and zeros, cleared running statistics).
UNRANDOM_RESETS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm,
                   nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode, no gradients: a frozen network stays frozen whatever the trainer does."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def default_init(layer: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """torch's own initialisation of a convolution or linear layer (Kaiming-uniform weight with a = sqrt(5),
    bias uniform in ±1/sqrt(fan_in)), drawn from ``generator`` so seeding a model leaves torch's global RNG
    alone. The draws are the ones ``reset_parameters`` makes, in the same order: the same seed, the same numbers."""
    weight: torch.Tensor = layer.weight
    with torch.no_grad():
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
        bias = getattr(layer, "bias", None)
        if bias is not None:
            fan_in = weight.shape[1] * weight[0][0].numel()  # in/groups x kernel (conv), in_features (linear)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            nn.init.uniform_(bias, -bound, bound, generator=generator)
    return layer


def reinitialize(module: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Fresh random weights in every layer that knows how to reset itself.

    Convolutions and linear layers draw from ``generator`` (:func:`default_init`) and norms reset without
    randomness; any other layer with its own ``reset_parameters`` (attention, say) runs it with every draw taken
    from ``generator``, so with a generator torch's global RNG is neither read, advanced nor reseeded."""
    for sub in module.modules():
        if sub is module:
            continue
        if isinstance(sub, WEIGHTED_LAYERS):
            default_init(sub, generator)
        elif isinstance(sub, UNRANDOM_RESETS):
            sub.reset_parameters()
        elif hasattr(sub, "reset_parameters"):
            _reset_from(sub, generator)
    hook = getattr(module, "reset_output_bias", None)
    if callable(hook):
        hook()
    return module


def _reset_from(layer: Any, generator: torch.Generator | None) -> None:
    """``layer.reset_parameters()`` with its own distributions, every draw taken from ``generator``."""
    if generator is None:
        layer.reset_parameters()
        return
    with _DrawFrom(generator):
        layer.reset_parameters()


class _DrawFrom(TorchFunctionMode):
    """Hands ``generator`` to every random draw that names none (``nn.init``'s ``uniform_``/``normal_``, ``torch.rand``
    ...), so a layer's own ``reset_parameters`` runs unchanged without reading or reseeding torch's global RNG."""

    def __init__(self, generator: torch.Generator) -> None:
        super().__init__()
        self.generator = generator

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = dict(kwargs or {})
        if getattr(func, "__name__", "") in _RANDOM_DRAWS and kwargs.get("generator") is None:
            kwargs["generator"] = self.generator
        return func(*args, **kwargs)


#: torch functions and tensor methods that draw random numbers and take a ``generator``.
_RANDOM_DRAWS = frozenset({"uniform_", "normal_", "random_", "bernoulli_", "bernoulli", "exponential_", "geometric_",
                           "log_normal_", "cauchy_", "rand", "randn", "randint", "randperm", "multinomial", "normal",
                           "poisson"})


class EncoderDecoderPair(nn.Module):
    """``decoder(encoder(x))`` as one module: one dependency graph for slimming, one forward for MAC counts."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x: torch.Tensor) -> Any:
        return self.decoder(self.encoder(x))
