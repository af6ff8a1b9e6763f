"""Held-out images that are held out by content, not only by name.

A photo saved again under another name or in another lossless format is still a training photo: a held-out score
on it measures memory, not generalisation. :func:`content_digest` hashes the decoded pixels (8-bit RGB after EXIF
rotation, with the shape), and :func:`check_disjoint` refuses held-out images whose content a training image has.
Only training images of the same decoded size are decoded, so a large training folder costs a header read each.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..core.errors import CDCompressError, ImageError
from .images import image_size, load_image, to_uint8


class HeldOutLeakError(CDCompressError):
    """A held-out image whose decoded pixels equal a training image's."""


def array_digest(array: np.ndarray) -> str:
    """sha256 of an ``HxWx3`` uint8 array and its shape."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    digest = hashlib.sha256(repr(array.shape).encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def content_digest(path: str | Path) -> str:
    """sha256 of ``path``'s decoded content (8-bit RGB after EXIF rotation, and its shape), whatever its name or
    lossless format."""
    return array_digest(to_uint8(load_image(path)))


def _size(path: Path) -> tuple[int, int] | None:
    """The decoded size, or None for a file that does not decode (the sampler and the evaluation report those)."""
    try:
        return image_size(path)
    except ImageError:
        return None


def check_disjoint(train: Sequence[Path], held_out: Sequence[Path], what: str = "data.eval") -> None:
    """Raise :class:`HeldOutLeakError` naming both files when a held-out image has a training image's content."""
    held = {Path(p): size for p in held_out if (size := _size(Path(p))) is not None}
    sizes = set(held.values())
    candidates = {Path(p): size for p in train if sizes and (size := _size(Path(p))) in sizes}
    digests: dict[str, Path] = {}
    for path in candidates:
        try:
            digests.setdefault(content_digest(path), path)
        except ImageError:
            continue
    shared = set(candidates.values())
    for path, size in held.items():
        twin = digests.get(content_digest(path)) if size in shared else None
        if twin is not None:
            raise HeldOutLeakError(
                f"held-out image {path} ({what}) has the same pixels as training image {twin}; "
                "drop it from the held-out set or from the training data")


__all__ = ["HeldOutLeakError", "array_digest", "check_disjoint", "content_digest"]
