"""Resolve a model reference: a model directory, or a built-in (randomly initialised) architecture.

Built-ins need no weights, so ``cdcompress inspect vgg19`` works on a fresh machine:

* ``vgg19``: the VGG-19 teacher, one encoder to relu5_1 (serving levels 1..5) and five decoders;
* ``vgg19-x<ratio>`` (e.g. ``vgg19-x0.25``): per-level students at ``ratio`` of VGG-19's widths.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.errors import ModelFormatError

if TYPE_CHECKING:
    from .format import CDModel

_STUDENT = re.compile(r"^vgg19-x(0?\.\d+|1(\.0+)?)$")
BUILTIN_HELP = "built-ins: vgg19 (teacher), vgg19-x<ratio> (e.g. vgg19-x0.25, per-level students)"


def is_builtin(ref: str) -> bool:
    return ref == "vgg19" or bool(_STUDENT.match(ref))


def resolve_model(ref: str | Path, device: str = "cpu") -> tuple[CDModel, Path | None]:
    """Return the model and, for a directory, its path (for on-disk sizes)."""
    from .converters import student_architecture, teacher_architecture
    from .format import load

    path = Path(ref)
    if path.exists():
        return load(path, device=device), path
    ref = str(ref)
    if ref == "vgg19":
        return teacher_architecture(levels=(1, 2, 3, 4, 5)).to(device).eval(), None
    match = _STUDENT.match(ref)
    if match:
        return student_architecture(float(match[1])).to(device).eval(), None
    raise ModelFormatError(f"{ref}: no such model directory or built-in architecture; {BUILTIN_HELP}")
