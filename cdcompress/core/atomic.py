"""Outputs appear whole or not at all: a crash at any instant leaves the previous output or the new one, complete.

One mechanism for every output (model directories, bundles, checkpoints, reports, images). New content is
written to a hidden sibling named ``.{name}.cdc-{kind}-{pid}-{token}{suffix}``, fsynced, then moved into place:

* files: ``os.replace`` (atomic on POSIX), then the parent directory is fsynced so the rename is durable;
* directories: on Linux ``renameat2(RENAME_EXCHANGE)`` swaps staging and output in one step and the swapped-out
  old copy is deleted afterwards. Where the kernel or file system cannot exchange, the old output is renamed
  aside first; a crash between that rename and the next leaves only the aside, which :func:`recover` (called by
  the loaders and by the next write) renames back.

The writer's PID in the sibling's name tells a crashed write's leftovers (writer gone) from a running one's; the
next write of the same output deletes the former, so repeated crashes do not fill the disk.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_MARK = ".cdc-"
_KINDS = ("stage", "aside", "tmp")
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
#: errnos meaning "this kernel / file system cannot exchange": fall back to rename-aside.
_NO_EXCHANGE = {errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV}
#: How long a reader waits for a live writer (fallback path) to move its new output in.
RECOVER_WAIT_S = 2.0


@contextmanager
def staged_directory(path: Path) -> Iterator[Path]:
    """Yield an empty hidden sibling folder to fill; on success it replaces ``path``, on any failure it is
    deleted and ``path`` is left as it was. The result has the permissions a plain ``mkdir`` gives."""
    path.parent.mkdir(parents=True, exist_ok=True)
    recover(path)
    remove_stale(path)
    staging = _sibling(path, "stage")
    staging.mkdir()
    try:
        yield staging
        _fsync_tree(staging)
        _swap_in(staging, path)
    except BaseException:
        _remove(staging)
        raise


@contextmanager
def staged_file(path: Path) -> Iterator[Path]:
    """Yield a hidden sibling to write; on success it is fsynced and replaces ``path`` in one rename, on any
    failure it is deleted (the folder is created if needed). The name is unique per write, so concurrent
    writers never share it, and keeps ``path``'s suffix, so writers that choose a format by suffix (Pillow) do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    staging = _sibling(path, "tmp")
    try:
        yield staging
        _fsync_path(staging)
        os.replace(staging, path)
        _fsync_path(path.parent)
    finally:
        staging.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """Write then rename, so a reader never sees half the text (nor an emptied file, after a crash)."""
    with staged_file(path) as staging:
        staging.write_text(text)


def write_json(path: Path, data: Any) -> None:
    """Write then rename, so a reader never sees half a document."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def save_torch(obj: object, path: Path) -> None:
    """``torch.save`` through :func:`staged_file`: a crash never leaves a half-written checkpoint."""
    import torch

    with staged_file(path) as staging, open(staging, "wb") as fh:
        torch.save(obj, fh)


def recover(path: Path, wait_s: float = RECOVER_WAIT_S) -> None:
    """If ``path`` is missing because a rename-aside write crashed mid-swap, rename the old output back.

    An aside whose writer still runs is mid-swap: wait up to ``wait_s`` for its new output to appear."""
    deadline = time.monotonic() + wait_s
    while not os.path.lexists(path):
        asides = [s for s in _siblings(path) if s.kind == "aside"]
        if not asides:
            return
        crashed = [s.path for s in asides if not _alive(s.pid)]
        if crashed:
            _restore(max(crashed, key=_ctime), path)
            return
        if time.monotonic() > deadline:
            return
        time.sleep(0.01)


def remove_stale(path: Path) -> None:
    """Delete the hidden siblings of ``path`` that crashed writers left (their PID no longer exists).

    An aside is kept while ``path`` is missing: it is the only copy (see :func:`recover`)."""
    exists = os.path.lexists(path)
    for sibling in _siblings(path):
        if not _alive(sibling.pid) and (exists or sibling.kind != "aside"):
            log.info("removing %s, left by a crashed write", sibling.path)
            _remove(sibling.path)


@dataclass(frozen=True)
class _Sibling:
    path: Path
    kind: str
    pid: int


def _sibling(path: Path, kind: str) -> Path:
    """A fresh hidden name next to ``path``: the kind and writer's PID for cleanup, a token for uniqueness."""
    return path.with_name(f".{path.name}{_MARK}{kind}-{os.getpid()}-{secrets.token_hex(6)}{path.suffix}")


def _siblings(path: Path) -> list[_Sibling]:
    """The hidden siblings that writes of ``path`` create, parsed from their names."""
    prefix = f".{path.name}{_MARK}"
    try:
        names = [n for n in os.listdir(path.parent) if n.startswith(prefix)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for name in names:
        rest = name[len(prefix):]
        if path.suffix and rest.endswith(path.suffix):
            rest = rest[: -len(path.suffix)]
        fields = rest.split("-")
        if len(fields) == 3 and fields[0] in _KINDS and fields[1].isdigit():
            found.append(_Sibling(path.parent / name, fields[0], int(fields[1])))
    return found


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists; unknown (not POSIX) counts as alive, so nothing is deleted."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _swap_in(staging: Path, path: Path) -> None:
    """Put ``staging`` at ``path``; ``path`` holds the complete old or new output at every instant in between."""
    if not os.path.lexists(path):
        os.rename(staging, path)
        _fsync_path(path.parent)
    elif _exchange(staging, path):
        _fsync_path(path.parent)  # the swap is durable before the old copy goes
        _remove(staging)  # now the old output
    else:
        aside = _sibling(path, "aside")
        os.rename(path, aside)
        try:
            os.rename(staging, path)  # a crash before this leaves only the aside: recover() restores it
        except BaseException:
            _restore(aside, path)
            raise
        _fsync_path(path.parent)
        _remove(aside)


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` atomically (Linux ``renameat2``); False where this system cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _NO_EXCHANGE:
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


@functools.cache
def _renameat2() -> Any | None:
    """The C library's ``renameat2`` (glibc >= 2.28), or None where there is none."""
    if os.name != "posix":
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None


def _restore(aside: Path, path: Path) -> None:
    """Rename a crashed write's aside back to ``path``, unless another process got there first."""
    try:
        os.rename(aside, path)
    except (FileNotFoundError, FileExistsError):
        return
    except OSError as exc:
        if exc.errno != errno.ENOTEMPTY:
            raise
        return
    _fsync_path(path.parent)
    log.warning("restored %s from %s, left by an interrupted write", path, aside.name)


def _fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (the writers closed them without syncing)."""
    for folder, _dirs, files in os.walk(root):
        for name in files:
            if not os.path.islink(os.path.join(folder, name)):
                _fsync_path(Path(folder) / name)
        _fsync_path(Path(folder))


def _fsync_path(path: Path) -> None:
    """fsync one file or directory by path; directories only where the OS can open them (POSIX)."""
    flags = os.O_RDONLY
    if path.is_dir():
        if not hasattr(os, "O_DIRECTORY"):
            return
        flags |= os.O_DIRECTORY
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ctime(path: Path) -> float:
    """When ``path`` was last renamed (its status change time); 0 if it has gone meanwhile."""
    try:
        return path.lstat().st_ctime
    except FileNotFoundError:
        return 0.0


def _remove(path: Path) -> None:
    """Delete a file, link or folder tree, whichever ``path`` is; missing is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
