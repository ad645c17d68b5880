"""Per-pixel snapshot loops compiled with numba: block sums (the binning step and the live
maps at a coarser binning). The same arithmetic, in the same order, as the C loops of
`_pixelmaps.c` they replace, so the same values bit for bit on every target (no fastmath: no
FMA contraction, no reassociation); figures in bench/RESULTS.md.

Each function works a range of rows or pixels and releases the GIL; callers spread the
ranges over the tile threads. Arrays are indexed, not sliced, in the loops (a view's
reference count is updated atomically: see frame_pass.py).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def block_sums(src, by, bx, dst, start, stop, divisor, total, row_sum):
    """Output rows start <= Y < stop of every image r: dst[r, Y, X] = (sum of the block of
    `by` rows and `bx` columns at (Y * by, X * bx) of src[r]) / divisor, in float64, rounded
    once to dst's type. Summed in the order of numpy's strided-slice version (each block
    row's columns in turn, then the rows in turn), so binned frames are those values bit for
    bit. `total`, `row_sum`: scratch of W // bx float64."""
    n_images = src.shape[0]
    w = dst.shape[2]
    for r in range(n_images):
        for y in range(start, stop):
            for i in range(by):
                row = y * by + i
                for j in range(bx):
                    if i == 0:
                        if j == 0:
                            for x in range(w):
                                total[x] = np.float64(src[r, row, x * bx])
                        else:
                            for x in range(w):
                                total[x] += np.float64(src[r, row, x * bx + j])
                    else:
                        if j == 0:
                            for x in range(w):
                                row_sum[x] = np.float64(src[r, row, x * bx])
                        else:
                            for x in range(w):
                                row_sum[x] += np.float64(src[r, row, x * bx + j])
                if i > 0:
                    for x in range(w):
                        total[x] += row_sum[x]
            if divisor != 1.0:
                for x in range(w):
                    total[x] /= divisor
            for x in range(w):
                dst[r, y, x] = total[x]
