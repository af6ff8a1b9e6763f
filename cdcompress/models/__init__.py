"""Architectures, the native model format and converters from external weights."""

from . import unet as unet  # registers the built-in unet-encoder / unet-decoder architectures
from .converters import convert_cd_release, convert_torchvision, student_architecture, teacher_architecture
from .format import CDModel, load, save, save_pair
from .vgg import VGG19_WIDTHS, VGGDecoder, VGGEncoder, VGGSpec, conv_names, fused_inference, level_taps

__all__ = [
    "CDModel",
    "VGG19_WIDTHS",
    "VGGDecoder",
    "VGGEncoder",
    "VGGSpec",
    "conv_names",
    "convert_cd_release",
    "convert_torchvision",
    "fused_inference",
    "level_taps",
    "load",
    "save",
    "save_pair",
    "student_architecture",
    "teacher_architecture",
]
