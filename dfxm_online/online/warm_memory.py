"""Warm memory for large numpy arrays: freed buffers kept and reused by size.

A live publish at 2048^2 allocates and frees ~0.6 GB of arrays every period (maps,
projections, colours, float32 copies for the file). glibc returns every block over 32 MB to
the kernel on free, so each period starts on fresh pages; on the VMs measured here a fresh
page costs a host-side fault once freed memory has been reclaimed (~1 s after the free). A
2048^2 snapshot + maps file, 2 s apart (medians of 5, same process, alternating): 0.92 s +
1.13 s on fresh memory, 0.52 s + 0.40 s with this pool. The pool (the compiled numpy memory
handler `_warmpool`) keeps freed buffers of >= 1 MiB up to a cap and hands them back for
allocations of the same size, which is what a periodic publish makes.

The handler is per thread (numpy keeps it in a context variable): `install()` in each
thread whose arrays should come from the pool. The cap is process-wide and bounds the
memory held while idle; memory in use is not counted. The RSS limit bounds what pooling
can add to the process: above it, freed blocks are not kept, and pooled ones go back to
the system before the process grows (a daemon that had kept a previous scan's buffers
reached 2.2-2.4 GB on a live 2048^2 Lima scan without it).
"""

from __future__ import annotations

import ctypes
import logging
import mmap
from dataclasses import dataclass

import numpy as np

from . import _warmpool

logger = logging.getLogger(__name__)

#: madvise(2) advice that faults pages in writable without changing them (Linux >= 5.14)
MADV_POPULATE_WRITE = 23
#: bytes faulted in per madvise call (a multiple of the huge page size)
POPULATE_CHUNK = 16 << 20
_libc: ctypes.CDLL | None = None


@dataclass(frozen=True)
class PoolStats:
    """The pool's state: bytes and blocks held for reuse, the cap, and how many large
    allocations were served from it (hits) or not (misses) since the process started."""

    pooled_bytes: int
    blocks: int
    cap_bytes: int
    hits: int
    misses: int
    rss_limit_bytes: int


def set_cap(nbytes: int, rss_limit: int = 0) -> None:
    """Bytes the pool may hold for reuse (0: none, every free goes back to the system),
    and the process's resident bytes above which it holds none (0: no limit)."""
    _warmpool.set_cap(int(nbytes), int(rss_limit))


def install() -> None:
    """From now on, numpy arrays allocated in the calling thread come from the pool."""
    _warmpool.install()


def make_room(nbytes: int) -> None:
    """Give pooled blocks back until `nbytes` more resident memory stays within the RSS
    limit: for memory made resident without an allocation the pool sees (`populate`)."""
    _warmpool.make_room(int(nbytes))


def stats() -> PoolStats:
    return PoolStats(*_warmpool.stats())


def populate(array: np.ndarray) -> bool:
    """Fault `array`'s pages in now (writable), without touching its values.

    Why: a new scan's accumulators (~0.8 GB at 2048^2, two motors) are zero pages until
    written, and on the VMs measured here the first write to each costs a host-side fault:
    the first update of a new pipeline took 1.26 s against 0.13 s for the next ones. Run on
    another thread (ctypes releases the GIL) while the first frames are read, this moves
    that cost off the worker; as the values are left alone, it is safe while the worker
    already writes the same pages. Returns False where the kernel cannot (the pages then
    fault on first use, as before).
    """
    global _libc
    if array.nbytes == 0:
        return True
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    start = array.ctypes.data
    first = start - start % mmap.PAGESIZE  # madvise wants a page-aligned start
    end = start + array.nbytes
    # in chunks: the call holds the process's memory-map lock, and another thread that
    # maps memory meanwhile (a new batch buffer, the first snapshot) waits for it; in one
    # call over a 2048^2 pipeline that wait was the whole ~1.1 s
    for chunk in range(first, end, POPULATE_CHUNK):
        length = min(POPULATE_CHUNK, end - chunk)
        if _libc.madvise(ctypes.c_void_p(chunk), ctypes.c_size_t(length), MADV_POPULATE_WRITE) != 0:
            logger.debug("madvise(MADV_POPULATE_WRITE) failed: errno %d", ctypes.get_errno())
            return False
    return True
