"""Host memory: keep freed buffers in the process instead of returning them to the OS.

XLA:CPU allocates a program's temporary buffers (a recurrence's per-step residuals, its
gradients) afresh on every call, with ``malloc``. glibc's ``malloc`` serves a block of more than
32 MiB (and smaller ones until a free of that size raises its threshold), and on a thread
other than the main one any block beyond its arena's 64 MiB heap, with a fresh ``mmap``, and
unmaps it when it is freed: every call faults those pages in again and the kernel zero-fills
them. For the LSTM gradient at B=32, T=128, H=256 that is ~13,600 page faults (~53 MiB) per
call.
``python -m benchmarks.page_faults`` measures what keeping them buys.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_INT_MAX = 2**31 - 1

_applied = False


def keep_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep freed memory for reuse, for the rest of the process.

    Sets ``M_MMAP_MAX = 0`` (every block comes from the heap, none from its own ``mmap``) and
    ``M_TRIM_THRESHOLD`` to its maximum (the heap is not shrunk), the same as starting Python
    with ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647``. Repeated calls of a
    jitted function then reuse the same memory instead of faulting fresh pages in: faster on
    CPU for any program with large buffers (every library in the process gains, PyTorch too).
    The price: the process's resident memory stays at its peak until it exits.

    Returns whether it applied: ``False`` where ``malloc`` is not glibc's (macOS, Windows,
    musl); calling it again is harmless. Call it early, before the large allocations.
    """
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        gnu_get_libc_version = libc.gnu_get_libc_version  # glibc only
    except (OSError, AttributeError):
        return False
    del gnu_get_libc_version
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _INT_MAX))
    _applied = all([mallopt(option, value) for option, value in settings])
    return _applied
