"""Evaluation defaults shared by ``evaluate.py`` and the ``eval`` command's help (no torch here, so help is instant)."""

from __future__ import annotations

#: Crop inputs to multiples of the deepest VGG stride so every level sees the same pixels.
DEFAULT_CROP_MULTIPLE = 16
#: Images are downscaled so their long side is at most this (stylization cost grows with pixels).
DEFAULT_STYLE_MAX_SIDE = 512
