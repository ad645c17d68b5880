"""Keep freed memory in the process instead of handing it back to the kernel.

Why: every map snapshot at 2048^2 allocates ~20 arrays of 32 MB and every batch of frames
~256 MB. glibc serves blocks that large with mmap and returns them with munmap when freed,
so the next snapshot touches fresh pages again. On this project's VMs a page the process
has not touched recently costs a host-side fault: measured 2.4 s of system time to fill
20 new 32 MB arrays the first time, ~0.1 s for pages the kernel recycled, and 0.004 s when
the process reuses its own freed blocks (bench/RESULTS.md notes). With the settings below,
large blocks come from the one main heap and freed ones are reused; the cost is that the
resident size stays at its peak, which is what the memory budget is about anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

_done = False


def keep_freed_memory() -> bool:
    """Tune glibc's malloc once per process: no mmap for large blocks (up to glibc's own
    limit), never trim the heap, one arena for all threads (so that a block freed by one
    thread is reused by another). Returns False where this is not glibc (nothing done)."""
    global _done
    if _done:
        return True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        logger.debug("not glibc: freed memory goes back to the system as usual")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = all((
        mallopt(_M_ARENA_MAX, 1),
        mallopt(_M_TRIM_THRESHOLD, 2**31 - 1),
        # glibc refuses values above its maximum (32 MB on 64-bit, or HEAP_MAX/2): try the
        # largest first
        mallopt(_M_MMAP_THRESHOLD, 2**30) or mallopt(_M_MMAP_THRESHOLD, 32 * 2**20),
    ))
    _done = ok
    return ok
