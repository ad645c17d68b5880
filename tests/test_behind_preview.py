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
