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
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

logger = logging.getLogger(__name__)


class UpdatesBehindPreview:
    """Updates run in submission order on one thread, at most `max_bytes` of frames waiting
    (one batch more when a single batch is larger). A failed update is raised, with its own
    type, by the next `submit` or `flush`; the updates after it are skipped."""

    def __init__(self, max_bytes: int, name: str = "dfxm-full-res") -> None:
        self.max_bytes = max_bytes
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._room = threading.Condition()
        self._pending = 0  # bytes of frames submitted and not yet updated
        self._error: BaseException | None = None
        self._done: deque[np.ndarray] = deque()

    def submit(self, update: Callable[[], None], frames: np.ndarray) -> None:
        """Run `update` (which reads `frames`) after the updates submitted before it; waits
        while the frames already waiting fill `max_bytes`."""
        self._raise()
        size = int(frames.nbytes)
        with self._room:
            while self._pending and self._pending + size > self.max_bytes and self._error is None:
                self._room.wait()
            if self._error is None:  # counted only when it will run (flush waits for the count)
                self._pending += size
        self._raise()
        self._executor.submit(self._run, update, frames, size)

    def _run(self, update: Callable[[], None], frames: np.ndarray, size: int) -> None:
        try:
            if self._error is None:
                update()
        except BaseException as exc:  # raised on the worker's thread by submit/flush
            self._error = exc
        finally:
            self._done.append(frames)
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
