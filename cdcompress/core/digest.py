"""File digests: the SHA-256 that model directories, bundles and downloads are checked by, and git's blob id.

One streaming reader serves both, so no file is ever read whole into memory to be hashed."""

from __future__ import annotations

import hashlib
from pathlib import Path

_BLOCK = 1 << 20


def _stream(digest: hashlib._Hash, path: str | Path) -> str:
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return _stream(hashlib.sha256(), path)


def git_blob_id(path: str | Path) -> str:
    """What git calls the file: sha1(b"blob <size>\\0" + content), the id a commit pins it by."""
    return _stream(hashlib.sha1(f"blob {Path(path).stat().st_size}\0".encode()), path)
