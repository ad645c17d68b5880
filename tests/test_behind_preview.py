"""The full-resolution updates behind the live preview (`behind_preview`): in order, bounded
in bytes of frames waiting, failures raised on the worker's thread with their own type."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from dfxm_online.acquisition.geometry import ScanError
from dfxm_online.behind_preview import UpdatesBehindPreview


def test_updates_run_in_order_and_give_their_frames_back():
    updates = UpdatesBehindPreview(max_bytes=1 << 20)
    done: list[int] = []
    frames = [np.full(10, i, np.uint16) for i in range(20)]
    for i, f in enumerate(frames):
        updates.submit(lambda i=i: (time.sleep(0.001), done.append(i)), f)
    updates.flush()
    assert done == list(range(20))
    back = updates.finished()
    assert [int(f[0]) for f in back] == list(range(20))
    assert updates.finished() == []
    updates.close()


def test_frames_waiting_are_bounded_in_bytes():
    """A submit waits while the frames already waiting fill max_bytes (one batch larger than
    the bound still goes through alone)."""
    updates = UpdatesBehindPreview(max_bytes=3000)
    release = threading.Event()
    updates.submit(release.wait, np.zeros(1000, np.uint16))  # 2000 bytes, blocked
    submitted = threading.Event()

    def second() -> None:
        updates.submit(lambda: None, np.zeros(1000, np.uint16))  # 2000 more: over the bound
        submitted.set()

    thread = threading.Thread(target=second)
    thread.start()
    assert not submitted.wait(0.3)  # held back while the first batch waits
    release.set()
    assert submitted.wait(5)
    thread.join()
    updates.submit(lambda: None, np.zeros(10_000, np.uint16))  # larger than the bound, alone
    updates.flush()
    updates.close()


def test_a_failed_update_is_raised_with_its_type_and_the_rest_skipped():
    updates = UpdatesBehindPreview(max_bytes=1 << 20)
    ran: list[int] = []

    def bad() -> None:
        raise ScanError("frame 3 has shape (4, 4), expected (8, 8)")

    updates.submit(lambda: ran.append(1), np.zeros(4))
    updates.submit(bad, np.zeros(4))
    updates.submit(lambda: ran.append(3), np.zeros(4))
    with pytest.raises(ScanError, match="frame 3"):
        updates.flush()
    assert ran == [1]
    with pytest.raises(ScanError):
        updates.submit(lambda: ran.append(4), np.zeros(4))
    assert len(updates.finished()) == 3  # every buffer back, the skipped ones too
    updates.close()  # does not raise: the scan is over


def test_a_submit_waiting_for_room_when_an_update_fails_raises_and_flush_returns():
    """A submit held back by the bound when the update ahead of it fails raises that failure,
    and is not counted as waiting: flush and close return (the worker then fails the scan)."""
    updates = UpdatesBehindPreview(max_bytes=3000)
    go = threading.Event()

    def bad() -> None:
        go.wait(5)
        raise ScanError("data store unreachable")

    updates.submit(bad, np.zeros(1000, np.uint16))
    errors: list[BaseException] = []

    def second() -> None:
        try:
            updates.submit(lambda: None, np.zeros(1000, np.uint16))
        except ScanError as exc:
            errors.append(exc)

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.1)
    go.set()
    thread.join(5)
    assert not thread.is_alive() and len(errors) == 1
    done = threading.Thread(target=updates.flush, kwargs={"raise_error": False})
    done.start()
    done.join(5)
    assert not done.is_alive()
    updates.close()


def test_consecutive_batches_are_gathered_into_one_view_without_a_copy():
    """Batches that follow one another in one buffer become one update of at least the
    gather's size: one view of that buffer (no copy), their positions in order, and the
    batches themselves to give back to the frame source."""
    from dfxm_online.behind_preview import BatchGather

    buffer = np.arange(12 * 3 * 2, dtype=np.uint16).reshape(12, 3, 2)
    gather = BatchGather(5)
    assert gather.take() is None
    sizes, due, start = (2, 1, 3, 2, 1), [], 0
    for size in sizes:
        due += gather.add(buffer[start : start + size], {"mu": np.arange(start, start + size, dtype=float)},
                          buffer[start : start + size])
        start += size
    assert len(due) == 1  # 2 + 1 + 3 frames: due at 6 >= 5
    first = due[0]
    assert first.frames.shape == (6, 3, 2) and np.shares_memory(first.frames, buffer)
    assert first.frames.ctypes.data == buffer.ctypes.data
    np.testing.assert_array_equal(first.frames, buffer[:6])
    np.testing.assert_array_equal(first.positions["mu"], np.arange(6.0))
    assert [len(s) for s in first.sources] == [2, 1, 3]
    rest = gather.take()  # the scan's end: what is held, whatever its size
    np.testing.assert_array_equal(rest.frames, buffer[6:9])
    np.testing.assert_array_equal(rest.positions["mu"], np.arange(6.0, 9.0))
    assert gather.take() is None


def test_a_batch_from_elsewhere_sends_on_what_is_held():
    """A batch that does not follow the held ones in their buffer (the reads went round to
    the buffer's start, or a copy) is never joined to them: what is held goes first, alone."""
    from dfxm_online.behind_preview import BatchGather

    buffer = np.arange(10 * 4, dtype=np.float32).reshape(10, 4)
    gather = BatchGather(100)
    assert gather.add(buffer[6:8], {"mu": np.array([6.0, 7.0])}, buffer[6:8]) == []
    due = gather.add(buffer[0:2], {"mu": np.array([0.0, 1.0])}, buffer[0:2])  # round to the start
    assert len(due) == 1
    np.testing.assert_array_equal(due[0].frames, buffer[6:8])
    copy = buffer[2:4].copy()
    due = gather.add(copy, {"mu": np.array([2.0, 3.0])}, copy)
    np.testing.assert_array_equal(due[0].frames, buffer[0:2])
    held = gather.take()
    assert held.frames is copy and held.sources == [copy]
