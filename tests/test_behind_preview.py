"""The full-resolution updates behind the live preview (`behind_preview`): in order, bounded
in bytes of frames waiting, failures raised on the worker's thread with their own type."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from dfxm_online.acquisition.geometry import ScanError
from dfxm_online.behind_preview import (
    GatheredBatches,
    UpdatesBehindPreview,
    consecutive_view,
    joined,
)


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


def test_wait_finished_waits_for_an_update_and_says_whether_frames_came_back():
    """What the daemon's reads wait on when the frame source has no room (`_reclaim`): the
    oldest update done, its frames to give back; nothing waiting, no wait and False."""
    updates = UpdatesBehindPreview(max_bytes=1 << 20)
    assert updates.wait_finished() is False
    release = threading.Event()
    updates.submit(release.wait, np.zeros(10, np.uint16))
    waited = threading.Event()

    def wait() -> None:
        assert updates.wait_finished() is True
        waited.set()

    thread = threading.Thread(target=wait)
    thread.start()
    assert not waited.wait(0.2)  # held while the update runs
    release.set()
    assert waited.wait(5)
    thread.join()
    assert len(updates.finished()) == 1
    assert updates.wait_finished() is False
    updates.close()


def test_batches_are_gathered_to_the_size_asked_and_joined_in_order():
    """`add` says when the batches held reach `min_bytes`; `take` gives them all (and their
    raw batches, to give back together) and holds none after; `joined` is one batch of their
    frames and positions in order, a batch alone without a copy."""
    gathered = GatheredBatches(min_bytes=3 * 8 * 2)  # three 8-pixel uint16 frames
    rng = np.random.default_rng(0)
    batches = [(rng.integers(0, 100, (n, 8)).astype(np.uint16), {"mu": rng.random(n), "chi": rng.random(n)})
               for n in (1, 1, 2, 1)]
    raws = [np.empty(1) for _ in batches]
    ready = [gathered.add(frames, positions, raw) for (frames, positions), raw in zip(batches, raws)]
    assert ready == [False, False, True, True] and len(gathered) == 5 and gathered.nbytes == 5 * 16
    items, raw = gathered.take()
    assert len(gathered) == 0 and gathered.nbytes == 0 and gathered.take() == ([], [])
    assert all(a is b for a, b in zip(raw, raws)) and len(raw) == 4
    frames, positions = joined(items)
    np.testing.assert_array_equal(frames, np.concatenate([f for f, _ in batches]))
    for name in ("mu", "chi"):
        np.testing.assert_array_equal(positions[name], np.concatenate([p[name] for _, p in batches]))
    alone, _ = joined(items[:1])
    assert alone is batches[0][0]


def test_an_update_of_gathered_batches_gives_every_batch_back():
    updates = UpdatesBehindPreview(max_bytes=1 << 20)
    frames = [np.full(10, i, np.uint16) for i in range(3)]
    ran = threading.Event()
    updates.submit(ran.set, frames)
    updates.flush()
    assert ran.is_set() and [int(f[0]) for f in updates.finished()] == [0, 1, 2]
    updates.close()


def test_consecutive_frames_of_one_buffer_are_joined_as_one_view():
    """Batches that are consecutive frames of one buffer (the frame source's reads) join
    as a view of it, no copy; others (a gap, another buffer, out of order, a frame cut) are
    copied together, with the same values."""
    rng = np.random.default_rng(1)
    buffer = rng.integers(0, 100, (12, 3, 4)).astype(np.uint16)
    other = rng.integers(0, 100, (4, 3, 4)).astype(np.uint16)

    def positions(n: int, first: int) -> dict[str, np.ndarray]:
        return {"mu": np.arange(first, first + n, dtype=float)}

    view, pos = joined([(buffer[2:3], positions(1, 2)), (buffer[3:5], positions(2, 3)), (buffer[5:6], positions(1, 5))])
    assert np.shares_memory(view, buffer) and view.ctypes.data == buffer[2:].ctypes.data
    np.testing.assert_array_equal(view, buffer[2:6])
    np.testing.assert_array_equal(pos["mu"], [2, 3, 4, 5])
    for parts in ([buffer[0:2], buffer[3:4]], [buffer[0:2], other[0:1]], [buffer[3:4], buffer[2:3]]):
        assert consecutive_view(parts) is None
        copy, _ = joined([(p, positions(len(p), 0)) for p in parts])
        assert not np.shares_memory(copy, buffer)
        np.testing.assert_array_equal(copy, np.concatenate(parts))
    flat = buffer.reshape(-1)
    assert consecutive_view([flat[6:18].reshape(1, 3, 4), flat[18:30].reshape(1, 3, 4)]) is None  # half a frame in
