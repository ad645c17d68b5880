"""Exact order statistics of the pixels of a map that pass a filter, read where they are
(numba; `online/selection.py` turns them into numpy's percentiles and medians).

`order_statistics` finds the values of a few ranks of the kept values of a (P,) float32 or
float64 map without a filtered copy: three passes over the map (the bounds and the count,
a 65536-bin histogram over [vmin, vmax], the values of only the bins that hold the wanted
ranks), then a quickselect within those bins. It is a port of the C function of the same
name (`_pixelmaps.c`, now gone): the same passes, the same bin arithmetic, the same order of
the gathered values and the same selection, so the same values bit for bit (the zeros'
signs included), on every target: no fastmath (no FMA contraction, no reassociation). The
float32 and float64 maps (and the `other` maps) are compiled variants, each float32 value
widened exactly to float64 as it is read. Timings against the C: `online/selection.py`.

Each pass runs in blocks of BLOCK pixels: each block's values and kept flags first, then
the pass's work on them, every loop a plain loop over the block with branch-free selects,
so that LLVM vectorizes it (the histogram's increments and the gather's rare stores
excepted). Arrays are indexed, not sliced, in the loops (a view's reference count is updated
atomically: see frame_pass.py), and offsets into the map are unsigned (no negative-index
wraparound, which would turn the loads into gathers).
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: bins of the histogram pass; a value x falls in bin min((x - vmin) * scale, BINS - 1)
BINS = 65536
#: pixels per block of the passes: the block's values, flags and bins (and the bounds
#: pass's per-lane minima, maxima and counts) stay in L1
BLOCK = 512
#: fractions per call: the C function's fixed-size tables (two ranks each)
MAX_FRACTIONS = 8


@njit(nogil=True, cache=True, inline="always")
def _load(values, other, has_other, positive, distance, centre, base, n, x, keep):
    """x[i], keep[i] for the n pixels from `base` (uint64) on: the value as a float64 (as
    |value - centre| when `distance`), and whether it is kept (1: finite, `other` finite too
    when `has_other`, > 0 when `positive`; else 0). One loop per case rather than tests per
    pixel, so that each is a plain loop LLVM vectorizes (a select on `distance` in the loop
    became a branch in it)."""
    not_positive = not positive
    if has_other:
        for i in range(n):
            p = base + np.uint64(i)
            a = np.float64(values[p])
            o = np.float64(other[p])
            keep[i] = np.int64(np.isfinite(a) & np.isfinite(o) & ((a > 0.0) | not_positive))
            x[i] = a
    else:
        for i in range(n):
            a = np.float64(values[base + np.uint64(i)])
            keep[i] = np.int64(np.isfinite(a) & ((a > 0.0) | not_positive))
            x[i] = a
    if distance:
        for i in range(n):
            x[i] = abs(x[i] - centre)


@njit(nogil=True, cache=True, inline="always")
def _bins(x, keep, n, vmin, scale, b):
    """b[i] = the bin of x[i] when kept, BINS (the histogram's last count: not kept) when
    not: the same arithmetic in the histogram and gather passes, so that a value falls in
    the same bin in each. (x - vmin) * scale is monotonic in x, so the bins are ordered;
    with scale 0 (a range too wide for a double) a value whose x - vmin overflows is NaN
    there and goes to the last bin, above the others: still in order."""
    for i in range(n):
        t = (x[i] - vmin) * scale if keep[i] else 0.0
        b[i] = np.int32(t if t < BINS - 1.0 else BINS - 1.0) if keep[i] else np.int32(BINS)


@njit(nogil=True, cache=True)
def _bounds(values, other, has_other, positive, centre):
    """(n, vmin, vmax): the count, minimum and maximum of the kept values. Per position in
    the block (element-wise updates vectorize; a running minimum is a reduction, which
    LLVM vectorizes only under fastmath), then over the positions, in order."""
    size = values.shape[0]
    distance = centre == centre
    x = np.empty(BLOCK)
    keep = np.empty(BLOCK, np.int64)
    block_min = np.full(BLOCK, np.inf)
    block_max = np.full(BLOCK, -np.inf)
    block_n = np.zeros(BLOCK, np.int64)
    for p0 in range(0, size, BLOCK):
        n = min(BLOCK, size - p0)
        _load(values, other, has_other, positive, distance, centre, np.uint64(p0), n, x, keep)
        for i in range(n):
            k = keep[i]
            lo = x[i] if k else np.inf
            hi = x[i] if k else -np.inf
            block_min[i] = lo if lo < block_min[i] else block_min[i]
            block_max[i] = hi if hi > block_max[i] else block_max[i]
            block_n[i] += k
    vmin = np.inf
    vmax = -np.inf
    count = 0
    for i in range(BLOCK):
        vmin = block_min[i] if block_min[i] < vmin else vmin
        vmax = block_max[i] if block_max[i] > vmax else vmax
        count += block_n[i]
    return count, vmin, vmax


@njit(nogil=True, cache=True)
def _histogram(values, other, has_other, positive, centre, vmin, scale, hist):
    """hist[b] += the kept values in bin b (hist[BINS]: those not kept)."""
    size = values.shape[0]
    distance = centre == centre
    x = np.empty(BLOCK)
    keep = np.empty(BLOCK, np.int64)
    b = np.empty(BLOCK, np.int32)
    for p0 in range(0, size, BLOCK):
        n = min(BLOCK, size - p0)
        _load(values, other, has_other, positive, distance, centre, np.uint64(p0), n, x, keep)
        _bins(x, keep, n, vmin, scale, b)
        for i in range(n):
            hist[np.uint32(b[i])] += np.uint32(1)


@njit(nogil=True, cache=True)
def _gather(values, other, has_other, positive, centre, vmin, scale, bins, n_bins, fill, pool):
    """The kept values of bins[:n_bins], into `pool` in pixel order: those of bins[k] at
    fill[k], fill[k] + 1, ... (fill[k] is advanced)."""
    size = values.shape[0]
    distance = centre == centre
    x = np.empty(BLOCK)
    keep = np.empty(BLOCK, np.int64)
    b = np.empty(BLOCK, np.int32)
    first = np.int64(BINS)
    last = np.int64(-1)
    for k in range(n_bins):
        first = min(first, bins[k])
        last = max(last, bins[k])
    # one unsigned comparison for first <= b <= last: (b - first) mod 2^32 <= last - first
    first32 = np.uint32(first)
    span = np.uint32(last - first)
    for p0 in range(0, size, BLOCK):
        n = min(BLOCK, size - p0)
        _load(values, other, has_other, positive, distance, centre, np.uint64(p0), n, x, keep)
        _bins(x, keep, n, vmin, scale, b)
        # most blocks hold no value of the wanted bins: a vectorized test first (as a
        # branch per pixel, b < first is a coin toss for a median: in the C version,
        # mispredicted, it cost 0.016 s at 2048^2)
        hit = False
        for i in range(n):
            hit |= np.uint32(np.uint32(b[i]) - first32) <= span
        if not hit:
            continue
        for i in range(n):
            bi = b[i]
            if np.uint32(np.uint32(bi) - first32) > span:
                continue
            for k in range(n_bins):
                if bins[k] == bi:
                    pool[fill[k]] = x[i]
                    fill[k] += 1


@njit(nogil=True, cache=True)
def select_rank(a, start, n, k):
    """The value of rank k (0-based) of a[start:start + n] (reordered in place): quickselect
    with a three-way partition, so that runs of equal values (a map's many identical pixels)
    cost one pass, not quadratic time. The median-of-three pivot and the partition are the C
    version's, so the same element (the same zero, where -0.0 and 0.0 tie) is returned."""
    lo = start
    hi = start + n - 1
    k = start + k
    while lo < hi:
        x = a[lo]
        y = a[lo + (hi - lo) // 2]
        z = a[hi]
        if x < y:
            pivot = y if y < z else (z if x < z else x)
        else:
            pivot = x if x < z else (z if y < z else y)
        lt = lo
        gt = hi
        i = lo
        while i <= gt:
            v = a[i]
            if v < pivot:
                a[i] = a[lt]
                a[lt] = v
                i += 1
                lt += 1
            elif v > pivot:
                a[i] = a[gt]
                a[gt] = v
                gt -= 1
            else:
                i += 1
        if k < lt:
            hi = lt - 1
        elif k > gt:
            lo = gt + 1
        else:
            return pivot
    return a[k]


@njit(nogil=True, cache=True)
def _order_statistics(values, other, has_other, positive, centre, ranks_of, lo, hi):
    """`order_statistics` on checked arguments (`other`: any array of values' size when not
    `has_other`)."""
    n, vmin, vmax = _bounds(values, other, has_other, positive, centre)
    n_fractions = ranks_of.shape[0]
    if n == 0:
        for j in range(n_fractions):
            lo[j] = np.nan
            hi[j] = np.nan
        return n
    if vmin == vmax:
        for j in range(n_fractions):
            lo[j] = vmin
            hi[j] = vmin
        return n
    # bins of equal width over [vmin, vmax]
    scale = BINS / (vmax - vmin)
    if not np.isfinite(scale):
        scale = 0.0  # a range too wide for a double: one bin (see _bins)
    hist = np.zeros(BINS + 1, np.uint32)
    _histogram(values, other, has_other, positive, centre, vmin, scale, hist)
    # per needed rank (two per fraction): its bin, and the count of the bins below
    n_ranks = 2 * n_fractions
    rank = np.empty(n_ranks, np.int64)
    bin_of = np.empty(n_ranks, np.int64)
    below = np.empty(n_ranks, np.int64)
    for j in range(n_fractions):
        r = np.int64(np.floor(np.float64(n - 1) * ranks_of[j]))
        rank[2 * j] = r
        rank[2 * j + 1] = r + 1 if r + 1 < n else n - 1
    for i in range(n_ranks):
        cum = np.int64(0)
        b = 0
        while cum + np.int64(hist[b]) <= rank[i]:
            cum += np.int64(hist[b])
            b += 1
        bin_of[i] = b
        below[i] = cum
    # the kept values of the needed bins, bin after bin (distinct bins only)
    bins = np.empty(n_ranks, np.int64)
    start = np.empty(n_ranks, np.int64)
    n_bins = 0
    total = 0
    for i in range(n_ranks):
        seen = False
        for k in range(n_bins):
            seen |= bins[k] == bin_of[i]
        if not seen:
            bins[n_bins] = bin_of[i]
            start[n_bins] = total
            total += np.int64(hist[bin_of[i]])
            n_bins += 1
    pool = np.empty(total)
    fill = start.copy()
    _gather(values, other, has_other, positive, centre, vmin, scale, bins, n_bins, fill, pool)
    for i in range(n_ranks):
        k = 0
        while bins[k] != bin_of[i]:
            k += 1
        value = select_rank(pool, start[k], np.int64(hist[bins[k]]), rank[i] - below[i])
        if i % 2 == 0:
            lo[i // 2] = value
        else:
            hi[i // 2] = value
    return n


def _float_map(a: object, name: str) -> np.ndarray:
    """`a` checked as the kernel reads it: a C-contiguous (P,) float32 or float64 array."""
    if not isinstance(a, np.ndarray) or a.ndim != 1:
        raise ValueError(f"{name} must be a one-dimensional array")
    if a.dtype not in (np.float32, np.float64):
        raise TypeError("values and other must be float64 or float32")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    return a


def _float64_row(a: object, name: str, writable: bool) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.ndim != 1:
        raise ValueError(f"{name} must be a one-dimensional array")
    if a.dtype != np.float64:
        raise TypeError(f"{name} must be float64, not {a.dtype}")
    if not a.flags.c_contiguous or (writable and not a.flags.writeable):
        raise ValueError(f"{name} must be C-contiguous{' and writable' if writable else ''}")
    return a


def order_statistics(values: np.ndarray, other: np.ndarray | None, positive: bool, centre: float,
                     ranks_of: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> int:
    """Exact order statistics of the values kept from `values` (P,) float64 or float32:
    finite ones, where `other` (P,) float64 or float32 (or None) is also finite, and > 0 if
    `positive`; each taken as a float64, and as |value - centre| unless centre is NaN. For
    each fraction f of `ranks_of` (float64, at most MAX_FRACTIONS), with n the number kept
    and r = floor((n - 1) * f): lo[j] = the value of rank r, hi[j] that of rank
    min(r + 1, n - 1) (0-based, ascending): what np.percentile / np.median interpolate.
    Outputs are NaN when n is 0. Returns n. The arrays are read where they are (no copies):
    C-contiguous, one-dimensional; `lo`, `hi` float64, writable, as long as `ranks_of`.

    Raises TypeError for maps of another dtype, ValueError for mismatched sizes, more than
    MAX_FRACTIONS fractions, or fractions outside [0, 1] (as the C function did)."""
    values = _float_map(values, "values")
    ranks_of = _float64_row(ranks_of, "ranks_of", False)
    lo = _float64_row(lo, "lo", True)
    hi = _float64_row(hi, "hi", True)
    if other is not None:
        other = _float_map(other, "other")
    n_fractions = ranks_of.shape[0]
    if ((other is not None and other.shape[0] != values.shape[0]) or lo.shape[0] != n_fractions
            or hi.shape[0] != n_fractions or n_fractions > MAX_FRACTIONS):
        raise ValueError(f"other must match values, lo and hi ranks_of (at most {MAX_FRACTIONS})")
    if not ((ranks_of >= 0) & (ranks_of <= 1)).all():  # NaN fails both
        raise ValueError("ranks_of must be fractions in [0, 1]")
    has_other = other is not None
    return int(_order_statistics(values, other if has_other else values, has_other, bool(positive),
                                 float(centre), ranks_of, lo, hi))
