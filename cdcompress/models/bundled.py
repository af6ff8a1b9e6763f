"""Teachers that ship inside the package (``cdcompress/assets/<name>/``, native model directories).

Why: the offline demo must compress a *trained* teacher without any download. The bundled ones were made by
``cdcompress train-teacher`` (:mod:`cdcompress.tasks.teacher`); each ``model.json`` records the command's settings,
the training photos' content digests and the held-out PSNR per level measured on the stored weights.
"""

from __future__ import annotations

from pathlib import Path

from ..core.errors import ModelFormatError

ASSETS = Path(__file__).resolve().parent.parent / "assets"

#: name -> what it is (one line, shown by the demo and the errors)
BUNDLED_TEACHERS: dict[str, str] = {
    "offline-vgg19": "a VGG-19-topology autoencoder (levels 1-3, float16 weights) trained from scratch by "
                     "`cdcompress train-teacher` on scikit-image's photos: not the paper's teacher",
}


def bundled_teacher(name: str) -> Path:
    """The model directory of the bundled teacher ``name``."""
    if name not in BUNDLED_TEACHERS:
        raise ModelFormatError(f"no bundled teacher {name!r}; bundled: {', '.join(sorted(BUNDLED_TEACHERS))}")
    where = ASSETS / name
    if not (where / "model.json").is_file():
        raise ModelFormatError(f"bundled teacher {name} is missing from {where} (a broken install); reinstall "
                               "cdcompress, or rebuild it with `make offline-teacher`")
    return where


__all__ = ["ASSETS", "BUNDLED_TEACHERS", "bundled_teacher"]
