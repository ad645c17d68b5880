"""The pass over a batch of frames, compiled with numba (see `online/framesums.py` for what
it computes and `kernels/__init__.py` for when it is used).

For pixels start <= p < stop of a batch `frames` (F, P):

    sums[r, p]   += sum_f weights[f, r] * frames[f, p]     (dense rows: the monomials)
    gsums[g][p]  += sum of frames[f, p] over members of g  (frame groups: edge bands, halves)
    gsumsq[g][p] += the same with squares                  (where wanted)
    maximum[p]    = max(maximum[p], max_f frames[f, p])    (NaN propagates, as numpy)

How, per sub-tile of pixels (SUB: as many as keep the batch's converted sub-tile within
XS_BYTES, in L2): every frame's row of the sub-tile is read once from memory, converted
to float64 into a packed (F, SUB) buffer (by a loop, or by the first dense blocks, below);
then the dense sums are a small matrix product of that buffer, made by register blocks of
MR rows x NV vectors of running sums that stay in registers while all F frames stream past
(`dense_block.py`, LLVM vectors sized for the target), and each group's sums (and squares)
and the maximum are register blocks of NV vectors over the group's member frames
(`group_block.py`). The running sums in memory are read and written once per pass.

What the dense blocks also do, since every frame vector passes through their registers
(single thread, half of a 64-frame 2048^2 uint16 batch with the compute core's plans, host
AVX-512, 2026-12-06: the pass 160 ms before these three, 123 ms after):
- on 32-register targets of Intel's (`dense_block.PACK_IN_BLOCK`) the first rows' blocks
  read the frames, convert them and store the packed sub-tile themselves, in place of a
  packing loop that wrote it and the blocks that read it back (-13 ms; on 16-register
  targets it spilled; on AMD's Zen 4 it cost 5-25 % of the compute core);
- on FMA targets (`dense_block.MAX_IN_BLOCK`) the first rows' blocks take the maximum of
  integer frames, one vmaxpd per frame vector (-12 ms, where the max block read the
  sub-tile once more);
- sum-only groups take the last block's spare rows as rows of weights 0 and 1
  (`framesums._Pass._dense_groups`; a 16th row cost 2 ms where the scan half's group block
  cost 14-15).

History (issue 20): the C pass held an 8 rows x 16 pixels block in AVX-512 registers and
spilled on a 16-register AVX2 CPU (12 frames/s); the first numba pass, innermost loops over
pixels (numba's loop vectorizer works on innermost loops only), loaded and stored its
running sums every 8 frames: 12-13 GFMA/s per core here at 2048^2, against 14-15 for this
pass (19.5 in cache, 26-27 for the register block alone; one thread, 64 frames, 15 rows,
AVX-512 host under load).

Arrays are indexed, never sliced, inside the loops: a slice is a view whose reference count
numba updates atomically (~40 % of the time in a first version). Offsets into the pixel
axis are unsigned, so that numba emits no negative-index wraparound, which would turn the
loads into gathers.

Group sums, squares and maxima: exact for integer frames (16-bit squares included) on every
path, see `group_block.py`. Before, they were taken in integers within the sub-tile while
packing, each member frame's row added into scratch rows in memory (one load, add and store
per pixel, frame and group): single-thread, 64 frames of a 2048^2 uint16 batch with the
compute core's groups, the pass took 182-191 ms with them against 161-177 ms with the
register blocks (same machine, ymm; the compute core 312-314 against 326-347 frames/s,
alternating). (Tried and not kept before that: group sums, squares and maximum in float64
from the packed row by numba loops, the first group summed in the packing loop itself: 281
against 315 frames/s; the conversion and the maximum in one loop, a group's sum and squares
in one loop: 277 against 297.)
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import l2_cache_bytes
from .dense_block import (
    BLOCK_PIXELS,
    MAX_IN_BLOCK,
    MR,
    PACK_IN_BLOCK,
    VECTOR,
    dense_block_rows,
    prefetch,
)
from .group_block import (
    GROUP_1,
    GROUP_1_SQ,
    GROUP_NV,
    GROUP_NV_SQ,
    GROUP_PIXELS,
    MAX_1,
    MAX_1_INT,
    MAX_NV,
    MAX_NV_INT,
)
from .rows import row as _row


def sub_tile_bytes(l2: int | None) -> int:
    """Bytes of the packed, converted sub-tile of a batch on a CPU whose L2 holds `l2` bytes
    (None: not known): a quarter of the L2, at most 256 KB. The sub-tile stays in L2 while
    the register blocks read it once per MR rows, beside the sub-tile's frame rows (and the
    next ones, prefetched) and its rows of sums.

    Measured: on an Intel Xeon (2 MB L2) 256 KB was best (64 frames: 512 pixels; 1024 and
    2048 pixels were 5-10 % slower). On an AMD EPYC Zen 3 (512 KB L2), where 256 KB left
    too little room for the rest, 128 KB was best: one thread, half of a 64-frame 2048^2
    uint16 batch with the compute core's plans, median of 8 alternating runs in one process,
    32 / 64 / 96 / 128 / 192 / 256 KB: 288 / 259 / 276 / 233 / 263 / 276 ms; the compute
    core on both cores, 8 alternating rounds in one process, twice: 128 KB 273-283
    frames/s (median), 256 KB 250-271 (2026-12-07)."""
    return 256 * 1024 if l2 is None else max(32 * 1024, min(256 * 1024, l2 // 4))


#: bytes of the packed, converted sub-tile of a batch on this CPU (`sub_tile_bytes`)
XS_BYTES = sub_tile_bytes(l2_cache_bytes())
#: pixels windowed at once by `windowed_pass`: their window coefficients (K rows: 6 for two
#: motors, 12 KB) stay in L1 while the batch's frames stream past
WINDOW_PIXELS = 256
#: pixels per box of the moment window (`MomentWindow.boxes`): the granularity at which the
#: windowed pass skips the frames outside every window of a sub-tile (`windowed_pass`), a
#: multiple of the register block near 128. On a 2048^2 16 x 15 mesh (half the pixels
#: without a window) sub-tiles of one box needed 68 % of the frames at 512 pixels, 54 % at
#: 256, 46 % at 128 and 41 % at 64 (in memory, 240 frames, batches of 32, one run each:
#: 246-250 / 278 / 315-341 / 308-351 frames/s against 190-208 for every frame; AMD EPYC
#: Zen 3, AVX2, 2026-12-07); with boxes joined into longer sub-tiles where they need the
#: same frames (MERGE_COST), 370-381
BOX_PIXELS = max(1, 128 // BLOCK_PIXELS) * BLOCK_PIXELS
#: cache lines of a frame row fetched ahead per prefetch (64 bytes)
_LINE = 64


def sub_pixels(n_frames: int) -> int:
    """Pixels per sub-tile for a pass of `n_frames`: a multiple of the register block."""
    sub = XS_BYTES // (8 * max(n_frames, 1))
    return int(max(BLOCK_PIXELS, min(sub, 4096) // BLOCK_PIXELS * BLOCK_PIXELS))


@njit(nogil=True, cache=True)
def _dense(xs, w, rows, n_frames, sx, n, top, frames, pack):
    """S[:, sx:sx + n] += w[:n_frames].T @ xs[:n_frames, :n] (S: the float64 rows at the
    addresses `rows`): register blocks over the rows and the pixels, single vectors for what
    is left of n, scalars for the last < VECTOR. With `pack` and PACK_IN_BLOCK the first
    rows' blocks read the frames at pixel sx and pack the sub-tile's first n // VECTOR *
    VECTOR pixels into xs for the others (the caller packs the rest; without `pack` xs holds
    the sub-tile already: `windowed_pass`); `top`: 0, or the address of the maximum's element
    for pixel sx, which they raise to the frames' maximum over those pixels (integer frames:
    `frame_pass`)."""
    n_rows = rows.shape[0]
    n_blocks = n // BLOCK_PIXELS * BLOCK_PIXELS
    n_vec = n // VECTOR * VECTOR
    for r in range(0, n_rows, MR):
        dense_block_rows(xs, w, rows, r, min(MR, n_rows - r), sx, n_blocks, n_vec, n_frames,
                         top if r == 0 else np.uint64(0), frames, pack and PACK_IN_BLOCK and r == 0)
    for r in range(n_rows):
        if n_vec < n:
            row = _row(rows[r], sx, n)
            for i in range(n_vec, n):
                acc = 0.0
                for f in range(n_frames):
                    acc += w[f, r] * xs[f, i]
                row[i] += acc


@njit(nogil=True, cache=True)
def _groups(xs, members, counts, gsums, gsumsq, has_sq, t0, n):
    """Each group's sums (and squares) over the packed sub-tile's first n pixels, added to its
    rows at t0: register blocks, then single vectors, then scalars."""
    n_blocks = n // GROUP_PIXELS * GROUP_PIXELS
    n_vec = n // VECTOR * VECTOR
    for g in range(members.shape[0]):
        count = counts[g]
        if count == 0:
            continue
        row, sq = gsums[g], gsumsq[g]
        for p in range(0, n_blocks, GROUP_PIXELS):
            if has_sq[g]:
                GROUP_NV_SQ(xs, members, g, count, row, sq, p, t0 + p)
            else:
                GROUP_NV(xs, members, g, count, row, sq, p, t0 + p)
        for p in range(n_blocks, n_vec, VECTOR):
            if has_sq[g]:
                GROUP_1_SQ(xs, members, g, count, row, sq, p, t0 + p)
            else:
                GROUP_1(xs, members, g, count, row, sq, p, t0 + p)
        if n_vec < n:
            sums = _row(row, t0, n)
            squares = _row(sq, t0, n) if has_sq[g] else sums
            for i in range(n_vec, n):
                acc = 0.0
                acc_sq = 0.0
                for k in range(count):
                    x = xs[members[g, k], i]
                    acc += x
                    acc_sq += x * x
                sums[i] += acc
                if has_sq[g]:
                    squares[i] += acc_sq


@njit(nogil=True, cache=True)
def _maximum(xs, n_frames, maximum, t0, n, nans, tail_only):
    """maximum[t0:t0 + n] = max(itself, the packed sub-tile's first n pixels) (`nans`: the
    values may be NaN, which then stays); `tail_only`: only the last n % VECTOR pixels (the
    dense blocks took the others)."""
    n_vec = n // VECTOR * VECTOR
    n_blocks = n_vec if tail_only else n // GROUP_PIXELS * GROUP_PIXELS
    for p in range(n_vec if tail_only else 0, n_blocks, GROUP_PIXELS):
        if nans:
            MAX_NV(xs, n_frames, maximum, p, t0 + p)
        else:
            MAX_NV_INT(xs, n_frames, maximum, p, t0 + p)
    for p in range(n_blocks, n_vec, VECTOR):
        if nans:
            MAX_1(xs, n_frames, maximum, p, t0 + p)
        else:
            MAX_1_INT(xs, n_frames, maximum, p, t0 + p)
    for i in range(n_vec, n):
        top = xs[0, i]
        for f in range(1, n_frames):
            v = xs[f, i]
            top = v if (v > top or v != v) else top
        a = maximum[t0 + i]
        maximum[t0 + i] = top if (top > a or top != top) else a  # a NaN maximum stays NaN


@njit(nogil=True, cache=True)
def frame_pass(frames, start, stop, w, rows, xs, members, counts, gsums, gsumsq, has_sq, maximum, nans):
    """One pass over pixels start..stop (0 <= start <= stop <= P) of `frames` (F, P) (see
    the module docstring).

    `w` (F, R) float64 weights; `rows` (R,) uint64: the addresses of R C-contiguous (P,)
    float64 rows of sums (R may be 0), which the caller keeps alive; `xs` (F, SUB) float64
    scratch (SUB a multiple of BLOCK_PIXELS); `members` (G, F) int64: group g's member
    frames are members[g, :counts[g]]; `gsums`, `gsumsq` (G,) uint64: the addresses of G
    C-contiguous (P,) float64 rows, which the caller keeps alive (`gsumsq[g]` used where
    `has_sq[g]`); `maximum` (P,) float64 or empty (none); `nans`: the frames are floats (and
    may hold NaN, which the maximum keeps).
    """
    n_frames = frames.shape[0]
    n_rows = rows.shape[0]
    use_max = maximum.shape[0] > 0
    sub = xs.shape[1]
    ahead = _LINE // frames.itemsize
    for t0 in range(start, stop, sub):
        n = min(sub, stop - t0)
        tu = np.uint64(t0)
        nxt = t0 + sub
        # with dense rows, their first blocks may pack the sub-tile's vectors (`_dense`):
        # then only the last n % VECTOR pixels are packed here
        packed = n // VECTOR * VECTOR if n_rows > 0 and PACK_IN_BLOCK else 0
        for f in range(n_frames):
            # two loops: the one from 0 vectorizes better (the packing alone took 53 ms per
            # half batch with a start of 0 given as a variable, 32 ms as written)
            if packed == 0:
                for i in range(n):
                    xs[f, i] = frames[f, tu + np.uint64(i)]
            else:
                for i in range(packed, n):
                    xs[f, i] = frames[f, tu + np.uint64(i)]
            if nxt < stop:  # the next sub-tile's row of this frame, while this one computes
                for i in range(0, min(sub, stop - nxt), ahead):
                    prefetch(frames, f, nxt + i)
        # the maximum of integer frames (never NaN) in the first dense rows' blocks, which
        # hold the frame vectors in registers anyway: one pass over the sub-tile fewer
        fused = use_max and n_rows > 0 and not nans and MAX_IN_BLOCK
        if n_rows > 0:
            top = np.uint64(maximum.ctypes.data + 8 * t0) if fused else np.uint64(0)
            _dense(xs, w, rows, n_frames, t0, n, top, frames, True)
        _groups(xs, members, counts, gsums, gsumsq, has_sq, t0, n)
        if use_max:
            _maximum(xs, n_frames, maximum, t0, n, nans, fused)


@njit(nogil=True, cache=True, inline="always")
def _window_row(frames, offset, mono, coef, rho2, f, tu, n, out, fo, ou, n_terms):
    """Frame f's windowed values of pixels tu..tu+n into out[fo, ou..ou+n] (see
    `window_values`). Called with a literal `n_terms` (2, 5, 9: one to three motors), the
    loop over the terms has a known length: it unrolls and the loop over the pixels
    vectorizes, with the same sums in the same order as any other call."""
    for i in range(n):
        p = tu + np.uint64(i)
        q = coef[n_terms, p]
        for k in range(n_terms):
            q = q + coef[k, p] * mono[f, k]
        # loaded whatever q, then selected: loads under the condition would need masked
        # loads, which AVX2 lacks for 16-bit frames, and the loop stayed scalar there
        x = frames[f, p] - offset[p]
        out[fo, ou + np.uint64(i)] = x if q <= rho2 else 0.0


@njit(nogil=True, cache=True)
def window_values(frames, offset, mono, coef, rho2, t0, n, out, o, act, n_act):
    """out[k, o + i] = frames[f, t0 + i] - offset[t0 + i] where frame f = act[k]'s point
    lies within pixel t0 + i's window, else 0, for i < n and k < n_act (`act`: all the
    frames in order, or those a sub-tile needs: `windowed_pass`) (`online/moment_window.py`:
    the point's quadratic form q = coef[K, p] + sum_k mono[f, k] coef[k, p], K = the last
    row, summed in that order, inside where q <= rho2). One rule for the window's step
    (`MomentWindow.apply`) and for the windowed pass below."""
    n_terms = coef.shape[0] - 1
    tu, ou = np.uint64(t0), np.uint64(o)  # unsigned: no wraparound, the loops vectorize
    for k in range(n_act):
        f = act[k]
        if n_terms == 5:  # two motors
            _window_row(frames, offset, mono, coef, rho2, f, tu, n, out, k, ou, 5)
        elif n_terms == 2:  # one motor
            _window_row(frames, offset, mono, coef, rho2, f, tu, n, out, k, ou, 2)
        elif n_terms == 9:  # three motors
            _window_row(frames, offset, mono, coef, rho2, f, tu, n, out, k, ou, 9)
        else:
            _window_row(frames, offset, mono, coef, rho2, f, tu, n, out, k, ou, n_terms)


@njit(nogil=True, cache=True)
def frames_in_box(points, boxes, c, inside):
    """inside[f] = whether frame f's point lies in box c; returns how many. `points` (F, M):
    each frame's point in the window's reduced coordinates; `boxes` (C, 2, M): each chunk's
    lowest and highest coordinates of its pixels' windows (`MomentWindow.boxes`; an empty
    chunk's low above its high: no frame)."""
    m = points.shape[1]
    count = 0
    for f in range(points.shape[0]):
        yes = True
        for i in range(m):
            x = points[f, i]
            if not (boxes[c, 0, i] <= x <= boxes[c, 1, i]):
                yes = False
                break
        inside[f] = yes
        count += yes
    return count


#: a box joins the sub-tile before it while summing the union of their frames over both
#: costs at most this much more than each its own frames: sub-tiles of one box (~128 pixels)
#: made the pass 10-15 % slower than 504-pixel ones where every frame was needed (their
#: per-sub-tile costs, short rows of 32 frames), and where the boxes need the same frames a
#: longer sub-tile costs nothing more
MERGE_COST = 1.1


@njit(nogil=True, cache=True)
def windowed_pass(frames, start, stop, offset, mono, coef, rho2, w, rows, xs, points, boxes, chunk, act, w_act,
                  inside):
    """The dense sums of the frames windowed by `window_values`, pixels start..stop:
    S_r[p] += sum_f w[f, r] x (frames[f, p] - offset[p] inside the window, else 0), the S_r
    at the addresses `rows` (see `frame_pass`). Each sub-tile's windowed values are packed
    straight into `xs` (F, SUB) (float64), which the dense register blocks then read: no
    windowed copy of the frames in memory.

    Only the frames whose point lies in the box of some chunk of `chunk` pixels in the
    sub-tile (`MomentWindow.boxes`) are windowed and summed, their weights gathered into
    `w_act` (F, R) and their indices into `act` (F,): every other frame is outside every
    window of the sub-tile, its values all 0, and the sums skip nothing but additions of
    zeros, in the same order (bit for bit the sums of every frame, but for the sign of a
    zero sum). Why: a window holds a few of the scan's points (a 2048^2 16 x 15 mesh:
    14 % of the frames of a pixel that has a window, half the pixels none); one-box
    sub-tiles then need 46 % of the frames. A sub-tile starts at a box and takes the next
    ones while the union of their frames costs little more (MERGE_COST), up to SUB pixels.
    `inside` (2, F) booleans: scratch. Returns the (frame, pixel) pairs summed."""
    sub = xs.shape[1]
    n_frames = frames.shape[0]
    n_rows = w.shape[1]
    done = 0
    here, there = inside[0], inside[1]
    t0 = start
    while t0 < stop:
        end = min((t0 // chunk + 1) * chunk, stop, t0 + sub)
        n_act = frames_in_box(points, boxes, t0 // chunk, here)
        while end < stop and end % chunk == 0 and min(end + chunk, stop) - t0 <= sub:
            more = min(end + chunk, stop) - end
            n_more = frames_in_box(points, boxes, end // chunk, there)
            union = 0
            for f in range(n_frames):
                union += here[f] or there[f]
            if union * (end - t0 + more) > MERGE_COST * (n_act * (end - t0) + n_more * more):
                break
            for f in range(n_frames):
                here[f] = here[f] or there[f]
            n_act = union
            end += more
        n = end - t0
        if n_act > 0:
            k = 0
            for f in range(n_frames):
                if here[f]:
                    act[k] = f
                    for r in range(n_rows):
                        w_act[k, r] = w[f, r]
                    k += 1
            # in chunks whose window coefficients stay in L1 while every frame is windowed
            for c0 in range(0, n, WINDOW_PIXELS):
                window_values(frames, offset, mono, coef, rho2, t0 + c0, min(WINDOW_PIXELS, n - c0), xs, c0, act,
                              n_act)
            _dense(xs, w_act, rows, n_act, t0, n, np.uint64(0), frames, False)
            done += n_act * n
        t0 = end
    return done
