"""Any encoder-decoder pair in the native format: what is recorded and how it is rebuilt.

A user's architecture cannot be described by a JSON spec the way the VGG family is, and rebuilding
it must never run code named by the file. So a model directory of family ``module`` records

* the *teacher's* architecture: the class names (for error messages only) and, when the teacher was
  built by a factory registered in :data:`cdcompress.core.registry.ARCHITECTURES`, its name and kwargs;
* the slimmed widths: the absolute output width of every Conv/ConvTranspose/Linear layer of the pair,
  and the example input shape that torch-pruning traced.

Loading builds the teacher from factories the *caller* supplies (``load(dir, encoder=f, decoder=g)``)
or from registered names (registered by modules the caller imported, e.g. ``--import mypkg.models``),
cuts it to the recorded widths with the same torch-pruning slimmer, then fills the weights from
safetensors; every tensor shape is checked, so a wrong factory is one clear error.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..core.errors import ModelFormatError
from ..core.provenance import ARCHITECTURE_TAG
from ..core.registry import ARCHITECTURES
from ..surgery.slim import slim_pair
from . import resae, unet  # noqa: F401  (the built-in architectures register on import)

MODULE_FAMILY = "module"
ROLES = ("encoder", "decoder")
Factory = Callable[[], nn.Module] | nn.Module


def describe(module: nn.Module) -> dict[str, Any]:
    """How a teacher-shaped module was made: its class and, if any, the registered factory."""
    cls = type(module)
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "registered": getattr(module, ARCHITECTURE_TAG, None)}


def architecture_record(encoder: nn.Module, decoder: nn.Module, widths: Mapping[str, int] | None,
                        example_shape: tuple[int, ...], teacher_decoder: bool = False) -> dict[str, Any]:
    """The ``architecture`` entry of ``model.json`` for a pair cut from ``encoder``/``decoder``; ``teacher_decoder``:
    only the encoder was cut, the decoder is the teacher's own (a drop-in student's pair)."""
    record = {"encoder": describe(encoder), "decoder": describe(decoder),
              "widths": None if widths is None else {k: int(v) for k, v in widths.items()},
              "example_input": [int(d) for d in example_shape]}
    return {**record, "teacher_decoder": True} if teacher_decoder else record


def rebuild(record: Mapping[str, Any], where: str, encoder: Factory | None = None,
            decoder: Factory | None = None) -> tuple[nn.Module, nn.Module]:
    """Modules of the saved shapes (weights not loaded yet) from the caller's factories or registered names."""
    try:
        teacher = tuple(_teacher_part(record, role, factory, where) for role, factory in zip(ROLES, (encoder, decoder),
                                                                                              strict=True))
        widths = record.get("widths")
        example = torch.zeros([int(d) for d in record["example_input"]])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFormatError(f"{where}: malformed architecture record ({exc}); re-create the model") from None
    if not widths:
        return teacher[0], teacher[1]
    if not isinstance(widths, Mapping) or not all(isinstance(v, int) and v > 0 for v in widths.values()):
        raise ModelFormatError(f"{where}: architecture widths must map layer names to positive integers; re-create the model")
    unknown = sorted(set(widths) - _layer_names(*teacher))
    if unknown:
        raise ModelFormatError(f"{where}: the recorded widths name layers the given architecture lacks ({unknown[:3]}); "
                               "pass the factories of the teacher this student was cut from")
    sliced = slim_pair(teacher[0], teacher[1], (example,), dict(widths), _FirstChannels())
    return sliced.encoder, (teacher[1] if record.get("teacher_decoder") is True else sliced.decoder)


class _FirstChannels:
    """Importance that keeps the first channels: which ones does not matter, the weights are loaded next."""

    needs_gradients = False

    def __call__(self, group: Any) -> torch.Tensor:
        return -torch.arange(len(group[0].idxs), dtype=torch.float32)


def _layer_names(encoder: nn.Module, decoder: nn.Module) -> set[str]:
    return {f"{role}.{name}" for role, module in zip(ROLES, (encoder, decoder), strict=True)
            for name, _ in module.named_modules() if name}


def _teacher_part(record: Mapping[str, Any], role: str, factory: Factory | None, where: str) -> nn.Module:
    if isinstance(factory, nn.Module):
        return copy.deepcopy(factory)
    if factory is not None:
        built = factory()
        if not isinstance(built, nn.Module):
            raise ModelFormatError(f"the {role} factory returned {type(built).__name__}, not an nn.Module")
        return built
    entry = record[role]
    registered = entry.get("registered") or {}
    name, kwargs = registered.get("name"), registered.get("kwargs")
    if isinstance(name, str) and name in ARCHITECTURES and isinstance(kwargs, dict):
        return ARCHITECTURES.get(name)(**kwargs)
    cli = (f"--import the module that registers architecture {name!r}" if name
           else "register its factory with @cdcompress.ARCHITECTURES.register and --import that module")
    raise ModelFormatError(f"{where}: the {role} is a user architecture ({entry.get('class')}); rebuild it in Python with "
                           f"cdcompress.load(path, encoder=..., decoder=...) or, on the CLI, {cli}")
