"""Pixel tiles on the thread pool (`online.tiles`): each tile worked on once whatever its
cost, the caller working too, failures raised, and a thread's cap on its tile threads."""

from __future__ import annotations

import threading
import time

import pytest

from dfxm_online.online import tiles


def test_every_tile_is_worked_on_once_whatever_its_cost(monkeypatch):
    """Tiles go to whichever thread is free: every tile once, and a thread stuck on slow
    tiles does not hold back the others' (a fixed share gave one thread every slow tile)."""
    monkeypatch.setenv("DFXM_THREADS", "2")
    seen: list[tuple[int, int]] = []
    by_thread: dict[str, int] = {}
    lock = threading.Lock()
    slow = threading.Event()

    def work(start: int, stop: int) -> None:
        if start == 0:  # the first tile is slow: the other thread must take all the rest
            slow.wait(5)
        with lock:
            seen.append((start, stop))
            by_thread[threading.current_thread().name] = by_thread.get(threading.current_thread().name, 0) + 1
            if len(seen) == 10:
                slow.set()

    tiles.for_each_tile(1000, work, tile=97)
    assert sorted(seen) == [(s, min(s + 97, 1000)) for s in range(0, 1000, 97)]
    assert sorted(by_thread.values()) == [1, 10]


def test_a_failing_tile_raises_and_stops_the_others(monkeypatch):
    monkeypatch.setenv("DFXM_THREADS", "2")
    done: list[int] = []

    def work(start: int, stop: int) -> None:
        if start == 300:
            raise ValueError("bad tile")
        time.sleep(0.0005)  # without the GIL: the failing thread gets to say so
        done.append(start)

    with pytest.raises(ValueError, match="bad tile"):
        tiles.for_each_tile(100_000, work, tile=100)  # 1000 tiles
    assert len(done) < 999


def test_fewer_threads_caps_this_threads_tile_work_only(monkeypatch):
    """Inside `fewer_threads` a thread's tile work uses one thread fewer (at least one);
    other threads and the code after the block are not capped."""
    monkeypatch.setenv("DFXM_THREADS", "3")
    assert tiles.n_threads() == 3
    seen: dict[str, int] = {}

    def other() -> None:
        seen["other"] = tiles.n_threads()

    with tiles.fewer_threads():
        assert tiles.n_threads() == 2
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        with tiles.fewer_threads(5):
            assert tiles.n_threads() == 1
        names: set[str] = set()
        lock = threading.Lock()

        def work(start: int, stop: int) -> None:
            time.sleep(0.002)
            with lock:
                names.add(threading.current_thread().name)

        tiles.for_each_tile(100, work, tile=1)
        assert 1 <= len(names) <= 2
    assert seen["other"] == 3
    assert tiles.n_threads() == 3
