"""Architectures, the native model format and converters from external weights (loaded on first use)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.lazy import lazy_exports

_EXPORTS = {
    "CDModel": ".format", "load": ".format", "save": ".format", "save_pair": ".format",
    "convert_cd_release": ".converters", "convert_torchvision": ".converters",
    "student_architecture": ".converters", "teacher_architecture": ".converters",
    "VGG19_WIDTHS": ".vgg", "VGGDecoder": ".vgg", "VGGEncoder": ".vgg", "VGGSpec": ".vgg", "conv_names": ".vgg",
    "fused_inference": ".vgg", "level_taps": ".vgg",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, ("unet", "resae"))
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # what static checkers see; at run time the names load on first use
    from .converters import convert_cd_release as convert_cd_release
    from .converters import convert_torchvision as convert_torchvision
    from .converters import student_architecture as student_architecture
    from .converters import teacher_architecture as teacher_architecture
    from .format import CDModel as CDModel
    from .format import load as load
    from .format import save as save
    from .format import save_pair as save_pair
    from .vgg import VGG19_WIDTHS as VGG19_WIDTHS
    from .vgg import VGGDecoder as VGGDecoder
    from .vgg import VGGEncoder as VGGEncoder
    from .vgg import VGGSpec as VGGSpec
    from .vgg import conv_names as conv_names
    from .vgg import fused_inference as fused_inference
    from .vgg import level_taps as level_taps
