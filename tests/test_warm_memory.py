"""The warm pool: freed large numpy buffers reused by size, per thread, under a cap."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from dfxm_online.online import warm_memory

MB = 1 << 20


def in_thread(work):
    """Run `work` in a new thread (whose numpy handler starts as the default) and return
    its result: the pool is installed there, never in the test runner's own thread."""
    out: dict = {}

    def run() -> None:
        try:
            out["value"] = work()
        except BaseException as exc:  # re-raised below, in the test's thread
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


@pytest.fixture
def cap():
    """Set the process-wide cap for a test, on an empty pool, and put the previous one back
    (emptying the pool)."""
    before = warm_memory.stats()
    warm_memory.set_cap(0)  # empty: blocks that other tests' daemons pooled are not this test's
    yield warm_memory.set_cap
    warm_memory.set_cap(0)
    warm_memory.set_cap(before.cap_bytes, before.rss_limit_bytes)


def test_a_freed_buffer_is_reused_for_the_same_size_and_zeroed_for_zeros(cap):
    cap(64 * MB)

    def work():
        warm_memory.install()
        handler = np._core.multiarray.get_handler_name()
        a = np.full(MB // 4, 7.0)  # 2 MiB
        address = a.ctypes.data
        del a
        before = warm_memory.stats()
        b = np.zeros(MB // 4)  # the same 2 MiB, through calloc: must not show the 7s
        reused = b.ctypes.data == address
        after = warm_memory.stats()
        small = np.ones(1000)  # below 1 MiB: never pooled
        small_address = small.ctypes.data
        del small
        return handler, reused, bool((b == 0).all()), before, after, small_address

    handler, reused, zeroed, before, after, _ = in_thread(work)
    assert handler == "dfxm_warm_pool"
    assert reused and zeroed
    assert before.pooled_bytes >= 2 * MB and after.hits == before.hits + 1
    assert after.pooled_bytes == before.pooled_bytes - 2 * MB
    # only the thread that installed it allocates from the pool
    assert in_thread(np._core.multiarray.get_handler_name) == "default_allocator"


def test_the_cap_bounds_what_is_kept_oldest_first(cap):
    cap(5 * MB)

    def work():
        warm_memory.install()
        arrays = [np.empty(MB // 8 * (k + 1)) for k in range(3)]  # 1, 2 and 3 MiB
        addresses = [a.ctypes.data for a in arrays]
        for k in range(3):
            arrays[k] = None  # freed in order: 1, 2, then 3 MiB
        held = warm_memory.stats()
        again = [np.empty(MB // 8 * (k + 1)) for k in range(3)]  # kept: no frees in between
        return addresses, held, [a.ctypes.data for a in again]

    addresses, held, again = in_thread(work)
    # 1 + 2 + 3 MiB > 5 MiB: the 1 MiB block, freed first, went back to the system
    assert held.pooled_bytes == 5 * MB and held.blocks == 2
    assert again[1:] == addresses[1:]
    cap(0)
    assert warm_memory.stats().pooled_bytes == 0


def test_above_the_rss_limit_nothing_is_kept_and_pooled_blocks_go_back_first(cap):
    import psutil

    cap(64 * MB)

    def work():
        warm_memory.install()
        kept = [np.ones(MB // 4 * (k + 1)) for k in range(3)]  # 2, 4 and 6 MiB, touched
        kept = None  # noqa: F841 - freed: pooled, 12 MiB
        pooled = warm_memory.stats()
        rss = psutil.Process().memory_info().rss
        # a limit the process stays above even without the pool: all of it goes back at once
        cap(64 * MB, rss - 32 * MB)
        emptied = warm_memory.stats()
        a = np.ones(MB // 4)
        del a  # freed above the limit: not kept
        after_free = warm_memory.stats()
        # a limit with room: blocks are kept again, and a miss that would cross the limit
        # gives pooled blocks back before the process grows
        cap(64 * MB, psutil.Process().memory_info().rss + 5 * MB)
        b = [np.ones(MB // 8) for _ in range(3)]  # 3 x 1 MiB
        b = None  # noqa: F841
        refilled = warm_memory.stats()
        c = np.ones(MB)  # 8 MiB new: over the limit with the 3 MiB pooled
        evicted = warm_memory.stats()
        del c
        return pooled, emptied, after_free, refilled, evicted

    pooled, emptied, after_free, refilled, evicted = in_thread(work)
    assert pooled.pooled_bytes == 12 * MB
    assert emptied.pooled_bytes == 0
    assert after_free.pooled_bytes == 0
    assert refilled.pooled_bytes == 3 * MB
    assert evicted.pooled_bytes < 3 * MB


def test_make_room_gives_pooled_blocks_back_for_memory_about_to_be_faulted_in(cap):
    import psutil

    cap(64 * MB)

    def work():
        warm_memory.install()
        kept = [np.ones(MB // 8) for _ in range(4)]  # 4 x 1 MiB, touched
        kept = None  # noqa: F841 - pooled
        cap(64 * MB, psutil.Process().memory_info().rss + 24 * MB)
        warm_memory.make_room(4 * MB)  # within the limit: nothing to give back
        within = warm_memory.stats()
        warm_memory.make_room(64 * MB)  # 64 MiB more would cross it: the pool goes first
        crossing = warm_memory.stats()
        return within, crossing

    within, crossing = in_thread(work)
    assert within.pooled_bytes == 4 * MB
    assert crossing.pooled_bytes == 0
    with pytest.raises(ValueError, match=">= 0"):
        warm_memory.make_room(-1)


def test_a_negative_cap_or_limit_is_refused():
    with pytest.raises(ValueError, match=">= 0"):
        warm_memory.set_cap(-1)
    with pytest.raises(ValueError, match=">= 0"):
        warm_memory.set_cap(0, -1)


def _resident_pages(array: np.ndarray) -> int:
    """Pages of `array` in memory (mincore(2))."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    start = array.ctypes.data - array.ctypes.data % mmap.PAGESIZE
    length = array.ctypes.data + array.nbytes - start
    pages = (length + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vec = (ctypes.c_ubyte * pages)()
    assert libc.mincore(ctypes.c_void_p(start), ctypes.c_size_t(length), vec) == 0, ctypes.get_errno()
    return sum(v & 1 for v in vec)


def test_populate_faults_pages_in_and_leaves_values_alone():
    fresh = np.zeros(64 << 17)  # 64 MB of untouched zero pages
    before = _resident_pages(fresh)
    assert warm_memory.populate(fresh)
    assert _resident_pages(fresh) >= fresh.nbytes // 4096 > before
    assert not fresh.any()
    values = np.arange(3 << 17, dtype=np.float64)
    view = values[1001:-7]  # not page-aligned at either end
    assert warm_memory.populate(view)
    np.testing.assert_array_equal(values, np.arange(3 << 17, dtype=np.float64))
    assert warm_memory.populate(np.empty(0))


def test_a_pipeline_populates_its_accumulators_in_the_background():
    from dfxm_online.acquisition.geometry import MotorAxis, ScanGeometry
    from dfxm_online.online.pipeline import ScanPipeline

    axes = (MotorAxis("mu", -1.0, 1.0, 4), MotorAxis("chi", -1.0, 1.0, 3))
    pipeline = ScanPipeline(ScanGeometry(axes, 12, "det"), (512, 512))
    arrays = pipeline.state_arrays()
    assert any(a is pipeline.moments.sums for a in arrays) and any(a is pipeline.edges.sums for a in arrays)
    assert sum(a.nbytes for a in arrays) >= (15 + 8) * 512 * 512 * 8  # 15 power sums, 2x4 edge rows
    before = [a.copy() for a in arrays]  # zeros, and -inf for the running maximum
    pipeline.populate_in_background().join()
    for array, values in zip(arrays, before):
        assert _resident_pages(array) >= array.nbytes // 4096
        np.testing.assert_array_equal(array, values)
