"""Per-pixel sums over a batch of frames, in one pass shared by several accumulators.

The moments (weighted sums: one row per monomial of the motor positions), the edge baseline
(sums and sums of squares over groups of frames) and the projections (sums over the two
halves of the scan, the maximum) all reduce a batch of frames pixel by pixel. Each of them
describes what it needs as a :class:`SumsPlan`; :func:`accumulate` runs the plans of one
batch together in one pass over the frames, over pixel tiles spread on the tile threads,
in the numba pass (`kernels/frame_pass.py`) or its numpy floor (:func:`numpy_frame_pass`, a
tiled `w @ x`), as `kernels.frame_pass_backend()` says.

Measured at 2048^2 uint16, 2 cores: the numpy version of moments + edge baseline +
projections ran at 76 frames/s (three passes, each converting every frame); the fused C pass
that followed at ~380-480 frames/s on AVX-512 but 12 on an AVX2-only EPYC, where the tiled
numpy product of the same sums ran at 152 (issue 20). The numba pass (register blocks of
running sums over a packed sub-tile, `kernels/frame_pass.py`) runs at the figures of
bench/RESULTS.md on every code path (host, AVX2, generic), next to the numpy tiled product.

Rounding: integer frames' group sums (and squares up to 16 bits) and maxima are exact on
every path. The dense sums differ between paths (and from `w.T @ x`) by the order of
summation and FMA contraction only: within `sum_order_bound(F)` of |sums| + sum_f
|w[f, r] * x[f, p]| per pass of F frames (float32 products: `sum_order_bound(F, True)`),
which the tests check on every path the CPU runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import kernels
from .tiles import for_each_tile

try:
    from .kernels import frame_pass as numba_pass
except ImportError:  # no numba: the numpy floor (kernels.frame_pass_backend)
    numba_pass = None

#: pixels per call of the compiled pass: a multiple of its tiles, large enough that the
#: per-call overhead (~µs) is negligible, small enough to share out on 2 threads
PASS_PIXELS = 65536

#: pixels per tile of the numpy floor: a batch's converted tile (64 frames: 2 MiB) in L2
NUMPY_TILE = 4096

#: frames per pass at most (the pass's contract since the C version: exact integer group
#: sums, a small scratch); :func:`accumulate` splits bigger batches
MAX_PASS_FRAMES = 1024

#: frame types the compiled loops read directly; anything else is converted to float64
NATIVE_TYPES = frozenset(np.dtype(t) for t in
                         (np.uint8, np.uint16, np.int16, np.uint32, np.int32, np.float32, np.float64))


@dataclass
class SumsPlan:
    """What one accumulator adds to its running sums for one batch of B frames.

    - dense rows: ``sums[r] += sum_f weights[f, r] * frame_f`` (`weights` (B, R) float64,
      `sums` (R, P) float64, C-contiguous);
    - groups: ``group_sums[g] += sum of the frames f with members[g][f]``, and the squares
      into ``group_sumsq[g]`` when it is not None (rows (P,) float64, contiguous);
    - ``maximum = max(maximum, every frame)`` when it is not None;
    - `single`: form the dense products in float32 (the sums stay float64);
    - `after`: bookkeeping to run once the sums are updated (counts, next index...).
    """

    weights: np.ndarray | None = None
    sums: np.ndarray | None = None
    members: list[np.ndarray] = field(default_factory=list)
    group_sums: list[np.ndarray] = field(default_factory=list)
    group_sumsq: list[np.ndarray | None] = field(default_factory=list)
    maximum: np.ndarray | None = None
    single: bool = False
    after: Callable[[], None] | None = None

    def add_group(self, members: np.ndarray, sums: np.ndarray, sumsq: np.ndarray | None = None) -> None:
        """Add a group of frames (bool (B,)) whose sum (and squares) go into these rows."""
        self.members.append(np.asarray(members, dtype=bool))
        self.group_sums.append(sums)
        self.group_sumsq.append(sumsq)


def sum_order_bound(n_frames: int, single: bool = False) -> float:
    """Bound on |dense sum - exact| / (|sum before| + sum_f |w[f, r] x[f, p]|) for one pass
    of `n_frames` on any path: the rounding of a sum of n_frames + 1 terms in any order
    (float64), or of float32 products and partial sums (`single`: weights and non-integer
    frames rounded to float32 as well)."""
    return (n_frames + 2) * 2.0**-53 if not single else (n_frames + 4) * 2.0**-24


def frames_for_pass(frames: np.ndarray, n_pixels: int) -> np.ndarray:
    """The batch as a C-contiguous (B, P) array of a type the compiled loops read."""
    flat = np.asarray(frames).reshape(len(frames), -1)
    if flat.shape[1] != n_pixels:
        raise ValueError(f"frames have {flat.shape[1]} pixels, expected {n_pixels}")
    if flat.dtype not in NATIVE_TYPES:
        return np.ascontiguousarray(flat, dtype=np.float64)
    return np.ascontiguousarray(flat)


def _passes(plans: Sequence[SumsPlan]) -> list[tuple]:
    """Merge the plans into as few compiled passes as possible: one pass takes one set of
    dense rows (and one precision) and one maximum, and any number of groups."""
    dense = [p for p in plans if p.weights is not None and p.weights.shape[1] > 0]
    maxima = [p.maximum for p in plans if p.maximum is not None]
    members = [m for p in plans for m in p.members]
    gsums = [s for p in plans for s in p.group_sums]
    gsumsq = [q for p in plans for q in p.group_sumsq]
    n = max(len(dense), len(maxima), 1 if members else 0)
    out = []
    for i in range(n):
        d = dense[i] if i < len(dense) else None
        out.append((
            None if d is None else np.ascontiguousarray(d.weights, dtype=np.float64),
            None if d is None else d.sums,
            bool(d.single) if d is not None else False,
            members if i == 0 else [], gsums if i == 0 else [], gsumsq if i == 0 else [],
            maxima[i] if i < len(maxima) else None,
        ))
    return out


class _Pass:
    """One pass's arrays, checked once per batch and shaped as the kernels take them; `run`
    then works any pixel range (on any thread)."""

    def __init__(self, frames: np.ndarray, weights: np.ndarray | None, sums: np.ndarray | None,
                 members: np.ndarray | None, gsums: Sequence[np.ndarray],
                 gsumsq: Sequence[np.ndarray | None] | None, maximum: np.ndarray | None, single: bool,
                 backend: str) -> None:
        frames = np.asarray(frames)
        if frames.ndim != 2 or not frames.flags.c_contiguous:
            raise ValueError("frames must be a C-contiguous (F, P) array")
        if frames.dtype not in NATIVE_TYPES:
            raise TypeError(f"unsupported frame format {frames.dtype}")
        n_frames, n_pixels = frames.shape
        if n_frames > MAX_PASS_FRAMES:
            raise ValueError(f"at most {MAX_PASS_FRAMES} frames per pass, got {n_frames}")
        if (weights is None) != (sums is None):
            raise ValueError("weights and sums go together")
        if weights is not None:
            if weights.dtype != np.float64 or sums.dtype != np.float64:
                raise TypeError("weights and sums must have format float64")
            if (weights.ndim != 2 or sums.ndim != 2 or weights.shape[0] != n_frames
                    or sums.shape != (weights.shape[1], n_pixels)):
                raise ValueError("shapes must be frames (F, P), weights (F, R), sums (R, P)")
            if not sums.flags.c_contiguous:
                raise ValueError("sums must be C-contiguous")
        groups = 0 if members is None else len(members)
        if members is not None:
            members = np.ascontiguousarray(members, dtype=np.uint8).reshape(groups, -1)
            if members.shape[1] != n_frames:
                raise ValueError("members must be (G, F)")
            gsumsq = list(gsumsq) if gsumsq is not None else [None] * groups
            if len(gsums) != groups or len(gsumsq) != groups:
                raise ValueError("gsums, gsumsq: one entry per group")
            for row in [*gsums, *(q for q in gsumsq if q is not None)]:
                if row.dtype != np.float64 or row.shape != (n_pixels,) or not row.flags.c_contiguous:
                    raise ValueError("group rows must be C-contiguous (P,) float64")
        if maximum is not None and (maximum.dtype != np.float64 or maximum.shape != (n_pixels,)):
            raise ValueError("maximum must be (P,) float64")
        self.frames, self.sums, self.single, self.backend = frames, sums, bool(single), backend
        self.weights = weights
        self.members = np.zeros((0, n_frames), np.uint8) if members is None else members
        self.gsums = list(gsums) if members is not None else []
        self.gsumsq = gsumsq if members is not None else []
        self.maximum = maximum
        self.n_pixels = n_pixels
        if backend == "numba":
            self._prepare_numba()
        else:
            self._prepare_numpy()

    def _prepare_numba(self) -> None:
        n_frames, n_pixels = self.frames.shape
        rows = 0 if self.weights is None else self.weights.shape[1]
        if rows:
            weights, row_addr = numba_dense_rows(self.weights, self.sums, self.single)
        else:
            weights, row_addr = np.zeros((n_frames, 0)), []
        groups = self._dense_groups(rows)
        if groups:
            # a group's sums in the last dense block's spare rows, weights 0 and 1: the block
            # streams every frame past anyway, where a group block reads its member frames
            # from L2 once more (half of a 2048^2 batch, one thread: a scan half's group cost
            # 14-15 ms this way against 2 ms as a 16th dense row, AVX-512 host, 2026-12-06)
            weights = np.hstack([weights, self.members[groups].T.astype(np.float64)])
            row_addr += [self.gsums[g].ctypes.data for g in groups]
        self.w = np.ascontiguousarray(weights)
        self.row_addr = np.array(row_addr, dtype=np.uint64)
        kept = [g for g in range(len(self.gsums)) if g not in groups]
        # the group rows by address (checked C-contiguous (P,) float64 above; self.sums,
        # self.gsums and self.gsumsq keep them alive while the pass runs)
        self.g_addr = np.array([self.gsums[g].ctypes.data for g in kept], dtype=np.uint64)
        self.q_addr = np.array([0 if self.gsumsq[g] is None else self.gsumsq[g].ctypes.data for g in kept],
                               dtype=np.uint64)
        self.has_sq = np.array([self.gsumsq[g] is not None for g in kept], dtype=np.bool_)
        self.max_row = self.maximum if self.maximum is not None else np.zeros(0)
        # each group's member frames by index, first in its row (the register blocks read
        # only those frames' rows of the packed sub-tile)
        members = self.members[kept]
        self.counts = members.sum(axis=1, dtype=np.int64)
        self.member_index = np.zeros(members.shape, np.int64)
        for g, row in enumerate(members):
            found = np.flatnonzero(row)
            self.member_index[g, :len(found)] = found
        self.sub = numba_pass.sub_pixels(n_frames)

    def _weighs_exactly(self, g: int) -> bool:
        """Whether group g's sum may be a row of weights 0 and 1 over every frame (a dense
        row of the numba pass, a product row of the numpy floor): for integer frames, and for
        float frames only where every frame is a member (0 x NaN or 0 x inf would be NaN)."""
        return self.frames.dtype.kind in "iu" or bool(self.members[g].all())

    def _dense_groups(self, rows: int) -> list[int]:
        """The groups (without squares) whose sums take the spare rows of the last dense
        register block: as a dense row a group's sum is the same float64 chain in frame
        order, so exact and bit-identical (`_weighs_exactly`)."""
        spare = (-rows) % numba_pass.MR if rows else 0
        return [g for g in range(len(self.gsums)) if self.gsumsq[g] is None and self._weighs_exactly(g)][:spare]

    def _prepare_numpy(self) -> None:
        groups = len(self.gsums)
        mm = self.members.astype(np.float64)
        # a group's sums as a product row of weights 0 and 1 where that is exact
        # (`_weighs_exactly`); the other groups of float frames are summed over their rows
        in_product = [g for g in range(groups) if self._weighs_exactly(g)]
        self.product_groups = in_product
        self.direct_groups = [(g, _rows_of(self.members[g])) for g in range(groups) if g not in in_product]
        mm = mm[in_product]
        # one product for the dense rows and the group sums (float64 products)
        self.wt = None if self.weights is None else self.weights.T.astype(np.float64)
        if self.wt is not None and not self.single:
            self.wt, self.mm = np.vstack([self.wt, mm]), None
        else:
            self.mm = mm
            self.wt = None if self.wt is None else self.wt.astype(np.float32)
        # each group's squares as an einsum over its member rows: a view where they are
        # consecutive (the edge bands), else gathered into the call's scratch. Half of a
        # 2048^2 batch, one thread, three edge bands: ~50 ms, where squaring the frames and a
        # product with the members took ~125 (2026-12-06)
        self.sq_groups = [(g, _rows_of(self.members[g])) for g in range(groups) if self.gsumsq[g] is not None]
        self.gather = max([_count(sel) for _, sel in self.sq_groups + self.direct_groups if isinstance(sel, np.ndarray)],
                          default=0)

    def run(self, start: int, stop: int) -> None:
        """Pixels start <= p < stop."""
        if not 0 <= start <= stop <= self.n_pixels:
            raise ValueError(f"pixel range [{start}, {stop}) outside [0, {self.n_pixels})")
        if stop == start or self.frames.shape[0] == 0:
            return
        if self.backend == "numba":
            # per-call scratch (this thread's): the packed, converted sub-tile
            xs = np.empty((self.frames.shape[0], self.sub))
            numba_pass.frame_pass(self.frames, start, stop, self.w, self.row_addr, xs, self.member_index, self.counts,
                                  self.g_addr, self.q_addr, self.has_sq, self.max_row,
                                  self.frames.dtype.kind == "f")
            return
        # this call's scratch: a converted tile of NUMPY_TILE pixels (and its rows gathered)
        n_frames = self.frames.shape[0]
        x = np.empty((n_frames, NUMPY_TILE))
        x2 = np.empty((self.gather, NUMPY_TILE)) if self.gather else None
        for a in range(start, stop, NUMPY_TILE):
            self._numpy_tile(a, min(a + NUMPY_TILE, stop), x, x2)

    def _numpy_tile(self, a: int, b: int, x: np.ndarray, x2: np.ndarray | None) -> None:
        """The numpy floor on pixels a..b: the tile converted once, one BLAS product per kind
        of sum (integer values < 2^53 sum exactly in float64, in any order)."""
        x = x[:, : b - a]
        np.copyto(x, self.frames[:, a:b], casting="unsafe")
        totals = None
        if self.wt is not None:
            products = self.wt @ (x.astype(np.float32) if self.single else x)
            rows = self.sums.shape[0]
            self.sums[:, a:b] += products[:rows]
            totals = products[rows:] if self.mm is None else None
        if self.product_groups:
            totals = self.mm @ x if totals is None else totals
            for g, total in zip(self.product_groups, totals):
                self.gsums[g][a:b] += total
        for g, sel in self.direct_groups:
            if _count(sel):
                self.gsums[g][a:b] += _member_rows(x, sel, x2).sum(axis=0)
        for g, sel in self.sq_groups:
            if _count(sel):
                part = _member_rows(x, sel, x2)
                self.gsumsq[g][a:b] += np.einsum("fp,fp->p", part, part)
        if self.maximum is not None:
            # integer frames' maximum on the frames themselves (no NaN; 2-4x fewer bytes)
            top = self.frames[:, a:b] if self.frames.dtype.kind in "iu" else x
            np.maximum(self.maximum[a:b], top.max(axis=0), out=self.maximum[a:b])


def numba_dense_rows(weights: np.ndarray, sums: np.ndarray, single: bool) -> tuple[np.ndarray, list[int]]:
    """Dense rows as the numba pass takes them: the weights (F, R) as C-contiguous float64,
    and the addresses of the R rows of `sums` (which the caller keeps alive). `single`: the
    weights rounded to float32, the products and sums float64 (the register blocks are
    float64; float32 products measured no faster in numba's previous pass,
    bench/RESULTS.md), within the float32 bound a fortiori."""
    rounded = weights.astype(np.float32) if single else weights
    return (np.ascontiguousarray(rounded, dtype=np.float64),
            [sums[r].ctypes.data for r in range(weights.shape[1])])


def _rows_of(members: np.ndarray) -> slice | np.ndarray:
    """A group's member frames: a slice where they are consecutive, else their indices."""
    found = np.flatnonzero(members)
    if len(found) and found[-1] - found[0] + 1 == len(found):
        return slice(int(found[0]), int(found[-1]) + 1)
    return found


def _count(rows: slice | np.ndarray) -> int:
    return rows.stop - rows.start if isinstance(rows, slice) else len(rows)


def _member_rows(x: np.ndarray, rows: slice | np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """x's member rows: a view of a slice, or gathered into the scratch (no new array each
    tile)."""
    if isinstance(rows, slice):
        return x[rows]
    return np.take(x, rows, axis=0, out=scratch[: len(rows), : x.shape[1]])


def frame_pass(frames: np.ndarray, start: int, stop: int, weights: np.ndarray | None,
               sums: np.ndarray | None, members: np.ndarray | None, gsums: Sequence[np.ndarray],
               gsumsq: Sequence[np.ndarray | None] | None, maximum: np.ndarray | None,
               single: bool = False, backend: str | None = None) -> None:
    """One pass over pixels start <= p < stop of a batch `frames` (F <= MAX_PASS_FRAMES, P)
    (uint8, uint16, int16, uint32, int32, float32 or float64), in this thread:

    - ``sums[r, p] += sum_f weights[f, r] * frames[f, p]`` (weights (F, R), sums (R, P) float64);
    - ``gsums[g][p] += sum of frames[f, p] with members[g, f]`` (members (G, F), G rows (P,)
      float64), and the squares into ``gsumsq[g]`` where it is not None;
    - ``maximum[p] = max(maximum[p], frames[:, p])`` (maximum (P,) float64; NaN propagates).

    weights/sums, members and maximum may be None. `single` forms the dense products in
    float32 (the sums stay float64). `backend`: "numba" or "numpy" (default: the process's,
    `kernels.frame_pass_backend()`).
    """
    _Pass(frames, weights, sums, members, gsums, gsumsq, maximum, single,
          backend or kernels.frame_pass_backend()).run(start, stop)


def accumulate(frames: np.ndarray, plans: Sequence[SumsPlan]) -> None:
    """Run the plans of several accumulators over one batch `frames` (B, H, W) or (B, P)."""
    plans = [p for p in plans if p is not None]
    if not plans:
        return
    n_frames = len(frames)
    if n_frames:
        sizes = {p.sums.shape[1] for p in plans if p.sums is not None}
        sizes |= {s.shape[0] for p in plans for s in p.group_sums}
        sizes |= {p.maximum.shape[0] for p in plans if p.maximum is not None}
        if len(sizes) > 1:
            raise ValueError(f"plans over different numbers of pixels: {sorted(sizes)}")
        n_pixels = sizes.pop() if sizes else int(np.prod(np.shape(frames)[1:]))
        flat = frames_for_pass(frames, n_pixels)
        backend = kernels.frame_pass_backend()
        for weights, sums, single, members, gsums, gsumsq, maximum in _passes(plans):
            if weights is not None and weights.shape[0] != n_frames:
                raise ValueError(f"{weights.shape[0]} weight rows for {n_frames} frames")
            member_matrix = None
            if members:
                member_matrix = np.array(members, dtype=np.uint8).reshape(len(members), n_frames)
            # a pass takes at most MAX_PASS_FRAMES frames (exact integer group sums, a small
            # scratch): a bigger batch goes through in parts
            for lo in range(0, n_frames, MAX_PASS_FRAMES):
                hi = min(lo + MAX_PASS_FRAMES, n_frames)
                job = _Pass(flat[lo:hi], None if weights is None else weights[lo:hi], sums,
                            None if member_matrix is None else member_matrix[:, lo:hi], gsums, gsumsq,
                            maximum, single, backend)
                for_each_tile(n_pixels, job.run, tile=PASS_PIXELS)
    for plan in plans:
        if plan.after is not None:
            plan.after()
