"""The live maps' binning that holds the latency budget (`live_binning = "auto"`).

Live maps are a preview; final maps are exact. While a scan runs, the daemon publishes its
maps over blocks of b x b pixels, b chosen so that the frame-to-map latency stays within
`latency_budget` at p99; at the scan's end it publishes the full-resolution final maps.
The live maps come from a preview pipeline fed the frames binned p x p
(`ScanPipeline.preview`, p from `preview_binning`: its accumulators small), updated before
the full-resolution one; b is a multiple of p (the preview's snapshot binned b / p).

How b is chosen: a frame waits for the publish cycle in progress and then its own, so its
latency is about two cycles. The first guess comes from the frame size and the number of
motors (the cost of a cycle grows with the pixels of the maps and with the moments per
pixel); then every published version reports its latency, and b moves to the next coarser
value as soon as the recent latencies exceed the budget, or to the next finer value when
they have stayed under half of it with what the finer maps would add (each version's
snapshot and write, scaled by the finer step's pixels). It moves at most once every
`hold` seconds (each change is logged, shown in /status and in every file's
`entry/process/map_binning`), so that one slow cycle (a file system hiccup) does not make
the maps flicker.

A daemon in service starts a scan at the binning the last scan of the same kind (frame
shape, motors) settled on (`SettledBinnings`), not at the first guess: scans of a beamtime
come in series, and each one converging again from the guess took ~6 s of over-budget
versions at its start (2048^2, two motors, AMD EPYC Zen 3, in service: p99 1.84-2.11 s, the
slowest frames all in the first 3.5 s; bench/RESULTS.md, session 9).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable

logger = logging.getLogger(__name__)

#: binnings the controller chooses from (a block of b x b pixels; 1 = full resolution)
STEPS = (1, 2, 3, 4, 6, 8, 12, 16)
#: the largest live preview's accumulators (`preview_binning`): small enough that their first
#: touch (a new scan's memory: ~0.2-2 s per GB on the development VM) and every cycle over
#: them stay a fraction of the latency budget. 2048^2: one motor 2x2 (109 MB), two motors
#: 3x3 (100 MB); 512^2 frames are their own preview (27 MB at one motor)
PREVIEW_BYTES = 128 << 20
#: map pixels x moments per pixel that one cycle handles within about 0.1 s on one core of
#: a machine like the development one (2048^2 one motor: ~0.08 s snapshot; two motors:
#: ~0.19 s): the first guess only, the measured latencies decide after that
PIXELS_PER_TENTH = 4.0e6


def moments_per_pixel(motors: int) -> int:
    """Monomials up to 4th order of `motors` motors: 5, 15, 35 (what a snapshot reads)."""
    return math.comb(motors + 4, 4)


def initial_binning(frame_shape: tuple[int, int], motors: int, budget: float, steps: tuple[int, ...] = STEPS) -> int:
    """The smallest of `steps` whose estimated cycle (half the budget) fits, from the frame
    size and the number of motors."""
    work = frame_shape[0] * frame_shape[1] * moments_per_pixel(motors) / moments_per_pixel(1)
    for step in steps:
        if work / step**2 / PIXELS_PER_TENTH * 0.1 <= 0.5 * budget:
            return step
    return steps[-1]


def preview_bytes(frame_shape: tuple[int, int], motors: int, factor: int) -> int:
    """The accumulators of a preview binned `factor` x `factor` with the default ones: the
    moment sums, the edge groups' sums and squares, the projections' four images."""
    rows = (moments_per_pixel(motors) if motors else 1) + 4 * motors + 4
    return 8 * rows * (frame_shape[0] // factor) * (frame_shape[1] // factor)


def preview_binning(frame_shape: tuple[int, int], motors: int, forced: int | None = None) -> int:
    """The binning of a scan's live preview pipeline (`ScanPipeline.preview`): `forced`
    (the `live_binning` setting) when given, else the smallest step whose accumulators
    fit in `PREVIEW_BYTES` (1: the scan is small enough to be its own preview). Never
    larger than the frame. The live maps' binning moves among its multiples."""
    largest = max(s for s in STEPS if s <= max(1, min(frame_shape)))
    if forced is not None:
        return forced if forced <= min(frame_shape) else 1
    for step in STEPS:
        if step >= largest or preview_bytes(frame_shape, motors, step) <= PREVIEW_BYTES:
            return step
    return largest


class SettledBinnings:
    """The live binning the last scan of each kind (frame shape, number of motors) had when
    its live versions ended: where the daemon's next scan of that kind starts (see the
    module docstring). Shared by the daemon's scan workers, hence the lock."""

    def __init__(self) -> None:
        self._by_kind: dict[tuple[tuple[int, int], int], int] = {}
        self._lock = threading.Lock()

    def recall(self, frame_shape: tuple[int, int], motors: int) -> int | None:
        with self._lock:
            return self._by_kind.get((tuple(frame_shape), motors))

    def remember(self, frame_shape: tuple[int, int], motors: int, binning: int) -> None:
        with self._lock:
            self._by_kind[(tuple(frame_shape), motors)] = binning


class BinningController:
    """Chooses a running scan's live binning from its measured frame-to-map latencies.
    `start`: the binning to begin with (`SettledBinnings`) instead of the first guess, when
    it is one of this scan's steps and nothing is forced."""

    def __init__(self, frame_shape: tuple[int, int], motors: int, budget: float, forced: int | None = None,
                 hold: float = 3.0, window: int = 8, clock: Callable[[], float] = time.monotonic,
                 start: int | None = None) -> None:
        self.frame_shape = frame_shape
        self.motors = motors
        self.budget = budget
        self.forced = forced
        self.hold = hold
        self.clock = clock
        self._recent: deque[float] = deque(maxlen=window)
        #: each of those versions' own cost (snapshot + write, seconds), which grows with
        #: the maps' pixels where the rest of a latency (waiting for the period) does not
        self._costs: deque[float] = deque(maxlen=window)
        #: the live preview's binning: the steps are its multiples (a block of the preview)
        self.base = preview_binning(frame_shape, motors, forced)
        self._largest = max(s for s in STEPS if s <= max(1, min(frame_shape)))
        self.steps = tuple(s for s in STEPS if s % self.base == 0 and s <= self._largest) or (self.base,)
        if forced is not None:
            self.binning = forced
        elif start in self.steps:
            self.binning = start
        else:
            self.binning = initial_binning(frame_shape, motors, budget, self.steps)
        self._changed = clock()

    def _usable(self, step: int) -> int:
        """A forced or chosen binning never larger than the frame (a setting for a large
        detector must not fail the scans of a small one or of a narrow ROI)."""
        return step if step <= min(self.frame_shape) else 1

    @property
    def current(self) -> int:
        return self._usable(self.binning)

    def observe(self, latency: float, cost: float = 0.0) -> int:
        """Record one published version's frame-to-map latency and its own cost (snapshot
        and write); return the binning to use from now on (changed at most once per `hold`
        seconds, never when forced).

        Coarser when the worst recent latency is over the budget. Finer when the worst
        recent latency *plus the finer maps' extra cost* (the costliest recent version's
        cost scaled by the finer step's pixels) stays under half the budget: the other half
        is the margin for load that comes and goes. Why: the rule was "under a third of the
        budget", which stood for the cost growing with the pixels. With cheap versions (a
        fast file write) a 2048^2 two-motor scan at 12x12 read ~0.10-0.15 s, went to 6x6,
        whose 4x the pixels then went over the budget when the previous scan's workflow ran
        beside it, and back: 12 <-> 6 every 3-10 s, each change a version of a new layout
        written in full (0.6 s under that load), p99 2-4 s (measured)."""
        self._recent.append(latency)
        self._costs.append(cost)
        if self.forced is not None or self.clock() - self._changed < self.hold:
            return self.current
        worst = max(self._recent)
        index = self.steps.index(self.binning) if self.binning in self.steps else 0
        new = self.binning
        if worst > self.budget and index + 1 < len(self.steps):
            new = self.steps[index + 1]
        elif len(self._recent) == self._recent.maxlen and index > 0:
            finer = self.steps[index - 1]
            extra = max(self._costs) * ((self.binning / finer) ** 2 - 1)
            if worst + extra < self.budget / 2:
                new = finer
        if new != self.binning:
            logger.info("live maps binned %dx%d instead of %dx%d: frame-to-map latency %.2f s (budget %.2f s)",
                        new, new, self.binning, self.binning, worst, self.budget)
            self.binning = new
            self._changed = self.clock()
            self._recent.clear()
            self._costs.clear()
        return self.current
