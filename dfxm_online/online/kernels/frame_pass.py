"""The pass over a batch of frames, compiled with numba (see `online/framesums.py` for what
it computes and `kernels/__init__.py` for when it is used).

For pixels start <= p < stop of a batch `frames` (F, P):

    sums[r, p]   += sum_f weights[f, r] * frames[f, p]     (dense rows: the monomials)
    gsums[g][p]  += sum of frames[f, p] over members of g  (frame groups: edge bands, halves)
    gsumsq[g][p] += the same with squares                  (where wanted)
    maximum[p]    = max(maximum[p], max_f frames[f, p])    (NaN propagates, as numpy)

How, per sub-tile of pixels (SUB: as many as keep the batch's converted sub-tile within
XS_BYTES, in L2): every frame's row of the sub-tile is read once from memory, converted
to float64 into a packed (F, SUB) buffer, and its maximum and group sums taken on the way
(integers, in L1); then the dense sums are a small matrix product of that buffer, made by
register blocks of MR rows x NV vectors of running sums that stay in registers while all
F frames stream past (`dense_block.py`, LLVM vectors sized for the target). The running
sums in memory are read and written once per pass.

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

Integer frames' group sums, squares (up to 16 bits) and maxima are taken in integers within a
sub-tile, exactly, and added to the float64 rows once per pass (as the C pass did), so they
are exact whatever the CPU; float frames' group sums are summed in float64 within the
sub-tile, then added to the rows. (Tried and not kept: group sums, squares and maximum in
float64 from the packed row, the first group summed in the packing loop itself: 281 against
315 frames/s for the compute core, same process, alternating, 7 rounds; the conversion and
the maximum in one loop, a group's sum and squares in one loop: 277 against 297.)
"""

from __future__ import annotations

import numpy as np
from numba import carray, njit, types
from numba.extending import intrinsic

from .dense_block import BLOCK_PIXELS, MR, VECTOR, dense_block_rows, prefetch

#: bytes of the packed, converted sub-tile of a batch: kept in L2 (2 MB here; 512 KB on Zen 3)
#: while the register blocks read it once per MR rows; 256 KB measured best (64 frames: 512
#: pixels; 1024 and 2048 pixels were 5-10 % slower)
XS_BYTES = 256 * 1024
#: cache lines of a frame row fetched ahead per prefetch (64 bytes)
_LINE = 64


@intrinsic
def _float64_pointer(typingctx, address):
    """A uint64 address as a float64 pointer (for `carray`). Why addresses and not a
    `numba.typed.List` of the group rows: building a typed list compiles its methods in
    every new process, uncached: ~0.7-1 s on a daemon's or `process`'s first batch."""
    sig = types.CPointer(types.float64)(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

    return sig, codegen


@njit(nogil=True, cache=True, inline="always")
def _row(addresses, g, n):
    """Row g of the group rows whose addresses are `addresses`, as a (n,) float64 array."""
    return carray(_float64_pointer(addresses[g]), n)


def sub_pixels(n_frames: int) -> int:
    """Pixels per sub-tile for a pass of `n_frames`: a multiple of the register block."""
    sub = XS_BYTES // (8 * max(n_frames, 1))
    return int(max(BLOCK_PIXELS, min(sub, 4096) // BLOCK_PIXELS * BLOCK_PIXELS))


@njit(nogil=True, cache=True)
def _dense(xs, w, sums, n_frames, sx, n):
    """sums[:, sx:sx + n] += w[:n_frames].T @ xs[:n_frames, :n]: register blocks over the
    rows and the pixels, single vectors for what is left of n, scalars for the last < VECTOR."""
    n_rows = sums.shape[0]
    n_blocks = n // BLOCK_PIXELS * BLOCK_PIXELS
    n_vec = n // VECTOR * VECTOR
    for r in range(0, n_rows, MR):
        dense_block_rows(xs, w, sums, r, min(MR, n_rows - r), sx, n_blocks, n_vec, n_frames)
    for r in range(n_rows):
        for i in range(n_vec, n):
            acc = 0.0
            for f in range(n_frames):
                acc += w[f, r] * xs[f, i]
            sums[r, sx + i] += acc


@njit(nogil=True, cache=True)
def frame_pass(frames, start, stop, w, sums, xs, members, gsums, gsumsq, has_sq, maximum, gacc, gsq,
               tmax, int_squares):
    """One pass over pixels start..stop (0 <= start <= stop <= P) of `frames` (F, P) (see
    the module docstring).

    `w` (F, R) float64 weights; `sums` (R, P) float64 (R may be 0); `xs` (F, SUB) float64
    scratch (SUB a multiple of BLOCK_PIXELS); `members` (G, F) uint8; `gsums`, `gsumsq` (G,)
    uint64: the addresses of G C-contiguous (P,) float64 rows, which the caller keeps alive
    (`gsumsq[g]` used where `has_sq[g]`); `maximum` (P,) float64
    or empty (none); scratch `gacc`, `gsq` (G, SUB) and `tmax` (SUB,): int64, int64 (float64
    unless `int_squares`) and the frames' type for integer frames, float64 (and the frames'
    type) for float frames.
    """
    n_frames, n_pixels = frames.shape
    n_rows = sums.shape[0]
    n_groups = members.shape[0]
    use_max = maximum.shape[0] > 0
    sub = xs.shape[1]
    ahead = _LINE // frames.itemsize
    seen = np.zeros(n_groups, np.bool_)  # groups with a member frame in this pass
    for g in range(n_groups):
        for f in range(n_frames):
            if members[g, f]:
                seen[g] = True
    for t0 in range(start, stop, sub):
        n = min(sub, stop - t0)
        tu = np.uint64(t0)
        nxt = t0 + sub
        for g in range(n_groups):
            for i in range(n):
                gacc[g, i] = 0
                gsq[g, i] = 0
        for f in range(n_frames):
            if n_rows > 0:
                for i in range(n):
                    xs[f, i] = frames[f, tu + np.uint64(i)]
            if nxt < stop:  # the next sub-tile's row of this frame, while this one computes
                for i in range(0, min(sub, stop - nxt), ahead):
                    prefetch(frames, f, nxt + i)
            if use_max:
                if f == 0:
                    for i in range(n):
                        tmax[i] = frames[f, tu + np.uint64(i)]
                else:
                    for i in range(n):
                        a = tmax[i]
                        v = frames[f, tu + np.uint64(i)]
                        tmax[i] = v if (v > a or v != v) else a
            for g in range(n_groups):
                if members[g, f] == 0:
                    continue
                for i in range(n):
                    gacc[g, i] += frames[f, tu + np.uint64(i)]
                if has_sq[g]:
                    if int_squares:
                        for i in range(n):
                            v = np.int64(frames[f, tu + np.uint64(i)])
                            gsq[g, i] += v * v
                    else:
                        for i in range(n):
                            x = np.float64(frames[f, tu + np.uint64(i)])
                            gsq[g, i] += x * x
        if n_rows > 0:
            _dense(xs, w, sums, n_frames, t0, n)
        if use_max:
            for i in range(n):
                j = tu + np.uint64(i)
                a = maximum[j]
                v = np.float64(tmax[i])
                maximum[j] = v if (v > a or v != v) else a  # a NaN maximum stays NaN
        for g in range(n_groups):
            if not seen[g]:
                continue
            row = _row(gsums, g, n_pixels)
            for i in range(n):
                row[tu + np.uint64(i)] += np.float64(gacc[g, i])
            if has_sq[g]:
                row = _row(gsumsq, g, n_pixels)
                for i in range(n):
                    row[tu + np.uint64(i)] += np.float64(gsq[g, i])
