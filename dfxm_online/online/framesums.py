"""Per-pixel sums over a batch of frames, in one pass shared by several accumulators.

The moments (weighted sums: one row per monomial of the motor positions), the edge baseline
(sums and sums of squares over groups of frames) and the projections (sums over the two
halves of the scan, the maximum) all reduce a batch of frames pixel by pixel. Each of them
describes what it needs as a :class:`SumsPlan`; :func:`accumulate` runs the plans of one
batch together in one pass over the frames, in the compiled loops of `_framesums` (see its
source for why they are C), over pixel tiles spread on the tile threads.

Measured at 2048^2 uint16, 2 cores (bench/RESULTS.md has the current figures): the numpy
version of moments + edge baseline + projections ran at 76 frames/s; the fused pass runs
them at ~250-310 frames/s in batches of 32, ~300-360 in batches of 64, and ~430-480 in
batches of 64 since integer frames' maxima and group sums (and squares) are taken in
integers and the tile is sized to the batch (float64 products; same process, alternating,
medians of 6: 365 -> 476). Most of the rest is the 16 multiply-adds per pixel and frame of
the 15 monomials: about 70 % of the FMA units' peak on one core.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import _framesums
from .tiles import for_each_tile

#: pixels per call of the compiled pass: a multiple of its 2048-pixel tile, large enough
#: that the per-call overhead (~µs) is negligible, small enough to share out on 2 threads
PASS_PIXELS = 65536

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
        for weights, sums, single, members, gsums, gsumsq, maximum in _passes(plans):
            if weights is not None and weights.shape[0] != n_frames:
                raise ValueError(f"{weights.shape[0]} weight rows for {n_frames} frames")
            member_matrix = None
            if members:
                member_matrix = np.array(members, dtype=np.uint8).reshape(len(members), n_frames)
            # the compiled pass takes at most MAX_PASS_FRAMES frames (exact integer group
            # sums, a small converted tile): a bigger batch goes through in parts
            step = _framesums.MAX_PASS_FRAMES
            for lo in range(0, n_frames, step):
                hi = min(lo + step, n_frames)
                part = flat[lo:hi]  # rows of C-contiguous arrays: contiguous as they are
                w = None if weights is None else weights[lo:hi]
                mm = None if member_matrix is None else np.ascontiguousarray(member_matrix[:, lo:hi])

                def work(start: int, stop: int, part=part, w=w, sums=sums, single=single, mm=mm,
                         gsums=gsums, gsumsq=gsumsq, maximum=maximum) -> None:
                    _framesums.frame_pass(part, start, stop, w, sums, mm, gsums, gsumsq, maximum, single)

                for_each_tile(n_pixels, work, tile=PASS_PIXELS)
    for plan in plans:
        if plan.after is not None:
            plan.after()
