"""Turn a device name from a recipe or the command line into a usable ``torch.device``, or one clear error."""

from __future__ import annotations

import itertools

import torch

from .errors import CDCompressError


def resolve_device(name: str | torch.device) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``mps``, checked against what this PyTorch build can reach.

    Checked up front so that a recipe or command asking for a missing GPU fails in one line before
    any model is loaded, instead of deep inside the first forward.
    """
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise CDCompressError(f"device {name!r} is not a device name; use cpu, cuda, cuda:N or mps") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CDCompressError(f"device {name!r}: PyTorch sees no CUDA GPU here; use --device cpu "
                                  "(or install a CUDA build of torch)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise CDCompressError(f"device {name!r}: only {count} CUDA device(s) here (cuda:0..cuda:{count - 1})")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise CDCompressError(f"device {name!r}: MPS is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise CDCompressError(f"device {name!r} is not supported; use cpu, cuda, cuda:N or mps")
    return device


def module_device(module: torch.nn.Module) -> torch.device:
    """Where ``module``'s first parameter (or buffer) lives: probe inputs must go there (the host for a module
    without tensors)."""
    first = next(itertools.chain(module.parameters(), module.buffers()), None)
    return first.device if first is not None else torch.device("cpu")
