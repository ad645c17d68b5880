"""Background accumulators: a running mean (dark scans) and the scan-edge baseline.

Why an edge baseline: a raw first moment over a pedestal (dark offset, photon background)
pulls every centre of mass toward the scan centre and inflates every width; clipping after a
subtraction biases the widths up as well (it keeps positive noise, drops negative noise).
What is unbiased is subtracting the right per-pixel constant *before* the moments, with
negative residuals kept. When no dark scan
was taken we estimate that constant online from the frames recorded at the edges of the
scanned range, where a well-chosen rocking or rolling scan has left the diffraction peak: for
each motor, the frames in the lowest `fraction` of its range and those in the highest form
two groups. A pixel's baseline is the pooled mean of the groups that agree with its lowest
group mean within `k` standard errors: a group that a peak near that edge contaminates is
rejected, and the clean groups are averaged rather than minimised over. (Taking the lowest
group mean alone is biased low by about one standard error; that small residual pedestal,
multiplied by the lever arm (x - com)^2 of the whole mesh, inflated FWHMs by 3-5 % on the
simulator's data. The pooled mean is within 0.5 % of the truth there; see tests.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ...acquisition.geometry import MotorAxis
from ..framesums import SumsPlan, accumulate
from ..kernels.pixelmaps import pooled_edge_mean_rows
from ..tiles import SNAPSHOT_PIXELS, for_each_tile


class RunningMean:
    """Per-pixel mean (and spread) of all frames seen, e.g. a dark scan; mergeable.

    The sum of squares is kept so that a dark scan can be pooled with the scan-edge frames
    (see :meth:`EdgeBaseline.snapshot`), which needs each group's standard error.
    """

    def __init__(self, n_pixels: int) -> None:
        self.total = np.zeros(n_pixels, dtype=np.float64)
        self.total_sq = np.zeros(n_pixels, dtype=np.float64)
        self.count = 0

    def update(self, frames: np.ndarray, positions: Mapping[str, np.ndarray] | None = None) -> None:
        n = len(frames)
        plan = SumsPlan()
        plan.add_group(np.ones(n, dtype=bool), self.total, self.total_sq)
        accumulate(frames, [plan])
        self.count += n

    def merge(self, other: RunningMean) -> None:
        self.total += other.total
        self.total_sq += other.total_sq
        self.count += other.count

    def state(self) -> dict[str, np.ndarray]:
        return {"total": self.total.copy(), "total_sq": self.total_sq.copy(), "count": np.array(self.count)}

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> RunningMean:
        obj = cls(state["total"].shape[0])
        obj.total[...] = state["total"]
        obj.total_sq[...] = state["total_sq"]
        obj.count = int(state["count"])
        return obj

    def snapshot(self) -> np.ndarray | None:
        """The mean image (P,), or None before the first frame."""
        if self.count == 0:
            return None
        return self.total / self.count


def edge_groups(
    axes: Sequence[MotorAxis], positions: Mapping[str, np.ndarray], fraction: float
) -> np.ndarray:
    """(2M, B) membership of each point in the low / high edge band of each motor."""
    rows = []
    for axis in axes:
        x = np.asarray(positions[axis.name], dtype=np.float64)
        span = axis.high - axis.low
        if span <= 0:
            rows += [np.zeros(x.shape, bool)] * 2
            continue
        t = (x - axis.low) / span
        # a small tolerance so that points exactly on the band edge are not lost to rounding
        eps = 1e-9
        rows += [t <= fraction + eps, t >= 1.0 - fraction - eps]
    return np.array(rows, dtype=bool).reshape(2 * len(axes), -1)


class EdgeBaseline:
    """Per-pixel baseline from the frames at the edges of the scanned range (mergeable)."""

    #: groups whose mean exceeds the lowest by more than this many standard errors are
    #: taken as contaminated by the peak
    REJECT_SIGMAS = 3.0

    def __init__(self, axes: Sequence[MotorAxis], n_pixels: int, fraction: float = 0.2) -> None:
        if not 0 < fraction < 0.5:
            raise ValueError("edge fraction must be in (0, 0.5)")
        self.axes = tuple(axes)
        self.fraction = fraction
        self.sums = np.zeros((2 * len(self.axes), n_pixels), dtype=np.float64)
        self.sumsq = np.zeros((2 * len(self.axes), n_pixels), dtype=np.float64)
        self.counts = np.zeros(2 * len(self.axes), dtype=np.int64)
        # the last baseline and what it was made of (see `snapshot`)
        self._last: tuple[tuple, np.ndarray] | None = None

    def update(self, frames: np.ndarray, positions: Mapping[str, np.ndarray]) -> None:
        accumulate(frames, [self.sums_plan(positions, len(frames))])

    def sums_plan(self, positions: Mapping[str, np.ndarray], n_frames: int) -> SumsPlan:
        """This batch's part of a pass over the frames: the sums and sums of squares of the
        frames in each edge band (work only for the frames in a band)."""
        groups = edge_groups(self.axes, positions, self.fraction)
        if groups.shape[1] != n_frames:
            raise ValueError(f"{groups.shape[1]} positions for {n_frames} frames")
        plan = SumsPlan()
        for g in np.flatnonzero(groups.any(axis=1)):
            plan.add_group(groups[g], self.sums[g], self.sumsq[g])

        def after() -> None:
            self.counts += groups.sum(axis=1)

        plan.after = after
        return plan

    @property
    def n_pixels(self) -> int:
        return self.sums.shape[1]

    def merge(self, other: EdgeBaseline) -> None:
        if other.axes != self.axes or other.fraction != self.fraction:
            raise ValueError("cannot merge edge baselines over different axes or fractions")
        self.sums += other.sums
        self.sumsq += other.sumsq
        self.counts += other.counts

    def state(self) -> dict[str, np.ndarray]:
        """The running sums themselves, not copies (see `registry.Accumulator.state`)."""
        return {"sums": self.sums, "sumsq": self.sumsq, "counts": self.counts.copy()}

    @classmethod
    def from_state(
        cls, axes: Sequence[MotorAxis], state: Mapping[str, np.ndarray], fraction: float = 0.2
    ) -> EdgeBaseline:
        obj = cls(axes, state["sums"].shape[1], fraction)
        obj.sums[...] = state["sums"]
        obj.sumsq[...] = state["sumsq"]
        obj.counts[...] = state["counts"]
        return obj

    def snapshot(self) -> np.ndarray | None:
        """The baseline image (P,); None before any edge frame."""
        # The sums change only with the counts (a frame in a band adds to both), so a
        # baseline made from the same counts is the one already made: it is returned
        # again, read-only, instead of read off the 2M sums and sums of squares anew. Most
        # of a scan adds no frame to any band (a rocking scan's middle 60 %, most of a
        # mesh's rows between its first and last band points); a 2048^2 baseline of 4
        # groups costs ~0.02 s, on 2 cores, of each live publish.
        key = tuple(self.counts.tolist())
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        self._last = None  # dropped before the new one is made: one baseline in memory
        seen = np.flatnonzero(self.counts > 0)
        if not seen.size:
            return None
        baseline = pooled_edge_mean([self.sums[g] for g in seen], [self.sumsq[g] for g in seen],
                                    self.counts[seen].astype(np.float64), self.REJECT_SIGMAS)
        baseline.flags.writeable = False
        self._last = (key, baseline)
        return baseline


def pooled_edge_mean(
    sums: Sequence[np.ndarray], sumsq: Sequence[np.ndarray], counts: np.ndarray, k: float
) -> np.ndarray:
    """Pooled mean of the groups within `k` standard errors of each pixel's lowest group.

    `sums`, `sumsq`: one (P,) row per group (frame sums and sums of squares), `counts` the
    groups' frame counts. The standard error of the difference between a group mean and
    the lowest one assumes both share the lowest (clean) group's per-frame variance. One
    compiled pass per pixel range, no groups x pixels temporaries (with the moment
    conversion: ~1.07 s as numexpr passes, ~0.17 s compiled at 2048^2).
    """
    rows = [np.ascontiguousarray(r, dtype=np.float64) for r in sums]
    rows_sq = [np.ascontiguousarray(r, dtype=np.float64) for r in sumsq]
    n = np.ascontiguousarray(counts, dtype=np.float64)
    out = np.empty(rows[0].shape[0])
    for_each_tile(out.shape[0], lambda start, stop: pooled_edge_mean_rows(
        rows, rows_sq, n, float(k), out, start, stop), tile=SNAPSHOT_PIXELS)
    return out
