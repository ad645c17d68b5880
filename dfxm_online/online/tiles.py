"""Pixel tiles spread over a small thread pool: per-pixel accumulators use both cores.

Accumulator updates are independent per pixel, and numpy releases the GIL in the heavy
parts (type conversion, matrix products, reductions), so splitting the pixels into tiles
and running the tiles on threads scales with the cores. Tiles of 16k pixels keep a batch's
converted tile in cache (see PowerSums).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from threadpoolctl import ThreadpoolController

TILE_PIXELS = 16384
#: pixels per call of the compiled per-pixel snapshot loops (large: they stream, no reuse)
SNAPSHOT_PIXELS = 262144

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_blas: ThreadpoolController | None = None
_local = threading.local()  # this thread's cap on its tile threads (`fewer_threads`)


def _pool_threads() -> int:
    """The pool's threads: DFXM_THREADS, else the number of cores."""
    return max(1, int(os.environ.get("DFXM_THREADS", os.cpu_count() or 1)))


def n_threads() -> int:
    """Threads for tile work: DFXM_THREADS, else the number of cores; in a thread inside
    `fewer_threads`, that many fewer (at least one)."""
    return max(1, _pool_threads() - getattr(_local, "fewer", 0))


@contextmanager
def fewer_threads(count: int = 1) -> Iterator[None]:
    """Tile work started from this thread, inside the block, uses `count` fewer threads than
    `n_threads()` (at least one): the daemon's full-resolution updates leave a core to the
    live preview, its reads and its file (on 2 cores a new scan's first full-resolution
    update took both for 2.3 s while the frames' reads waited)."""
    before = getattr(_local, "fewer", 0)
    _local.fewer = before + count
    try:
        yield
    finally:
        _local.fewer = before


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(_pool_threads(), thread_name_prefix="dfxm-tile")
        return _pool


def for_each_tile(n_pixels: int, work: Callable[[int, int], None], tile: int = TILE_PIXELS) -> None:
    """Call `work(start, stop)` on every pixel tile; tiles are shared out among the threads.

    The calling thread works the tiles itself, and the pool's threads help when they are
    free: each thread takes the next tile not yet taken (in order), so a thread whose tiles
    are cheap takes more of them. Why the caller works: the pool is shared by the daemon's
    threads, and a caller that only waited for it queued behind another's work: the live
    preview's binning of one frame (16 tiles, ~3 ms) waited ~0.6 s behind the full-resolution
    update running on the pool from another thread. Why not a fixed share: the fits' tiles of
    1024 pixels are half a 2048-pixel row, and with every other tile to each thread one
    thread got every tile of a crystal covering half of each row and the other only empty
    ones (the 962-frame 2048^2 mesh's fits ran on one core). The call returns when all tiles
    are done and re-raises the first error (the other threads stop taking tiles).
    """
    starts = range(0, n_pixels, tile)
    threads = min(n_threads(), len(starts))
    if threads <= 1:
        for start in starts:
            work(start, min(start + tile, n_pixels))
        return
    tickets = iter(starts)
    taking = threading.Lock()
    failed = threading.Event()

    def run() -> None:
        while not failed.is_set():
            with taking:
                start = next(tickets, None)
            if start is None:
                return
            try:
                work(start, min(start + tile, n_pixels))
            except BaseException:
                failed.set()
                raise

    # one BLAS thread per tile thread: OpenBLAS's own threads on top of ours oversubscribe
    # the cores and spin-wait on every small per-tile product
    with _blas_controller().limit(limits=1, user_api="blas"):
        helpers = [_executor().submit(run) for _ in range(threads - 1)]
        try:
            run()
        finally:
            for helper in helpers:
                helper.cancel()  # not started yet: the tiles are all taken
            for helper in helpers:
                if not helper.cancelled():
                    helper.result()


def _blas_controller() -> ThreadpoolController:
    global _blas
    with _lock:
        if _blas is None:
            _blas = ThreadpoolController()  # scans the loaded libraries once
        return _blas
