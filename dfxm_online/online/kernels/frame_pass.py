"""The pass over a batch of frames, compiled with numba (see `online/framesums.py` for what
it computes and `kernels/__init__.py` for when it is used).

For pixels start <= p < stop of a batch `frames` (F, P):

    sums[r, p]   += sum_f weights[f, r] * frames[f, p]     (dense rows: the monomials)
    gsums[g][p]  += sum of frames[f, p] over members of g  (frame groups: edge bands, halves)
    gsumsq[g][p] += the same with squares                  (where wanted)
    maximum[p]    = max(maximum[p], max_f frames[f, p])    (NaN propagates, as numpy)

Why numba, and why this loop order: the C pass it replaces kept a block of 8 rows x 16
pixels of running sums in AVX-512 registers while the frames streamed past; on a 16-register
AVX2 CPU that block spilled and the pass ran at 12 frames/s (issue 20). Numba compiles for
the CPU it runs on, but it vectorizes innermost loops only, so here the innermost loop runs
over pixels and each pass of it adds the products of FRAMES_PER_STEP frames to
ROWS_PER_STEP running sums: per pixel vector 8 loads of converted frames, 3 loads and 3
stores of sums and 24 multiply-adds, with the 24 weights in registers, which fits 16
registers as well as 32. The 8 frames' converted rows of a SUB_PIXELS sub-tile stay in L1;
the running sums of a tile of pixels stay in L2 for the whole batch. Measured on 64 frames
of 8192 uint16 pixels in cache, 15 rows, one thread (GFMA/s): 8 frames x 3 rows 17.6-20,
8 x 1 15.6, 8 x 2 14, 8 x 5 14.6, 4 x 3-5 16-17, 16 x 3 14; the C pass 12.5.

Arrays are indexed, never sliced, inside the loops: a slice is a view whose reference count
numba updates atomically, and in a first version those updates (on lines shared by the two
tile threads) took ~40 % of the time. Offsets into the pixel axis are unsigned, so that numba
emits no negative-index wraparound, which would turn the loads into gathers.

Integer frames' group sums, squares (up to 16 bits) and maxima are taken in integers within a
tile, exactly, and added to the float64 rows once per tile (as the C pass did), so they are
exact whatever the CPU; float frames' group sums are summed in float64 within the tile, then
added to the rows.
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: frames whose products are added to a running sum per load and store of it
FRAMES_PER_STEP = 8
#: running sums updated per pass over a sub-tile's pixels (24 weights in registers)
ROWS_PER_STEP = 3
#: pixels per sub-tile: 8 converted frame rows of 2 KB stay in L1 (48 KB here, 32 KB on Zen)
SUB_PIXELS = 256
#: bytes of running sums per tile, kept in L2 (512 KB on Zen 3) while a batch streams past
TILE_SUMS_BYTES = 256 * 1024

# FMA contraction only: the dense products may fuse multiply and add (no other reordering);
# the sums then differ from a plain product by rounding within the bound the tests state
_CONTRACT = {"contract"}


def tile_pixels(n_rows: int) -> int:
    """Pixels per tile: as many as keep the tile's running sums within TILE_SUMS_BYTES."""
    tile = TILE_SUMS_BYTES // (8 * max(n_rows, 1))
    return int(min(max(tile // SUB_PIXELS, 1), 16) * SUB_PIXELS)


@njit(nogil=True, cache=True, fastmath=_CONTRACT)
def _dense_rows(xs, w, f0, sums, r, nrows, s0, n, single):
    """Rows r..r+nrows (nrows 1-3) of `sums`, pixels s0..s0+n (s0 unsigned): += the products
    of the 8 converted frames `xs` (8, SUB) with their weights w[row, f0:f0+8], as one chain
    of multiply-adds from the running sum; `single` (float32 `xs` and `w`): the 8 products
    summed in float32 (pairwise), then added to the float64 running sum."""
    ra, rc = r, r + nrows - 1
    rb = min(r + 1, rc)
    a0, a1, a2, a3 = w[ra, f0], w[ra, f0 + 1], w[ra, f0 + 2], w[ra, f0 + 3]
    a4, a5, a6, a7 = w[ra, f0 + 4], w[ra, f0 + 5], w[ra, f0 + 6], w[ra, f0 + 7]
    b0, b1, b2, b3 = w[rb, f0], w[rb, f0 + 1], w[rb, f0 + 2], w[rb, f0 + 3]
    b4, b5, b6, b7 = w[rb, f0 + 4], w[rb, f0 + 5], w[rb, f0 + 6], w[rb, f0 + 7]
    c0, c1, c2, c3 = w[rc, f0], w[rc, f0 + 1], w[rc, f0 + 2], w[rc, f0 + 3]
    c4, c5, c6, c7 = w[rc, f0 + 4], w[rc, f0 + 5], w[rc, f0 + 6], w[rc, f0 + 7]
    if nrows == 3:
        if single:
            for i in range(n):
                j = s0 + np.uint64(i)
                v0, v1, v2, v3 = xs[0, i], xs[1, i], xs[2, i], xs[3, i]
                v4, v5, v6, v7 = xs[4, i], xs[5, i], xs[6, i], xs[7, i]
                sums[ra, j] = sums[ra, j] + (((a0 * v0 + a1 * v1) + (a2 * v2 + a3 * v3)) + ((a4 * v4 + a5 * v5) + (a6 * v6 + a7 * v7)))
                sums[rb, j] = sums[rb, j] + (((b0 * v0 + b1 * v1) + (b2 * v2 + b3 * v3)) + ((b4 * v4 + b5 * v5) + (b6 * v6 + b7 * v7)))
                sums[rc, j] = sums[rc, j] + (((c0 * v0 + c1 * v1) + (c2 * v2 + c3 * v3)) + ((c4 * v4 + c5 * v5) + (c6 * v6 + c7 * v7)))
        else:
            for i in range(n):
                j = s0 + np.uint64(i)
                v0, v1, v2, v3 = xs[0, i], xs[1, i], xs[2, i], xs[3, i]
                v4, v5, v6, v7 = xs[4, i], xs[5, i], xs[6, i], xs[7, i]
                sums[ra, j] = sums[ra, j] + a0 * v0 + a1 * v1 + a2 * v2 + a3 * v3 + a4 * v4 + a5 * v5 + a6 * v6 + a7 * v7
                sums[rb, j] = sums[rb, j] + b0 * v0 + b1 * v1 + b2 * v2 + b3 * v3 + b4 * v4 + b5 * v5 + b6 * v6 + b7 * v7
                sums[rc, j] = sums[rc, j] + c0 * v0 + c1 * v1 + c2 * v2 + c3 * v3 + c4 * v4 + c5 * v5 + c6 * v6 + c7 * v7
    elif nrows == 2:
        if single:
            for i in range(n):
                j = s0 + np.uint64(i)
                v0, v1, v2, v3 = xs[0, i], xs[1, i], xs[2, i], xs[3, i]
                v4, v5, v6, v7 = xs[4, i], xs[5, i], xs[6, i], xs[7, i]
                sums[ra, j] = sums[ra, j] + (((a0 * v0 + a1 * v1) + (a2 * v2 + a3 * v3)) + ((a4 * v4 + a5 * v5) + (a6 * v6 + a7 * v7)))
                sums[rc, j] = sums[rc, j] + (((c0 * v0 + c1 * v1) + (c2 * v2 + c3 * v3)) + ((c4 * v4 + c5 * v5) + (c6 * v6 + c7 * v7)))
        else:
            for i in range(n):
                j = s0 + np.uint64(i)
                v0, v1, v2, v3 = xs[0, i], xs[1, i], xs[2, i], xs[3, i]
                v4, v5, v6, v7 = xs[4, i], xs[5, i], xs[6, i], xs[7, i]
                sums[ra, j] = sums[ra, j] + a0 * v0 + a1 * v1 + a2 * v2 + a3 * v3 + a4 * v4 + a5 * v5 + a6 * v6 + a7 * v7
                sums[rc, j] = sums[rc, j] + c0 * v0 + c1 * v1 + c2 * v2 + c3 * v3 + c4 * v4 + c5 * v5 + c6 * v6 + c7 * v7
    else:
        if single:
            for i in range(n):
                j = s0 + np.uint64(i)
                v0, v1, v2, v3 = xs[0, i], xs[1, i], xs[2, i], xs[3, i]
                v4, v5, v6, v7 = xs[4, i], xs[5, i], xs[6, i], xs[7, i]
                sums[ra, j] = sums[ra, j] + (((a0 * v0 + a1 * v1) + (a2 * v2 + a3 * v3)) + ((a4 * v4 + a5 * v5) + (a6 * v6 + a7 * v7)))
        else:
            for i in range(n):
                j = s0 + np.uint64(i)
                v0, v1, v2, v3 = xs[0, i], xs[1, i], xs[2, i], xs[3, i]
                v4, v5, v6, v7 = xs[4, i], xs[5, i], xs[6, i], xs[7, i]
                sums[ra, j] = sums[ra, j] + a0 * v0 + a1 * v1 + a2 * v2 + a3 * v3 + a4 * v4 + a5 * v5 + a6 * v6 + a7 * v7


@njit(nogil=True, cache=True, fastmath=_CONTRACT)
def frame_pass(frames, start, stop, w, sums, xs, members, gsums, gsumsq, has_sq, maximum, gacc, gsq,
               tmax, int_squares, single, tile):
    """One pass over pixels start..stop (0 <= start <= stop <= P) of `frames` (F, P) (see
    the module docstring).

    `w` (R, F rounded up to 8) the transposed weights, zero beyond F, float64 or float32
    (the products' precision); `sums` (R, P) float64; `xs` (8, SUB_PIXELS) scratch of w's
    type; `members` (G, F) uint8; `gsums`, `gsumsq` typed lists of G (P,) float64 rows
    (`gsumsq[g]` used where `has_sq[g]`); `maximum` (P,) float64 or empty (none); scratch
    `gacc`, `gsq` (G, tile) and `tmax` (tile,): int64, int64 (float64 unless
    `int_squares`) and the frames' type for integer frames, float64 (and the frames' type)
    for float frames; `single`: float32 products (`w`, `xs` float32); `tile`: pixels per tile.
    """
    n_frames = frames.shape[0]
    n_rows = sums.shape[0]
    n_groups = members.shape[0]
    use_max = maximum.shape[0] > 0
    step = FRAMES_PER_STEP
    seen = np.zeros(n_groups, np.bool_)  # groups with a member frame in this pass
    for g in range(n_groups):
        for f in range(n_frames):
            if members[g, f]:
                seen[g] = True
    for t0 in range(start, stop, tile):
        m = min(tile, stop - t0)
        tu = np.uint64(t0)
        for g in range(n_groups):
            for i in range(m):
                gacc[g, i] = 0
                gsq[g, i] = 0
        for f0 in range(0, n_frames, step):
            nf = min(step, n_frames - f0)
            for o in range(0, m, SUB_PIXELS):
                n = min(SUB_PIXELS, m - o)
                s0 = tu + np.uint64(o)
                ou = np.uint64(o)
                for k in range(nf):
                    f = f0 + k
                    if n_rows > 0:
                        for i in range(n):
                            xs[k, i] = frames[f, s0 + np.uint64(i)]
                    if use_max:
                        if f == 0:
                            for i in range(n):
                                tmax[ou + np.uint64(i)] = frames[f, s0 + np.uint64(i)]
                        else:
                            for i in range(n):
                                a = tmax[ou + np.uint64(i)]
                                v = frames[f, s0 + np.uint64(i)]
                                tmax[ou + np.uint64(i)] = v if (v > a or v != v) else a
                    for g in range(n_groups):
                        if members[g, f] == 0:
                            continue
                        for i in range(n):
                            gacc[g, ou + np.uint64(i)] += frames[f, s0 + np.uint64(i)]
                        if has_sq[g]:
                            if int_squares:
                                for i in range(n):
                                    v = np.int64(frames[f, s0 + np.uint64(i)])
                                    gsq[g, ou + np.uint64(i)] += v * v
                            else:
                                for i in range(n):
                                    x = np.float64(frames[f, s0 + np.uint64(i)])
                                    gsq[g, ou + np.uint64(i)] += x * x
                if n_rows > 0:
                    for k in range(nf, step):
                        for i in range(n):
                            xs[k, i] = 0.0
                    r = 0
                    while r < n_rows:
                        nr = min(ROWS_PER_STEP, n_rows - r)
                        _dense_rows(xs, w, f0, sums, r, nr, s0, n, single)
                        r += nr
        if use_max:
            for i in range(m):
                j = tu + np.uint64(i)
                a = maximum[j]
                v = np.float64(tmax[i])
                maximum[j] = v if (v > a or v != v) else a  # a NaN maximum stays NaN
        for g in range(n_groups):
            if not seen[g]:
                continue
            row = gsums[g]
            for i in range(m):
                row[tu + np.uint64(i)] += np.float64(gacc[g, i])
            if has_sq[g]:
                row = gsumsq[g]
                for i in range(m):
                    row[tu + np.uint64(i)] += np.float64(gsq[g, i])
