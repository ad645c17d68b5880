"""Order-statistic accumulators: medians, running minimum and a low quantile per pixel.

Unlike the power sums, order statistics cannot be reduced to a few running sums: an exact
median or quantile needs the values themselves. Each accumulator here therefore keeps the
smallest set of frames that still gives the *exact* answer, and says what that costs:

- :class:`MedianByStep` keeps every k-th frame (N/k frames) and takes their median at
  snapshot time: a background image from a subsample of the scan, exact for that subsample.
- :class:`RollingMedian` is the DCT pre-processing's moving median along the scan: it keeps
  a ring buffer of the last `window` frames and emits each frame's background as soon as the
  frames after it have arrived (a delay of window // 2 frames).
- :class:`RunningMinimum` keeps one image.
- :class:`LowQuantile` keeps the floor(q (N - 1)) + 1 smallest values of each pixel, sorted,
  which is all an exact low quantile needs when the number of frames N is bounded.

Frames are stored as they come, as uint16 when they are unsigned integers of at most 16 bits
(exact), otherwise as float32 (exact for integers below 2**24; other values are rounded to
float32 once, and the statistics are exact for the rounded values). Images are flat (P,)
float64 arrays; the caller reshapes them.

Why comparator networks: the medians and the quantile buffer are computed with fixed
sequences of compare-exchanges (one np.minimum and one np.maximum over a tile of pixels
each), the same for every pixel. np.median / np.partition along the frame axis run an
introselect per pixel instead, which at 2048 x 2048 is 10-20x slower (median of 34 frames:
2.6 s against 0.2 s; of 300 frames: 35 s against 3.7 s). Networks only move values, so the
results are exact for any dtype.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np

#: elements per vectorised compare-exchange: large enough that numpy's per-call overhead is
#: small, small enough that a tile of the working rows stays in cache
NETWORK_ELEMENTS = 131072

#: pixels per tile of a network over many rows (the quantile buffer, a long median)
NETWORK_TILE = 16384

#: outputs computed together by the rolling median (bounds its working memory for big batches)
NETWORK_OUTPUTS = 16

#: frames merged at once into the quantile buffer (a bigger batch is merged in chunks)
QUANTILE_CHUNK = 32


def storage_dtype(dtype: np.dtype | type) -> np.dtype:
    """uint16 for unsigned integers of at most 16 bits (and bool), float32 for the rest."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_ or (dtype.kind == "u" and dtype.itemsize <= 2):
        return np.dtype(np.uint16)
    return np.dtype(np.float32)


def _flat(frames: np.ndarray, n_pixels: int) -> np.ndarray:
    """(B, P) view of a batch given as (B, H, W) or (B, P)."""
    frames = np.asarray(frames)
    if frames.ndim < 2:
        raise ValueError(f"frames must be (B, H, W) or (B, P), got shape {frames.shape}")
    flat = frames.reshape(frames.shape[0], -1)
    if flat.shape[1] != n_pixels:
        raise ValueError(f"frames have {flat.shape[1]} pixels, expected {n_pixels}")
    return flat


def _to_storage(flat: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast a batch to the storage dtype, refusing what would not fit exactly in uint16."""
    if dtype == np.uint16 and not np.can_cast(flat.dtype, dtype, "safe"):
        raise ValueError(
            f"frames of dtype {flat.dtype} cannot be stored exactly as uint16 like the "
            "earlier frames; pass dtype=np.float32 when the accumulator is created"
        )
    return flat.astype(dtype, copy=False)


# ---------------------------------------------------------------------------------------
# Comparator networks

Pairs = tuple[tuple[int, int], ...]


def _batcher_pairs(m: int) -> list[tuple[int, int]]:
    """Batcher's odd-even merge sort of m wires (ascending by wire index).

    Built for the next power of two; the padding wires act as +inf, which never move, so
    their comparators are dropped."""
    n = 1
    while n < m:
        n *= 2
    pairs = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p) and i + j + k < m:
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return pairs


def _prune(pairs: Sequence[tuple[int, int]], outputs: Sequence[int]) -> Pairs:
    """The comparators that can change the values left on the `outputs` wires."""
    needed = set(outputs)
    kept = []
    for a, b in reversed(pairs):
        if a in needed or b in needed:
            kept.append((a, b))
            needed.update((a, b))
    return tuple(reversed(kept))


@functools.lru_cache(maxsize=256)
def sort_network(m: int) -> Pairs:
    """Compare-exchanges (min to the first wire) that sort m wires ascending."""
    return tuple(_batcher_pairs(m))


@functools.lru_cache(maxsize=256)
def median_network(m: int) -> Pairs:
    """Compare-exchanges that put the median rank(s) of m wires in place: rank m // 2 for
    odd m, ranks m/2 - 1 and m/2 for even m (the sort network, pruned; 32 for m = 11)."""
    return _prune(_batcher_pairs(m), [m // 2] if m % 2 else [m // 2 - 1, m // 2])


def _odd_even_merge(a: list[int], b: list[int]) -> tuple[list[tuple[int, int]], list[int]]:
    """Batcher's odd-even merge of wires `a` and `b` (each holding sorted values), for any
    lengths: (compare-exchanges, wires of the merged sequence in ascending order)."""
    if not a or not b:
        return [], a + b
    if len(a) == 1 and len(b) == 1:
        return [(a[0], b[0])], [a[0], b[0]]
    even_pairs, v = _odd_even_merge(a[0::2], b[0::2])
    odd_pairs, w = _odd_even_merge(a[1::2], b[1::2])
    pairs = even_pairs + odd_pairs
    order = [v[0]]
    for i, wire in enumerate(w):
        if i + 1 < len(v):
            pairs.append((wire, v[i + 1]))
            order += [wire, v[i + 1]]
        else:
            order.append(wire)
    order += v[len(w) + 1 :]
    return pairs, order


@functools.lru_cache(maxsize=256)
def merge_network(m: int, n: int, keep: int) -> tuple[Pairs, tuple[int, ...]]:
    """Merge sorted wires 0..m-1 with sorted wires m..m+n-1 and keep the `keep` smallest:
    (compare-exchanges, the wires that then hold ranks 0..keep-1)."""
    pairs, order = _odd_even_merge(list(range(m)), list(range(m, m + n)))
    return _prune(pairs, order[:keep]), tuple(order[:keep])


def apply_network(work: list[np.ndarray], spare: np.ndarray, pairs: Pairs) -> np.ndarray:
    """Run compare-exchanges on the arrays `work` (permuted in place); returns the spare.

    Each exchange writes the minimum into the spare array and the maximum in place, then
    swaps references: two numpy calls and no copy."""
    for a, b in pairs:
        low = np.minimum(work[a], work[b], out=spare)
        np.maximum(work[a], work[b], out=work[b])
        spare, work[a] = work[a], low
    return spare


def sliding_median(rows: Sequence[np.ndarray], m: int, out: np.ndarray) -> None:
    """out[o] = per-pixel median of rows[o : o + m], for o < len(rows) - m + 1.

    `rows` are (P,) arrays of one dtype; `out` is (n_out, P), float32 or float64. An even m
    gives the mean of the two middle values (computed in float64), as np.median does.

    Consecutive outputs are computed in pairs: windows o and o + 1 (odd m = 2h + 1) share a
    core of 2h rows, and the median of the core plus one row x is x clamped between the
    core's ranks h - 1 and h. One selection network over the core then serves both outputs
    (2x fewer compare-exchanges than a network per window).
    """
    n_out = len(rows) - m + 1
    n_pixels = rows[0].shape[0]
    dtype = rows[0].dtype
    h = m // 2
    n_pairs = n_out // 2 if m >= 3 and m % 2 else 0
    span = 2 * n_pairs  # outputs computed in pairs; the rest one network per window
    n_single = n_out - span
    tile = int(min(NETWORK_TILE, max(1024, NETWORK_ELEMENTS // max(n_pairs, n_single))))
    seq = np.empty((len(rows), tile), dtype=dtype)
    pair_pool = [np.empty((n_pairs, tile), dtype=dtype) for _ in range(m)] if n_pairs else []
    single_pool = [np.empty((n_single, tile), dtype=dtype) for _ in range(m + 1)]
    core_network = median_network(m - 1) if n_pairs else ()
    network = median_network(m)
    for start in range(0, n_pixels, tile):
        stop = min(start + tile, n_pixels)
        t = stop - start
        for r, row in enumerate(rows):
            seq[r, :t] = row[start:stop]
        if n_pairs:
            work = [b[:, :t] for b in pair_pool]
            for q in range(m - 1):  # the core of pair p: rows 2p + 1 .. 2p + m - 1
                np.copyto(work[q], seq[1 + q : 1 + q + span : 2, :t])
            spare = apply_network(work, work.pop(), core_network)
            low, high = work[h - 1], work[h]
            for side, first in ((0, 0), (1, m)):  # the extra row: 2p (left), 2p + m (right)
                np.minimum(seq[first : first + span : 2, :t], high, out=spare)
                np.maximum(spare, low, out=spare)
                out[side:span:2, start:stop] = spare
        if n_single:
            work = [b[:, :t] for b in single_pool]
            for q in range(m):
                np.copyto(work[q], seq[span + q : span + q + n_single, :t])
            apply_network(work, work.pop(), network)
            if m % 2:
                out[span:, start:stop] = work[h]
            else:
                target = out[span:, start:stop]
                np.add(work[h - 1], work[h], out=target, dtype=np.float64)
                target *= 0.5


def median_image(stack: np.ndarray) -> np.ndarray:
    """Per-pixel median (P,) float64 of a stack (n, P): np.median(stack, axis=0), faster."""
    out = np.empty((1, stack.shape[1]), dtype=np.float64)
    sliding_median(list(stack), stack.shape[0], out)
    return out[0]


# ---------------------------------------------------------------------------------------
# MedianByStep


class MedianByStep:
    """Exact per-pixel median of the frames whose global index i satisfies i % step == offset.

    Why a subsample: a median background over the whole scan needs every frame in memory;
    every `step`-th frame (N/step frames, stored as they come) is usually enough for a
    background and keeps the median exact for the frames it uses.

    Frames are numbered from `start` (the global index of the first frame this accumulator
    will see, for a part of a scan processed elsewhere) in the order they arrive. With
    `max_frames` (a bound on the scan's number of frames: global indices stay below it) the
    store is allocated once and a frame beyond the bound is refused; without it the store
    grows by doubling.

    `merge` is exact when both accumulators use the same step and offset and have seen
    disjoint index ranges: the stored frames are concatenated.
    """

    def __init__(
        self,
        n_pixels: int,
        step: int,
        max_frames: int | None = None,
        offset: int = 0,
        start: int = 0,
        dtype: np.dtype | type | None = None,
    ) -> None:
        if step < 1:
            raise ValueError("step must be >= 1")
        if not 0 <= offset < step:
            raise ValueError(f"offset must be in [0, step), got {offset} for step {step}")
        if start < 0:
            raise ValueError("start must be >= 0")
        if max_frames is not None and max_frames < start:
            raise ValueError("max_frames must be >= start")
        self.n_pixels = int(n_pixels)
        self.step = int(step)
        self.offset = int(offset)
        self.max_frames = None if max_frames is None else int(max_frames)
        self.dtype: np.dtype | None = None if dtype is None else storage_dtype(dtype)
        self.next_index = int(start)
        #: half-open global index ranges [a, b) seen so far (coalesced, sorted)
        self.ranges = np.zeros((0, 2), dtype=np.int64)
        self._frames: np.ndarray | None = None  # (capacity, P) storage, rows [:count] used
        self._indices = np.zeros(0, dtype=np.int64)
        self.count = 0  # number of stored (selected) frames

    @property
    def frames(self) -> np.ndarray:
        """The stored frames (count, P), in the storage dtype (a view: do not modify)."""
        if self._frames is None:
            return np.zeros(
                (0, self.n_pixels), dtype=np.float32 if self.dtype is None else self.dtype
            )
        return self._frames[: self.count]

    @property
    def indices(self) -> np.ndarray:
        """Global index of each stored frame (count,)."""
        return self._indices[: self.count]

    def _selected_below(self, stop: int) -> int:
        """How many indices in [0, stop) have i % step == offset."""
        return max(0, (stop - self.offset + self.step - 1) // self.step)

    def _reserve(self, needed: int) -> None:
        """Room for `needed` stored frames: with max_frames, for every selected frame still
        to come (one allocation); without, by doubling."""
        capacity = 0 if self._frames is None else self._frames.shape[0]
        if needed <= capacity:
            return
        if self.max_frames is not None:
            to_come = self._selected_below(self.max_frames) - self._selected_below(self.next_index)
            capacity = max(needed, self.count + to_come)
        else:
            capacity = max(needed, 2 * capacity, 8)
        grown = np.empty((capacity, self.n_pixels), dtype=self.dtype)
        indices = np.empty(capacity, dtype=np.int64)
        if self.count:
            grown[: self.count] = self._frames[: self.count]
            indices[: self.count] = self._indices[: self.count]
        self._frames, self._indices = grown, indices

    def update(self, frames: np.ndarray, positions: Mapping[str, np.ndarray] | None = None) -> None:
        """Add a batch (B, H, W) or (B, P); keeps the frames whose index is selected."""
        flat = _flat(frames, self.n_pixels)
        n = flat.shape[0]
        if n == 0:
            return
        first = self.next_index
        if self.max_frames is not None and first + n > self.max_frames:
            raise ValueError(
                f"frame {first + n - 1} is beyond max_frames={self.max_frames}; "
                "create the accumulator with a larger bound"
            )
        index = first + np.arange(n)
        chosen = np.flatnonzero(index % self.step == self.offset)
        if chosen.size:
            if self.dtype is None:
                self.dtype = storage_dtype(flat.dtype)
            self._reserve(self.count + chosen.size)
            rows = slice(self.count, self.count + chosen.size)
            self._frames[rows] = _to_storage(flat[chosen], self.dtype)
            self._indices[rows] = index[chosen]
            self.count += chosen.size
        self.ranges = _add_range(self.ranges, first, first + n)
        self.next_index = first + n

    def merge(self, other: MedianByStep) -> None:
        """Add the frames of another part of the same scan (disjoint frame indices)."""
        if (other.step, other.offset, other.n_pixels) != (self.step, self.offset, self.n_pixels):
            raise ValueError(
                "cannot merge medians over different steps, offsets or frame sizes: the "
                "union would not be one subsample of the scan"
            )
        if _ranges_overlap(self.ranges, other.ranges):
            raise ValueError(
                "cannot merge medians that have seen the same frame indices: frames would "
                "be counted twice (give each part its `start` index)"
            )
        if other.count:
            dtype = other.dtype if self.dtype is None else np.promote_types(self.dtype, other.dtype)
            if self._frames is not None and self._frames.dtype != dtype:
                self._frames = self._frames[: self.count].astype(dtype)
                self._indices = self._indices[: self.count].copy()
            self.dtype = dtype
            self._reserve(self.count + other.count)
            rows = slice(self.count, self.count + other.count)
            self._frames[rows] = other.frames
            self._indices[rows] = other.indices
            self.count += other.count
        for a, b in other.ranges:
            self.ranges = _add_range(self.ranges, int(a), int(b))
        self.next_index = max(self.next_index, other.next_index)
        if self.max_frames is not None and other.max_frames is not None:
            self.max_frames = max(self.max_frames, other.max_frames)
        else:
            self.max_frames = None

    def state(self) -> dict[str, np.ndarray]:
        return {
            "frames": self.frames.copy(),
            "indices": self.indices.copy(),
            "ranges": self.ranges.copy(),
            "step": np.array(self.step),
            "offset": np.array(self.offset),
            "next_index": np.array(self.next_index),
            "max_frames": np.array(-1 if self.max_frames is None else self.max_frames),
            "n_pixels": np.array(self.n_pixels),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> MedianByStep:
        max_frames = int(state["max_frames"])
        frames = np.asarray(state["frames"])
        obj = cls(
            int(state["n_pixels"]),
            int(state["step"]),
            None if max_frames < 0 else max_frames,
            offset=int(state["offset"]),
            start=0,
        )
        obj.next_index = int(state["next_index"])
        obj.ranges = np.asarray(state["ranges"], dtype=np.int64).reshape(-1, 2).copy()
        if frames.shape[0]:
            obj.dtype = frames.dtype
            obj._reserve(frames.shape[0])
            obj._frames[: frames.shape[0]] = frames
            obj._indices[: frames.shape[0]] = np.asarray(state["indices"], dtype=np.int64)
            obj.count = frames.shape[0]
        return obj

    def snapshot(self) -> np.ndarray | None:
        """The median image (P,) over the stored frames (exact), or None before the first."""
        if self.count == 0:
            return None
        return median_image(self.frames)


def _add_range(ranges: np.ndarray, a: int, b: int) -> np.ndarray:
    """Union of sorted disjoint half-open ranges with [a, b), coalesced."""
    if b <= a:
        return ranges
    rows = sorted([(int(x), int(y)) for x, y in ranges] + [(a, b)])
    out: list[list[int]] = []
    for x, y in rows:
        if out and x <= out[-1][1]:
            out[-1][1] = max(out[-1][1], y)
        else:
            out.append([x, y])
    return np.array(out, dtype=np.int64).reshape(-1, 2)


def _ranges_overlap(r1: np.ndarray, r2: np.ndarray) -> bool:
    return any(a1 < b2 and a2 < b1 for a1, b1 in r1 for a2, b2 in r2)


# ---------------------------------------------------------------------------------------
# RollingMedian


class RollingMedian:
    """Per-pixel moving median along the scan (the DCT pre-processing's background).

    Frame i's background is the median of frames i - w//2 .. i + w//2 (w = `window`, odd),
    pixel by pixel. At the ends of the scan the window is truncated to the frames that exist:
    frame 0 uses frames 0 .. w//2, the last frame the last w//2 + 1 frames. A truncated window
    may hold an even number of frames; its median is then the mean of the two middle values
    (as np.median).

    Frame i's background is final once frame i + w//2 has arrived, so the output lags the
    input by w//2 frames: `update` computes the backgrounds that became final, `pop_ready`
    hands them over, and `finish` computes the truncated windows of the last w//2 frames at
    the end of the scan. Only the last w frames are kept (a ring buffer), plus the
    backgrounds not yet popped.

    Not mergeable: a window that straddles two parts needs frames from both, which neither
    part kept.
    """

    def __init__(self, n_pixels: int, window: int, dtype: np.dtype | type | None = None) -> None:
        if window < 1 or window % 2 == 0:
            raise ValueError(f"the rolling median window must be odd and >= 1, got {window}")
        self.n_pixels = int(n_pixels)
        self.window = int(window)
        self.half = self.window // 2
        self.dtype: np.dtype | None = None if dtype is None else storage_dtype(dtype)
        self.frame_shape: tuple[int, ...] | None = None
        self._ring: np.ndarray | None = None  # (window, P): frame g lives in row g % window
        self.next_index = 0  # frames received
        self.next_final = 0  # backgrounds computed (frames 0 .. next_final - 1)
        self.finished = False
        self._pending_index: list[np.ndarray] = []
        self._pending: list[np.ndarray] = []
        self._latest: np.ndarray | None = None

    def _row(self, index: int, batch: np.ndarray | None = None, first: int = 0) -> np.ndarray:
        """Frame `index`: from the batch (frames first .. first + B - 1) or the ring."""
        if batch is not None and index >= first:
            return batch[index - first]
        return self._ring[index % self.window]

    def _compute(self, stop: int, n_frames: int, batch: np.ndarray | None, first: int) -> None:
        """Backgrounds of frames next_final .. stop - 1, with n_frames frames in the scan."""
        h = self.half
        i = self.next_final
        while i < stop:
            lo, hi = max(0, i - h), min(n_frames, i + h + 1)
            if hi - lo < self.window:
                # truncated window (scan start or end): its own size, one frame at a time
                out = np.empty((1, self.n_pixels), dtype=np.float32)
                sliding_median([self._row(g, batch, first) for g in range(lo, hi)], hi - lo, out)
                count = 1
            else:
                # full windows: consecutive outputs share all but one frame of their windows
                count = 1
                while (
                    count < NETWORK_OUTPUTS
                    and i + count < stop
                    and i + count - h >= 0
                    and i + count + h < n_frames
                ):
                    count += 1
                rows = [self._row(g, batch, first) for g in range(i - h, i + count + h)]
                out = np.empty((count, self.n_pixels), dtype=np.float32)
                sliding_median(rows, self.window, out)
            self._pending_index.append(np.arange(i, i + count))
            self._pending.append(out)
            self._latest = out[-1].copy()  # the caller may modify what it pops
            i += count
        self.next_final = max(self.next_final, stop)

    def update(self, frames: np.ndarray, positions: Mapping[str, np.ndarray] | None = None) -> None:
        """Add a batch (B, H, W) or (B, P); computes the backgrounds that became final."""
        if self.finished:
            raise ValueError("the rolling median was finished; no more frames can be added")
        flat = _flat(frames, self.n_pixels)
        n = flat.shape[0]
        if n == 0:
            return
        if self.frame_shape is None:
            self.frame_shape = tuple(np.asarray(frames).shape[1:])
        if self.dtype is None:
            self.dtype = storage_dtype(flat.dtype)
        if self._ring is None:
            self._ring = np.zeros((self.window, self.n_pixels), dtype=self.dtype)
        batch = _to_storage(flat, self.dtype)
        first = self.next_index
        total = first + n
        # frame i is final when frame i + half has arrived
        self._compute(total - self.half, np.iinfo(np.int64).max, batch, first)
        for g in range(max(first, total - self.window), total):
            self._ring[g % self.window] = batch[g - first]
        self.next_index = total

    def _take(self) -> tuple[np.ndarray, np.ndarray]:
        shape = self.frame_shape or (self.n_pixels,)
        if not self._pending:
            return np.zeros(0, dtype=np.int64), np.zeros((0, *shape), dtype=np.float32)
        index = np.concatenate(self._pending_index)
        images = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending_index, self._pending = [], []
        return index, images.reshape(len(index), *shape)

    def pop_ready(self) -> tuple[np.ndarray, np.ndarray]:
        """(indices (n,), backgrounds (n, H, W) float32) of the frames made final since the
        last call (frames given as (B, P) give (n, P) backgrounds).

        float32 is exact here: the median of uint16 frames is an integer or a half-integer
        below 2**16, and for float32 frames it is the value np.median returns."""
        return self._take()

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """End of the scan: compute the last w//2 backgrounds (truncated windows) and return
        everything not yet popped, like :meth:`pop_ready`."""
        if not self.finished:
            self._compute(self.next_index, self.next_index, None, self.next_index)
            self.finished = True
        return self._take()

    def merge(self, other: RollingMedian) -> None:
        raise ValueError(
            "a rolling median cannot be merged exactly: the windows that straddle the two "
            "parts need frames that neither part kept; process the scan in one accumulator"
        )

    def state(self) -> dict[str, np.ndarray]:
        # the ring in frame order (oldest first), only the frames received
        kept = range(max(0, self.next_index - self.window), self.next_index)
        ring = (
            np.stack([self._ring[g % self.window] for g in kept])
            if self._ring is not None and len(kept)
            else np.zeros(
                (0, self.n_pixels), dtype=np.float32 if self.dtype is None else self.dtype
            )
        )
        pending_index = (
            np.concatenate(self._pending_index) if self._pending else np.zeros(0, np.int64)
        )
        pending = (
            np.concatenate(self._pending)
            if self._pending
            else np.zeros((0, self.n_pixels), dtype=np.float32)
        )
        shape = self.frame_shape or ()
        return {
            "n_pixels": np.array(self.n_pixels),
            "window": np.array(self.window),
            "frame_shape": np.array(shape, dtype=np.int64),
            "ring": ring,
            "next_index": np.array(self.next_index),
            "next_final": np.array(self.next_final),
            "finished": np.array(self.finished),
            "pending_index": pending_index,
            "pending": pending,
            "latest": np.zeros(0, np.float32) if self._latest is None else self._latest.copy(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> RollingMedian:
        obj = cls(int(state["n_pixels"]), int(state["window"]))
        shape = tuple(int(s) for s in np.asarray(state["frame_shape"]))
        obj.frame_shape = shape or None
        obj.next_index = int(state["next_index"])
        obj.next_final = int(state["next_final"])
        obj.finished = bool(state["finished"])
        ring = np.asarray(state["ring"])
        if ring.shape[0]:
            obj.dtype = ring.dtype
            obj._ring = np.zeros((obj.window, obj.n_pixels), dtype=ring.dtype)
            first = obj.next_index - ring.shape[0]
            for r in range(ring.shape[0]):
                obj._ring[(first + r) % obj.window] = ring[r]
        pending = np.asarray(state["pending"], dtype=np.float32)
        if pending.shape[0]:
            obj._pending = [pending.copy()]
            obj._pending_index = [np.asarray(state["pending_index"], dtype=np.int64).copy()]
        latest = np.asarray(state["latest"], dtype=np.float32)
        obj._latest = latest.copy() if latest.size else None
        return obj

    def snapshot(self) -> np.ndarray | None:
        """The latest final background (P,) float64, or None before the first one."""
        return None if self._latest is None else self._latest.astype(np.float64)


# ---------------------------------------------------------------------------------------
# RunningMinimum


class RunningMinimum:
    """Per-pixel minimum over all frames seen (mergeable: the minimum of the minima)."""

    def __init__(self, n_pixels: int) -> None:
        self.minimum = np.full(n_pixels, np.inf, dtype=np.float64)
        self.count = 0

    def update(self, frames: np.ndarray, positions: Mapping[str, np.ndarray] | None = None) -> None:
        flat = _flat(frames, self.minimum.shape[0])
        if flat.shape[0]:
            # reduce in the frames' own dtype (cheap), convert one image
            np.minimum(self.minimum, flat.min(axis=0), out=self.minimum)
            self.count += flat.shape[0]

    def merge(self, other: RunningMinimum) -> None:
        if other.minimum.shape != self.minimum.shape:
            raise ValueError("cannot merge minima of frames of different sizes")
        np.minimum(self.minimum, other.minimum, out=self.minimum)
        self.count += other.count

    def state(self) -> dict[str, np.ndarray]:
        return {"minimum": self.minimum.copy(), "count": np.array(self.count)}

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> RunningMinimum:
        obj = cls(np.asarray(state["minimum"]).shape[0])
        obj.minimum[...] = state["minimum"]
        obj.count = int(state["count"])
        return obj

    def snapshot(self) -> np.ndarray | None:
        """The minimum image (P,), or None before the first frame."""
        return None if self.count == 0 else self.minimum.copy()


# ---------------------------------------------------------------------------------------
# LowQuantile


def lower_rank(n: int, q: float) -> int:
    """0-based rank of the q-quantile of n values with np.quantile(method='lower')."""
    return int(np.floor((n - 1) * q))


class LowQuantile:
    """Exact per-pixel q-quantile over the frames, as np.quantile(..., method="lower").

    The "lower" quantile of n values is the value of rank floor(q (n - 1)) (0-based) in
    sorted order: an observed value, never an interpolation. Its rank grows with n, so when
    the scan has at most `max_frames` frames, the K = floor(q (max_frames - 1)) + 1 smallest
    values of each pixel are all that is ever needed, at any point of the scan. They are kept
    sorted in a (K, P) buffer, so that a snapshot is one row of it (no selection at snapshot
    time). A batch is sorted per pixel (a sorting network) and merged into the buffer
    (Batcher's odd-even merge, pruned to the K smallest outputs): about 20 compare-exchanges
    per frame and pixel for K = 100. Memory: K frames, e.g. q = 0.1 over 1000 frames keeps 100.

    Exact and mergeable (the K smallest of a union are the K smallest of the parts' K
    smallest); the bound is required because an exact online quantile with unbounded N
    would need every value. A frame beyond `max_frames` is refused.
    """

    def __init__(
        self, n_pixels: int, q: float, max_frames: int, dtype: np.dtype | type | None = None
    ) -> None:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {q}")
        if max_frames < 1:
            raise ValueError("max_frames must be >= 1")
        self.n_pixels = int(n_pixels)
        self.q = float(q)
        self.max_frames = int(max_frames)
        self.capacity = lower_rank(self.max_frames, self.q) + 1  # K
        self.dtype: np.dtype | None = None if dtype is None else storage_dtype(dtype)
        self._low: np.ndarray | None = None  # (K, P): rows [:kept] sorted ascending per pixel
        self.count = 0  # frames seen

    @property
    def kept(self) -> int:
        return min(self.count, self.capacity)

    def _allocate(self, dtype: np.dtype) -> None:
        self.dtype = dtype
        self._low = np.empty((self.capacity, self.n_pixels), dtype=dtype)

    def _merge_sorted(self, values: np.ndarray, presorted: bool) -> None:
        """Merge rows (R, P) into the buffer, keeping the K smallest of each pixel, sorted.

        `presorted`: the rows are already sorted per pixel (another buffer)."""
        have, extra = self.kept, values.shape[0]
        keep = min(have + extra, self.capacity)
        pairs, order = merge_network(have, extra, keep)
        if not presorted:
            shifted = tuple((a + have, b + have) for a, b in sort_network(extra))
            pairs = shifted + pairs
        tile = NETWORK_TILE
        pool = np.empty((have + extra + 1, tile), dtype=self.dtype)
        for start in range(0, self.n_pixels, tile):
            stop = min(start + tile, self.n_pixels)
            t = stop - start
            pool[:have, :t] = self._low[:have, start:stop]
            pool[have : have + extra, :t] = values[:, start:stop]
            work = [row[:t] for row in pool]
            apply_network(work, work.pop(), pairs)
            for rank, wire in enumerate(order):
                self._low[rank, start:stop] = work[wire]

    def update(self, frames: np.ndarray, positions: Mapping[str, np.ndarray] | None = None) -> None:
        flat = _flat(frames, self.n_pixels)
        n = flat.shape[0]
        if n == 0:
            return
        if self.count + n > self.max_frames:
            raise ValueError(
                f"{self.count + n} frames exceed max_frames={self.max_frames}: the quantile "
                "would no longer be exact; create the accumulator with a larger bound"
            )
        if self._low is None:
            self._allocate(storage_dtype(flat.dtype) if self.dtype is None else self.dtype)
        values = _to_storage(flat, self.dtype)
        for start in range(0, n, QUANTILE_CHUNK):
            chunk = values[start : start + QUANTILE_CHUNK]
            self._merge_sorted(chunk, presorted=False)
            self.count += chunk.shape[0]

    def merge(self, other: LowQuantile) -> None:
        """Add the frames of another part of the scan (exact)."""
        if (other.q, other.max_frames, other.n_pixels) != (self.q, self.max_frames, self.n_pixels):
            raise ValueError("cannot merge quantiles with different q, max_frames or frame sizes")
        if self.count + other.count > self.max_frames:
            raise ValueError(
                f"merged parts have {self.count + other.count} frames, more than "
                f"max_frames={self.max_frames}: the quantile would no longer be exact"
            )
        if other.count == 0:
            return
        if self._low is None:
            self._allocate(other.dtype)
        elif self.dtype != other.dtype:
            self.dtype = np.promote_types(self.dtype, other.dtype)
            self._low = self._low.astype(self.dtype)
        theirs = other._low[: other.kept].astype(self.dtype, copy=False)
        self._merge_sorted(theirs, presorted=True)
        self.count += other.count

    def state(self) -> dict[str, np.ndarray]:
        low = (
            self._low[: self.kept].copy()
            if self._low is not None
            else np.zeros((0, self.n_pixels), dtype=np.float32)
        )
        return {
            "low": low,
            "count": np.array(self.count),
            "q": np.array(self.q),
            "max_frames": np.array(self.max_frames),
            "n_pixels": np.array(self.n_pixels),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> LowQuantile:
        obj = cls(int(state["n_pixels"]), float(state["q"]), int(state["max_frames"]))
        low = np.asarray(state["low"])
        obj.count = int(state["count"])
        if obj.count:
            obj._allocate(low.dtype)
            obj._low[: low.shape[0]] = low
        return obj

    def snapshot(self) -> np.ndarray | None:
        """The q-quantile image (P,) of the frames so far (exact), or None before the first."""
        if self.count == 0:
            return None
        return self._low[lower_rank(self.count, self.q)].astype(np.float64)
