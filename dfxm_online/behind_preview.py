"""The full-resolution pipeline's updates on a thread of their own, behind the live preview.

Why: the daemon's live maps come from a binned preview pipeline; the full-resolution
pipeline (the final maps) takes the same batches. Run on the scan worker's thread, its
update stood between every later frame and that frame's live maps: at a scan's start the
first full-resolution update (a new pipeline's ~0.5-1 GB of sums written for the first
time, its kernels loaded) held the next frames ~1 s (2048^2, 10 frames/s: the slowest
frames of every latency run were a scan's first ones). Here the updates run in order on one
thread while the worker goes on reading and previewing; the frames waiting for them are
bounded in bytes, so a machine too slow for the full-resolution updates slows the preview
down (back-pressure) instead of holding more and more frames.

The worker recycles a batch's frame buffer only once its update is done (`finished`), on
its own thread: the frame source is not thread-safe.

The live batches are gathered (`GatheredBatches`) into fewer, larger full-resolution
updates. Why: an update reads and writes every running sum once, whatever its frames: at
2048^2 with two motors ~0.7 GB of sums against 8 MB per frame, so the one- or two-frame
batches of a 10 frames/s scan cost 0.07-0.30 s each, kept the updates' thread busy ~60 % of
the time and memory traffic high (py-spy of a daemon in service, bench/RESULTS.md), while
the final maps only need every frame in by the scan's end.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .acquisition.frames import root_of

logger = logging.getLogger(__name__)


class UpdatesBehindPreview:
    """Updates run in submission order on one thread, at most `max_bytes` of frames waiting
    (one batch more when a single batch is larger). A failed update is raised, with its own
    type, by the next `submit` or `flush`; the updates after it are skipped."""

    def __init__(self, max_bytes: int, name: str = "dfxm-full-res") -> None:
        self.max_bytes = max_bytes
        self._name = name
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._room = threading.Condition()
        self._pending = 0  # bytes of frames submitted and not yet updated
        self._error: BaseException | None = None
        self._done: deque[np.ndarray] = deque()

    def submit(self, update: Callable[[], None], frames: np.ndarray | Sequence[np.ndarray]) -> None:
        """Run `update` (which reads `frames`: one array, or several given back together)
        after the updates submitted before it; waits while the frames already waiting fill
        `max_bytes`."""
        self._raise()
        size = int(frames.nbytes) if isinstance(frames, np.ndarray) else sum(int(f.nbytes) for f in frames)
        t0 = time.perf_counter()
        with self._room:
            while self._pending and self._pending + size > self.max_bytes and self._error is None:
                self._room.wait()
            if self._error is None:  # counted only when it will run (flush waits for the count)
                self._pending += size
        if time.perf_counter() - t0 > 0.01:
            logger.debug("%s: a submit waited %.3f s for room", self._name, time.perf_counter() - t0)
        self._raise()
        self._executor.submit(self._run, update, frames, size)

    def _run(self, update: Callable[[], None], frames: np.ndarray | Sequence[np.ndarray], size: int) -> None:
        try:
            if self._error is None:
                update()
        except BaseException as exc:  # raised on the worker's thread by submit/flush
            self._error = exc
        finally:
            self._done.extend([frames] if isinstance(frames, np.ndarray) else frames)
            with self._room:
                self._pending -= size
                self._room.notify_all()

    def finished(self) -> list[np.ndarray]:
        """The frames whose update is done since the last call (their buffers may be reused)."""
        out = []
        while self._done:
            out.append(self._done.popleft())
        return out

    def wait_finished(self) -> bool:
        """Wait until an update is done whose frames `finished` has not given back yet, or
        none is waiting; True if there are frames to give back."""
        with self._room:
            while not self._done and self._pending:
                self._room.wait()
            return bool(self._done)

    def flush(self, raise_error: bool = True) -> None:
        """Wait for every update submitted; raise the first failure (unless not `raise_error`)."""
        with self._room:
            while self._pending:
                self._room.wait()
        if raise_error:
            self._raise()

    def close(self) -> None:
        """Wait for the updates and stop the thread (a failure is not raised: the scan is over)."""
        self.flush(raise_error=False)
        self._executor.shutdown(wait=True)

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error


class GatheredBatches:
    """Prepared batches held back until they make one full-resolution update of at least
    `min_bytes` of frames (module docstring): `add` says when; `take` gives them (which
    `joined` makes one update's frames and positions of, on the updates' thread) and the raw
    batches to give back to the frame source once that update is done."""

    def __init__(self, min_bytes: int) -> None:
        self.min_bytes = min_bytes
        self._items: list[tuple[np.ndarray, Mapping[str, np.ndarray]]] = []
        self._raw: list[np.ndarray] = []
        self.nbytes = 0

    def __len__(self) -> int:
        return sum(frames.shape[0] for frames, _ in self._items)

    def add(self, frames: np.ndarray, positions: Mapping[str, np.ndarray], raw: np.ndarray) -> bool:
        """Hold a prepared batch (`raw`: the frame source's batch it was read into); True
        when the batches held make an update."""
        self._items.append((frames, positions))
        self._raw.append(raw)
        self.nbytes += int(frames.nbytes)
        return self.nbytes >= self.min_bytes

    def take(self) -> tuple[list[tuple[np.ndarray, Mapping[str, np.ndarray]]], list[np.ndarray]]:
        """The batches held (prepared, raw), and none held any more."""
        items, raw = self._items, self._raw
        self._items, self._raw, self.nbytes = [], [], 0
        return items, raw


def joined(items: Sequence[tuple[np.ndarray, Mapping[str, np.ndarray]]]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Gathered batches as one: their frames and each motor's positions, in order. Frames
    that follow one another in one buffer (the frame source's consecutive reads, when the
    preprocessing leaves them as they are) are one view of it; others are copied together
    (a batch alone is given as it is)."""
    if len(items) == 1:
        frames, positions = items[0]
        return frames, dict(positions)
    parts = [f for f, _ in items]
    frames = consecutive_view(parts)
    if frames is None:
        frames = np.concatenate(parts)
    positions = {name: np.concatenate([np.asarray(p[name]) for _, p in items]) for name in items[0][1]}
    return frames, positions


def consecutive_view(parts: Sequence[np.ndarray]) -> np.ndarray | None:
    """`parts` as one view of the C-contiguous buffer whose consecutive whole frames they
    are, in order; None when they are not."""
    root = root_of(parts[0])
    frame = root[0].nbytes if root.ndim and len(root) else 0
    if (not frame or not root.flags.c_contiguous or any(p.dtype != root.dtype or p.shape[1:] != root.shape[1:]
                                                        or not p.flags.c_contiguous or root_of(p) is not root
                                                        for p in parts)):
        return None
    offset = parts[0].ctypes.data - root.ctypes.data
    if offset % frame:
        return None
    for before, after in zip(parts, parts[1:]):
        if before.ctypes.data + before.nbytes != after.ctypes.data:
            return None
    start = offset // frame
    return root[start : start + sum(len(p) for p in parts)]
