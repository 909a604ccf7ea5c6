"""Keep freed host memory for reuse while training on a CPU (Linux with glibc).

glibc's malloc serves every block above its mmap threshold (at most 32 MiB, however it adapts)
with a fresh `mmap` and returns it to the kernel on `free`. A training step allocates and frees
the same large activations every iteration, so each one is page-faulted and zero-filled again:
at batch 128 the self-teacher's full-resolution maps of CIFAR ResNet-18 are 64 MiB each, and the
faults cost about a quarter of an `ama` step on a 2-core machine. Serving every block from the
heap and never trimming it lets the second step onwards reuse the first step's pages, which is
what jemalloc or tcmalloc would do, without preloading a library.

`reuse_freed_memory()` switches this on for the duration of a `with` block, then returns the
unused memory to the kernel (`malloc_trim`) and restores thresholds close to glibc's adapted
defaults. Elsewhere (macOS, Windows, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

# mallopt parameters, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4

_MIB = 1 << 20
# What glibc's dynamic thresholds settle at after large blocks have come and gone.
_RESTORE = ((M_MMAP_MAX, 65536), (M_MMAP_THRESHOLD, 32 * _MIB), (M_TRIM_THRESHOLD, 64 * _MIB))
# A trim threshold of -1 turns trimming off: the free top of the heap is never given back.
_REUSE = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):
        return None


def _apply(libc: ctypes.CDLL, settings: tuple[tuple[int, int], ...]) -> bool:
    return all(libc.mallopt(param, value) == 1 for param, value in settings)


@contextmanager
def reuse_freed_memory(enabled: bool = True) -> Iterator[bool]:
    """Serve large blocks from a heap that is never trimmed inside the block; yields if it is on."""
    libc = _glibc() if enabled else None
    if libc is None or not _apply(libc, _REUSE):
        yield False
        return
    log.debug("host memory: large blocks reused from the heap while training")
    try:
        yield True
    finally:
        _apply(libc, _RESTORE)
        libc.malloc_trim(0)
