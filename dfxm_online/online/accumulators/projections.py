"""Projection accumulators: sum and maximum images, half-scan sums, sums per motor value.

- :class:`Projections` keeps the sum and the maximum of all frames, and the sums of the first
  and the second half of the scan. Comparing the two half sums at the end of the scan (e.g.
  by cross-correlation) shows whether the sample drifted during the scan.
- :class:`SumsAlongMotor` keeps one summed image per distinct value of one motor: the
  projections of a topo-tomography scan (one per omega), normalised for reconstruction.

Both are exact and mergeable (sums add, maxima take the maximum). Images are flat (P,)
float64 arrays; the caller reshapes them.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ...acquisition.geometry import MotorAxis
from ..framesums import SumsPlan, accumulate
from .median import _flat  # one definition of the (B, P) batch view


def batch_sum(flat: np.ndarray, members: np.ndarray | None = None) -> np.ndarray:
    """Exact sum (P,) over the frames of a batch (those where `members` is True).

    Integer frames of at most 16 bits are added row by row into 32-bit integers (exact up to
    65535 frames; ~2x faster than converting every value to float64, and no copy of the
    selected rows); anything else is summed in float64."""
    rows = np.arange(flat.shape[0]) if members is None else np.flatnonzero(members)
    small_int = flat.dtype.kind in "biu" and flat.dtype.itemsize <= 2 and rows.size <= 65535
    if not small_int:
        chosen = flat if members is None else flat[rows]
        return chosen.sum(axis=0, dtype=np.float64)
    total = np.zeros(flat.shape[1], dtype=np.int32 if flat.dtype.kind == "i" else np.uint32)
    for r in rows:
        np.add(total, flat[r], out=total)
    return total


def _motor_positions(positions: Mapping[str, np.ndarray] | None, motor: str, n: int) -> np.ndarray:
    if positions is None or motor not in positions:
        raise ValueError(f"no positions for motor {motor!r}")
    values = np.asarray(positions[motor], dtype=np.float64).reshape(-1)
    if values.shape[0] != n:
        raise ValueError(f"{values.shape[0]} positions of {motor!r} for {n} frames")
    return values


def _name(value: np.ndarray | str | bytes) -> str:
    """A string stored in a state dict (numpy unicode or bytes, e.g. read back from HDF5)."""
    value = np.asarray(value).item() if not isinstance(value, str | bytes) else value
    return value.decode() if isinstance(value, bytes) else str(value)


class Projections:
    """Sum and maximum images, and the sums of the two halves of the scan (mergeable).

    Which half a frame belongs to:

    - when the number of frames n is known (`n_frames_expected`), by its global index:
      index < n // 2 is the first half (with odd n the middle frame goes to the second half);
    - otherwise by its position along `split_axis` (the scan's first motor): frames on the
      `start` side of the axis's nominal midpoint (start + stop) / 2 are the first half, those
      at or past the midpoint the second. A position within 1e-9 of the span from the
      midpoint counts as at the midpoint, so that rounding does not move the middle point of
      an odd grid. For a mesh this splits by the first motor's range whatever the order of
      acquisition (zigzag or not); for a single motor scanned from start to stop it is the
      acquisition order. The index rule takes precedence when both are given.

    Frames are numbered from `start` (for a part of the scan processed elsewhere). The total
    sum is the sum of the two halves (one pass over the frames, not two).
    """

    def __init__(
        self,
        n_pixels: int,
        n_frames_expected: int | None = None,
        split_axis: MotorAxis | None = None,
        start: int = 0,
    ) -> None:
        if n_frames_expected is None and split_axis is None:
            raise ValueError(
                "the half split needs the number of frames (n_frames_expected) or the "
                "first motor's nominal range (split_axis)"
            )
        if n_frames_expected is not None and n_frames_expected < 0:
            raise ValueError("n_frames_expected must be >= 0")
        self.n_pixels = int(n_pixels)
        self.n_frames_expected = None if n_frames_expected is None else int(n_frames_expected)
        self.split_axis = split_axis
        self.next_index = int(start)
        self.halves = np.zeros((2, self.n_pixels), dtype=np.float64)
        self.maximum = np.full(self.n_pixels, -np.inf, dtype=np.float64)
        self.counts = np.zeros(2, dtype=np.int64)

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    def second_half(self, n: int, positions: Mapping[str, np.ndarray] | None) -> np.ndarray:
        """(n,) bool: which frames of a batch of n (numbered from next_index) are in the
        second half."""
        if self.n_frames_expected is not None:
            index = self.next_index + np.arange(n)
            return index >= self.n_frames_expected // 2
        axis = self.split_axis
        x = _motor_positions(positions, axis.name, n)
        direction = 1.0 if axis.stop >= axis.start else -1.0
        tolerance = 1e-9 * abs(axis.stop - axis.start)
        return (x - axis.centre) * direction >= -tolerance

    def update(self, frames: np.ndarray, positions: Mapping[str, np.ndarray] | None = None) -> None:
        _flat(frames, self.n_pixels)  # shape check
        accumulate(frames, [self.sums_plan(positions, len(frames))])

    def sums_plan(self, positions: Mapping[str, np.ndarray] | None, n_frames: int) -> SumsPlan:
        """This batch's part of a pass over the frames: each frame into its half's sum (one
        add per pixel), and the maximum."""
        plan = SumsPlan()
        if n_frames == 0:
            return plan
        second = self.second_half(n_frames, positions)
        for half, members in enumerate((~second, second)):
            if members.any():
                plan.add_group(members, self.halves[half])
        plan.maximum = self.maximum

        def after() -> None:
            self.counts += [int((~second).sum()), int(second.sum())]
            self.next_index += n_frames

        plan.after = after
        return plan

    def _rule(self) -> tuple:
        axis = self.split_axis
        return (
            self.n_frames_expected,
            None if axis is None else (axis.name, axis.start, axis.stop),
        )

    def merge(self, other: Projections) -> None:
        if other.n_pixels != self.n_pixels:
            raise ValueError("cannot merge projections of frames of different sizes")
        if other._rule() != self._rule():
            raise ValueError("cannot merge projections whose halves are split by different rules")
        self.halves += other.halves
        np.maximum(self.maximum, other.maximum, out=self.maximum)
        self.counts += other.counts
        self.next_index = max(self.next_index, other.next_index)

    def state(self) -> dict[str, np.ndarray]:
        axis = self.split_axis
        return {
            "halves": self.halves.copy(),
            "maximum": self.maximum.copy(),
            "counts": self.counts.copy(),
            "next_index": np.array(self.next_index),
            "n_frames_expected": np.array(
                -1 if self.n_frames_expected is None else self.n_frames_expected
            ),
            "split_axis": np.array("" if axis is None else axis.name),
            "split_range": np.array(
                [np.nan, np.nan, 0] if axis is None else [axis.start, axis.stop, axis.npoints],
                dtype=np.float64,
            ),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> Projections:
        n = int(state["n_frames_expected"])
        name = _name(state["split_axis"])
        start, stop, npoints = (float(v) for v in np.asarray(state["split_range"]))
        axis = MotorAxis(name, start, stop, int(npoints)) if name else None
        halves = np.asarray(state["halves"], dtype=np.float64)
        obj = cls(halves.shape[1], None if n < 0 else n, axis)
        obj.halves[...] = halves
        obj.maximum[...] = state["maximum"]
        obj.counts[...] = state["counts"]
        obj.next_index = int(state["next_index"])
        return obj

    def snapshot(self, dtype: np.dtype | type = np.float64) -> dict[str, np.ndarray] | None:
        """{"sum", "max", "sum_first_half", "sum_second_half"} images (P,); None before the
        first frame.

        `dtype` float32: the same images rounded to float32 (the sum added in float64 and
        rounded once), made in one pass each. The live snapshot's: a float64 copy of each
        then rounded was 8 passes over 32 MB images and 4 more such arrays at 2048^2, ~0.035
        s of a two-motor publish on the loaded daemon (py-spy, 2 cores)."""
        if self.count == 0:
            return None
        total = np.empty(self.n_pixels, dtype=dtype)
        np.add(self.halves[0], self.halves[1], out=total)  # a float64 loop, its result cast
        return {
            "sum": total,
            "max": self.maximum.astype(dtype),
            "sum_first_half": self.halves[0].astype(dtype),
            "sum_second_half": self.halves[1].astype(dtype),
        }


class SumsAlongMotor:
    """One summed image per distinct value of `motor` (e.g. omega in topo-tomography).

    Positions are rounded to `decimals` to decide which frames share a value, so encoder
    jitter below that does not split a projection in two. With `normalise`, the snapshot
    scales each projection so that its integrated intensity (sum over all pixels) equals the
    mean integrated intensity of all the projections, as projections are normalised before a
    tomographic reconstruction (Recon3D): the beam intensity, the number of frames per value
    and the exposure then no longer modulate the reconstruction. A projection whose
    integrated intensity is not positive is left unscaled (there is nothing to scale).
    """

    def __init__(
        self, n_pixels: int, motor: str, decimals: int = 6, normalise: bool = True
    ) -> None:
        self.n_pixels = int(n_pixels)
        self.motor = str(motor)
        self.decimals = int(decimals)
        self.normalise = bool(normalise)
        self._sums: dict[float, np.ndarray] = {}  # rounded value -> summed image (P,)
        self._counts: dict[float, int] = {}

    @property
    def values(self) -> np.ndarray:
        """The distinct rounded values seen, in order of first appearance."""
        return np.array(list(self._sums), dtype=np.float64)

    @property
    def counts(self) -> np.ndarray:
        """Frames summed into each projection, in the order of `values`."""
        return np.array(list(self._counts.values()), dtype=np.int64)

    def _add(self, value: float, image: np.ndarray, count: int) -> None:
        # one (P,) array per value: a new value never copies the others
        if value in self._sums:
            self._sums[value] += image
            self._counts[value] += count
        else:
            self._sums[value] = np.array(image, dtype=np.float64)
            self._counts[value] = count

    def update(self, frames: np.ndarray, positions: Mapping[str, np.ndarray] | None = None) -> None:
        flat = _flat(frames, self.n_pixels)
        n = flat.shape[0]
        if n == 0:
            return
        # + 0.0 turns -0.0 into 0.0, so that a projection at zero is reported as 0.0
        rounded = np.round(_motor_positions(positions, self.motor, n), self.decimals) + 0.0
        distinct, which = np.unique(rounded, return_inverse=True)
        for k, value in enumerate(distinct):
            members = which == k
            chosen = int(members.sum())
            self._add(float(value), batch_sum(flat, None if chosen == n else members), chosen)

    def merge(self, other: SumsAlongMotor) -> None:
        if (other.motor, other.decimals, other.n_pixels) != (
            self.motor,
            self.decimals,
            self.n_pixels,
        ):
            raise ValueError("cannot merge sums along different motors, roundings or frame sizes")
        for value, image in other._sums.items():
            self._add(value, image, other._counts[value])

    def state(self) -> dict[str, np.ndarray]:
        return {
            "values": self.values,
            "sums": (
                np.stack(list(self._sums.values())) if self._sums else np.zeros((0, self.n_pixels))
            ),
            "counts": self.counts,
            "motor": np.array(self.motor),
            "decimals": np.array(self.decimals),
            "normalise": np.array(self.normalise),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> SumsAlongMotor:
        sums = np.asarray(state["sums"], dtype=np.float64)
        obj = cls(
            sums.shape[1],
            _name(state["motor"]),
            int(state["decimals"]),
            bool(state["normalise"]),
        )
        for value, image, count in zip(np.asarray(state["values"]), sums, state["counts"]):
            obj._add(float(value), image, int(count))
        return obj

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        """(values (V,) sorted, images (V, P)); normalised as described in the class."""
        values = np.sort(self.values)
        n = values.size
        images = np.empty((n, self.n_pixels), dtype=np.float64)
        for row, value in enumerate(values):
            images[row] = self._sums[float(value)]
        if self.normalise and n:
            integrated = images.sum(axis=1)
            target = integrated.mean()
            positive = integrated > 0
            scale = np.ones(n)
            scale[positive] = target / integrated[positive]
            images *= scale[:, None]
        return values, images
