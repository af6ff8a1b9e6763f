"""Outputs appear whole or not at all: a crash mid-write must never leave a half model or bundle."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def staged_directory(path: Path) -> Iterator[Path]:
    """Yield a sibling staging folder; on success it replaces ``path`` (renamed in one step), on any
    failure it is deleted and ``path`` is left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield staging
        _make_readable(staging)
        if path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextmanager
def staged_file(path: Path) -> Iterator[Path]:
    """Yield a hidden sibling to write; on success it replaces ``path`` in one rename, on any failure it is
    deleted (the folder is created if needed). The sibling keeps ``path``'s suffix, so writers that choose a
    format by suffix (Pillow) still do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        yield staging
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


def write_json(path: Path, data: Any) -> None:
    """Write then rename, so a reader never sees half a document."""
    with staged_file(path) as staging:
        staging.write_text(json.dumps(data, indent=2) + "\n")


def _make_readable(directory: Path) -> None:
    """``mkdtemp`` creates 0700; give the result the permissions a plain ``mkdir`` would."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
