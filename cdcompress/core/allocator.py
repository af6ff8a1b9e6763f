"""Keep freed activation memory in the process while an untiled CPU stylization runs (glibc only).

glibc hands every block above its mmap threshold (at most 32 MiB by default) straight back to the
kernel when it is freed, so each new activation of a large image is fresh memory that the kernel
must fault in and zero page by page. An untiled WCT cascade allocates and frees hundreds of such
tensors: on a 2-core machine this cost the 16x student about 25-40% of its time at 2048² (and the
teacher as much). Raising the mmap and trim thresholds lets those blocks be reused.

The price is fragmentation: freed blocks stay resident, which raised the peak of a tiled run
from 1.3 to 2.2 GiB against a 1.5 GiB budget. So this is scoped: on for the untiled computation
only (whose memory estimate has more than that margin) and for CPU training stages (the same shapes every
step, so nothing fragments), restored and trimmed afterwards.
``CDCOMPRESS_RETAIN_HEAP=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

#: mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: While retained: blocks up to 1 GiB come from the reusable heap, and the heap is never trimmed.
RETAINED_MMAP_THRESHOLD = 1 << 30
RETAINED_TRIM_THRESHOLD = (1 << 31) - 1
#: Restored afterwards: where glibc's *dynamic* thresholds settle in a process that frees large tensors (the mmap
#: threshold rises to its 32 MiB ceiling on 64-bit, the trim threshold to twice that). glibc cannot be told to
#: resume adjusting them once mallopt has set them, and its 128 KiB starting value, fixed for the rest of the
#: process, made every later 1-16 MiB allocation fault in fresh pages: 269k page faults and 0.33 s for 150 of them,
#: against none at these values or in a process that never called mallopt (measured 2026-12-01).
RESTORED_MMAP_THRESHOLD = 32 << 20
RESTORED_TRIM_THRESHOLD = 64 << 20
ENV_SWITCH = "CDCOMPRESS_RETAIN_HEAP"


@cache
def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _set(libc: ctypes.CDLL, mmap_threshold: int, trim_threshold: int) -> bool:
    return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(libc.mallopt(M_TRIM_THRESHOLD, trim_threshold))


def retain_supported() -> bool:
    """Whether :func:`retained_heap` changes anything here (glibc, not switched off)."""
    return os.environ.get(ENV_SWITCH, "1") != "0" and _glibc() is not None


@contextmanager
def retained_heap() -> Iterator[bool]:
    """Within the block freed large blocks are reused instead of unmapped; yields whether that applies.

    On leaving, the retained memory is returned to the system and the thresholds are set to where
    glibc's own dynamic adjustment settles (see :data:`RESTORED_MMAP_THRESHOLD`): blocks above 32 MiB
    are unmapped on free again, smaller ones are reused as glibc would have.
    """
    libc = _glibc() if retain_supported() else None
    applied = libc is not None and _set(libc, RETAINED_MMAP_THRESHOLD, RETAINED_TRIM_THRESHOLD)
    try:
        yield applied
    finally:
        if applied and libc is not None:
            _set(libc, RESTORED_MMAP_THRESHOLD, RESTORED_TRIM_THRESHOLD)
            libc.malloc_trim(0)
