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

from dataclasses import dataclass

from . import _warmpool


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


def stats() -> PoolStats:
    return PoolStats(*_warmpool.stats())
