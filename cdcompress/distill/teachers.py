"""Teacher sources: where a recipe's teacher encoder (and its decoder, the collaborator) come from.

Each source is a registered factory ``(path, level, ...) -> Teacher | (encoder, decoder) | encoder``;
a recipe names it in ``teacher.source`` and its other fields (``path``, ``variant``, ``pretrained``,
``kwargs``) are passed to the factory by name. Users add sources with
``@TEACHER_SOURCES.register("name")`` in a module they ``--import``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import CDCompressError
from ..core.registry import TEACHER_SOURCES
from ..core.user_code import accepted, import_callable
from ..models.converters import convert_cd_release, convert_torchvision, convert_wct_pytorch, teacher_architecture
from ..models.format import load
from ..models.resolve import resolve_model

TORCHVISION_VGG19 = "vgg19-dcbb9e9d.pth"



@dataclass
class Teacher:
    encoder: nn.Module
    decoder: nn.Module | None
    note: str
    randomly_initialised: bool = False


def torchvision_cache_file() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_VGG19


def load_teacher(spec: Any, level: int) -> Teacher:
    """The teacher of ``level`` from the recipe's ``teacher`` section (a :class:`~cdcompress.distill.recipe.TeacherSpec`)."""
    factory = TEACHER_SOURCES.get(spec.source)
    fields = {"path": spec.path, "level": level, "variant": spec.variant, "pretrained": spec.pretrained}
    built = factory(**accepted(factory, fields), **spec.kwargs)
    return as_teacher(built, f"teacher source {spec.source} ({spec.path})")


def as_teacher(built: Any, note: str) -> Teacher:
    if isinstance(built, Teacher):
        return built
    encoder, decoder = built if isinstance(built, tuple) else (built, None)
    if not isinstance(encoder, nn.Module) or not (decoder is None or isinstance(decoder, nn.Module)):
        raise CDCompressError(f"{note}: expected an encoder module or an (encoder, decoder) pair, got {type(built).__name__}")
    return Teacher(encoder, decoder, note)


@TEACHER_SOURCES.register("model")
def model_directory(path: str, level: int) -> Teacher:
    model = load(path)
    return Teacher(model.encoder(level), model.decoders.get(level), f"model directory {path}")


@TEACHER_SOURCES.register("cd-release")
def cd_release(path: str, level: int, variant: str = "student") -> Teacher:
    model = convert_cd_release(path, variant, (level,))
    return Teacher(model.encoders[level], model.decoders[level], f"released {variant} checkpoints in {path}")


@TEACHER_SOURCES.register("wct-pytorch")
def wct_pytorch(path: str, level: int) -> Teacher:
    """The WCT teacher straight from its ``vgg_normalised_conv{k}_1.pth`` folder (converted in memory)."""
    model = convert_wct_pytorch(path)
    return Teacher(model.encoder(level), model.decoders.get(level), f"WCT VGG-19 teacher from {path}")


@TEACHER_SOURCES.register("wct-vgg19")
def wct_vgg19(path: str, level: int) -> Teacher:
    """The paper's teacher wherever it is: ``path``, or with ``auto`` ``$CDCOMPRESS_WCT_VGG19`` or the weights cache."""
    from ..models.weights import require_wct

    where = require_wct(path)
    if (where / "model.json").is_file():
        return replace(model_directory(str(where), level), note=f"WCT VGG-19 teacher in {where}")
    return wct_pytorch(str(where), level)


@TEACHER_SOURCES.register("bundled")
def bundled(path: str, level: int) -> Teacher:
    """A teacher shipped inside the package (``path`` names it; see :mod:`cdcompress.models.bundled`)."""
    from ..models.bundled import BUNDLED_TEACHERS, bundled_teacher

    where = bundled_teacher(path)
    return replace(model_directory(str(where), level), note=f"bundled teacher {path}: {BUNDLED_TEACHERS[path]}")


@TEACHER_SOURCES.register("torchvision")
def torchvision_vgg19(path: str, level: int) -> Teacher:
    return Teacher(convert_torchvision(path).encoder(level), None, f"torchvision VGG-19 weights {path}")


@TEACHER_SOURCES.register("builtin")
def builtin(path: str, level: int, pretrained: str = "auto") -> Teacher:
    cached = torchvision_cache_file()
    if path == "vgg19" and pretrained == "auto" and cached.is_file():
        return Teacher(convert_torchvision(cached).encoder(level), None, f"VGG-19 with ImageNet weights from {cached}")
    model = teacher_architecture(levels=(level,)) if path == "vgg19" else resolve_model(path)[0]
    encoder = scale_preserving_init(model.encoder(level))
    if path != "vgg19":
        why = "a built-in architecture has no trained weights; name a trained model directory as teacher instead"
    elif pretrained == "none":
        why = "teacher.pretrained is none; set it to auto to use torchvision's ImageNet VGG-19 when it is cached"
    else:
        why = ("torch's cache has no ImageNet VGG-19: `cdcompress weights download vgg19` fetches it for this teacher; "
               "the paper's WCT teacher with trained decoders, which `cdcompress demo` uses, comes from "
               "`cdcompress weights download wct-vgg19`")
    note = f"RANDOMLY INITIALISED {path} (scale-preserving random weights: {why})"
    return Teacher(encoder, None, note, randomly_initialised=True)


@torch.no_grad()
def scale_preserving_init(encoder: nn.Module) -> nn.Module:
    """He-normal conv weights and zero biases, so a random ReLU encoder keeps its input's scale.

    torch's default init shrinks the signal ~2.4x per conv + ReLU while its biases do not shrink: by
    relu3_1 the features are mostly bias and a decoder cannot recover the image (13 dB). With this init
    random features stay invertible, which is all a stand-in teacher has to offer."""
    for module in encoder.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                module.bias.zero_()
    return encoder


@TEACHER_SOURCES.register("import")
def imported(path: str, level: int, **kwargs: Any) -> Teacher:
    """``package.module:callable`` named by the recipe author; called with ``level`` if it takes one."""
    factory = import_callable(path)
    built = factory(**accepted(factory, {"level": level}), **kwargs)
    return as_teacher(built, f"imported from {path}")
