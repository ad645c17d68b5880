"""Pixel tiles spread over a small thread pool: per-pixel accumulators use both cores.

Accumulator updates are independent per pixel, and numpy releases the GIL in the heavy
parts (type conversion, matrix products, reductions), so splitting the pixels into tiles
and running the tiles on threads scales with the cores. Tiles of 16k pixels keep a batch's
converted tile in cache (see PowerSums).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from threadpoolctl import ThreadpoolController

TILE_PIXELS = 16384
#: pixels per call of the compiled per-pixel snapshot loops (large: they stream, no reuse)
SNAPSHOT_PIXELS = 262144

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_blas: ThreadpoolController | None = None


def n_threads() -> int:
    """Threads for tile work: DFXM_THREADS, else the number of cores."""
    return max(1, int(os.environ.get("DFXM_THREADS", os.cpu_count() or 1)))


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(n_threads(), thread_name_prefix="dfxm-tile")
        return _pool


def for_each_tile(n_pixels: int, work: Callable[[int, int], None], tile: int = TILE_PIXELS) -> None:
    """Call `work(start, stop)` on every pixel tile; tiles are shared out among the threads.

    Each thread takes every n-th tile (interleaved, so both halves of the frame are worked on
    at once); the call returns when all tiles are done and re-raises the first error.
    """
    starts = list(range(0, n_pixels, tile))
    threads = min(n_threads(), len(starts))

    def run(first: int) -> None:
        for start in starts[first::threads]:
            work(start, min(start + tile, n_pixels))

    if threads <= 1:
        run(0)
        return
    # one BLAS thread per tile thread: OpenBLAS's own threads on top of ours oversubscribe
    # the cores and spin-wait on every small per-tile product
    with _blas_controller().limit(limits=1, user_api="blas"):
        futures = [_executor().submit(run, i) for i in range(threads)]
        for future in futures:
            future.result()


def _blas_controller() -> ThreadpoolController:
    global _blas
    with _lock:
        if _blas is None:
            _blas = ThreadpoolController()  # scans the loaded libraries once
        return _blas
