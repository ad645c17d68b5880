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

Small batches are gathered into one update (`BatchGather`). A live scan's batches are the
frames of one or two points (the frame source hands frames out as soon as they come), and
an update's cost is mostly one pass over the pipeline's sums, whatever the number of
frames: at 2048^2 with two motors (~0.6 GB of sums) an update of 1-2 frames took 0.1-0.15 s
on its one thread, so at 10 frames/s the updates kept a core busy and the live path waited
for the other one (frame-to-map p99 0.66-0.70 s in service). Consecutive batches lie one
after the other in the frame source's batch buffer, so gathering them costs no copy: one
update per buffer.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .acquisition.frames import root_of

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

    def submit(self, update: Callable[[], None], frames: np.ndarray,
               sources: Sequence[np.ndarray] | None = None) -> None:
        """Run `update` (which reads `frames`) after the updates submitted before it; waits
        while the frames already waiting fill `max_bytes`. `finished` gives back `sources`
        (the frame source's batches `frames` was gathered from), else `frames`."""
        self._raise()
        size = int(frames.nbytes)
        with self._room:
            while self._pending and self._pending + size > self.max_bytes and self._error is None:
                self._room.wait()
            if self._error is None:  # counted only when it will run (flush waits for the count)
                self._pending += size
        self._raise()
        self._executor.submit(self._run, update, [frames] if sources is None else list(sources), size)

    def _run(self, update: Callable[[], None], sources: list[np.ndarray], size: int) -> None:
        try:
            if self._error is None:
                update()
        except BaseException as exc:  # raised on the worker's thread by submit/flush
            self._error = exc
        finally:
            self._done.extend(sources)
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


@dataclass
class Gathered:
    """Consecutive batches as one: their frames (one view), positions, and the frame
    source's batches they came from (to recycle once the update is done)."""

    frames: np.ndarray
    positions: dict[str, np.ndarray]
    sources: list[np.ndarray] = field(default_factory=list)


def _follows(first: np.ndarray, then: np.ndarray) -> bool:
    """True when `then` lies right after `first` in the same buffer (one view covers both)."""
    return (first.flags.c_contiguous and then.flags.c_contiguous and first.dtype == then.dtype
            and first.shape[1:] == then.shape[1:] and root_of(first) is root_of(then)
            and root_of(first).flags.c_contiguous
            and first.ctypes.data + first.nbytes == then.ctypes.data)


class BatchGather:
    """Consecutive prepared batches held until they make one full-resolution update of at
    least `frames` frames (module docstring). Only batches that follow one another in one
    buffer are gathered, so an update is one view and never a copy, and the frames held
    stay within the frame source's buffers: a batch from elsewhere (a new buffer, a copy
    made by the preprocessing chain) first sends on what is held."""

    def __init__(self, frames: int) -> None:
        self.frames = max(1, frames)
        self._held: list[tuple[np.ndarray, Mapping[str, np.ndarray], np.ndarray]] = []
        self._count = 0

    def add(self, frames: np.ndarray, positions: Mapping[str, np.ndarray], source: np.ndarray) -> list[Gathered]:
        """Hold a batch (`frames` as the pipeline takes it, from the source's batch `source`);
        return what is due for an update now, oldest first."""
        due = []
        if self._held and not _follows(self._held[-1][0], frames):
            due.append(self.take())
        self._held.append((frames, positions, source))
        self._count += len(frames)
        if self._count >= self.frames:
            due.append(self.take())
        return [g for g in due if g is not None]

    def take(self) -> Gathered | None:
        """Everything held, as one batch (None when nothing is)."""
        if not self._held:
            return None
        held, self._held, self._count = self._held, [], 0
        first = held[0][0]
        if len(held) == 1:
            frames = first
        else:  # one view over the batches, which follow one another in `root` (`add`)
            root = root_of(first)
            frames = np.ndarray((sum(len(f) for f, _, _ in held), *first.shape[1:]), dtype=first.dtype,
                                buffer=root, offset=first.ctypes.data - root.ctypes.data)
        positions = {key: np.concatenate([np.asarray(p[key]) for _, p, _ in held]) for key in held[0][1]}
        return Gathered(frames, positions, [source for _, _, source in held])
