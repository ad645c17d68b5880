"""Per-pixel snapshot loops compiled with numba: block sums (the binning step and the live
maps at a coarser binning) and the moment maps straight from the power sums. The same arithmetic, in the same order, as the C loops of
`_pixelmaps.c` they replace, so the same values bit for bit on every target (no fastmath: no
FMA contraction, no reassociation); figures in bench/RESULTS.md.

Each function works a range of rows or pixels and releases the GIL; callers spread the
ranges over the tile threads. Arrays are indexed, not sliced, in the loops (a view's
reference count is updated atomically: see frame_pass.py).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True, error_model="numpy")
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


# ---- the named moment maps, straight from the power sums ----------------------------------
#
# `index` (int64): the rows of the constant, unit [M], pair [M*M], cube [M] and fourth-power
# [M] monomials in the sums, -1 above the order (PowerSums.conversion). `offset` (P,) is
# subtracted from every frame through the monomial weights (`has_offset` False: none).
# The expressions and their order are those of the C loops `_pixelmaps.central_moments` and
# `_pixelmaps.moment_maps` (kept in C: in numba, pixel by pixel, they were 0-40 % slower in the
# same run), so this computes exactly what moment_maps makes of central_moments' moments, bit
# for bit, on every target (tests/kernel_checks.py). 2048^2, two motors, 2 cores, same run
# under load (median s): host 0.120 C, 0.099 numba (float32 maps), 0.120 / 0.109 (float64);
# AVX2 target 0.168 / 0.152 and 0.199 / 0.168.


_MAPS_BLOCK = 256


@njit(nogil=True, cache=True, error_model="numpy")
def _moment_maps_of_sums(sums, weights, offset, has_offset, index, centre, scale, valid, fwhm_per_sigma, out,
                        start, stop):
    """`_pixelmaps.moment_maps` of `_pixelmaps.central_moments`' moments for pixels
    start <= p < stop, with no moment arrays in between: the same arithmetic, so the same maps
    bit for bit; `out` (n_maps, P) float64, or float32 (the float64 values, rounded once). A
    block of pixels and one quantity at a time, so that every loop is a plain loop over the
    block (C: 2048^2, two motors, one thread, 0.16 s pixel by pixel, 0.061 s by blocks)."""
    m_motors = centre.shape[0]
    nb_max = _MAPS_BLOCK
    o = np.empty(nb_max)
    inv = np.empty(nb_max)
    x = np.empty((m_motors, nb_max))
    var = np.empty(nb_max)
    e2 = np.empty(nb_max)
    e3 = np.empty(nb_max)
    m = np.empty(nb_max)
    ok = np.empty(nb_max, np.bool_)
    i0 = index[0]
    w0 = weights[i0]
    for p0 in range(start, stop, nb_max):
        n = min(nb_max, stop - p0)
        base = np.uint64(p0)
        for i in range(n):
            p = base + np.uint64(i)
            o[i] = offset[p] if has_offset else 0.0
            ok[i] = valid[p]
        for i in range(n):
            s0 = sums[i0, base + np.uint64(i)] - w0 * o[i]
            inv[i] = 1.0 / s0 if s0 > 0 else np.nan
        for a in range(m_motors):
            row = index[1 + a]
            w = weights[row]
            for i in range(n):
                x[a, i] = (sums[row, base + np.uint64(i)] - w * o[i]) * inv[i]
        r = 4 * m_motors  # the covariance maps' rows, after the per-motor ones
        for a in range(m_motors):
            sa = scale[a]
            ca = centre[a]
            for b in range(a + 1, m_motors):
                row = index[1 + m_motors + a * m_motors + b]
                w = weights[row]
                sb = scale[b]
                for i in range(n):
                    c = ((sums[row, base + np.uint64(i)] - w * o[i]) * inv[i] - x[a, i] * x[b, i]) * sa * sb
                    out[r, base + np.uint64(i)] = c if ok[i] else np.nan
                r += 1
            row = index[1 + m_motors + a * m_motors + a]
            w = weights[row]
            for i in range(n):
                e2[i] = (sums[row, base + np.uint64(i)] - w * o[i]) * inv[i]
                var[i] = (e2[i] - x[a, i] * x[a, i]) * sa * sa
            for i in range(n):
                v = var[i]
                positive = ok[i] and v > 0
                sd = np.sqrt(v if positive else 0.0)
                p = base + np.uint64(i)
                out[4 * a, p] = ca + sa * x[a, i] if ok[i] else np.nan
                out[4 * a + 1, p] = fwhm_per_sigma * sd if positive else np.nan
                m[i] = v * sd if positive else np.nan  # the skewness' divisor
            row = index[1 + m_motors + m_motors * m_motors + a]
            if row >= 0:
                w = weights[row]
                for i in range(n):
                    xa = x[a, i]
                    e3[i] = (sums[row, base + np.uint64(i)] - w * o[i]) * inv[i]
                    m3 = (e3[i] - xa * (3.0 * e2[i] - 2.0 * xa * xa)) * sa * sa * sa
                    out[4 * a + 2, base + np.uint64(i)] = m3 / m[i]
            else:
                for i in range(n):
                    e3[i] = np.nan
                    out[4 * a + 2, base + np.uint64(i)] = np.nan
            row = index[1 + 2 * m_motors + m_motors * m_motors + a]
            if row >= 0:
                w = weights[row]
                for i in range(n):
                    xa = x[a, i]
                    v = var[i]
                    e4 = (sums[row, base + np.uint64(i)] - w * o[i]) * inv[i]
                    m4 = (e4 - xa * (4.0 * e3[i] - xa * (6.0 * e2[i] - 3.0 * xa * xa))) * sa * sa * sa * sa
                    out[4 * a + 3, base + np.uint64(i)] = m4 / (v * v) - 3.0 if (ok[i] and v > 0) else np.nan
            else:
                for i in range(n):
                    out[4 * a + 3, base + np.uint64(i)] = np.nan


# ---- checked entry points (the C functions' arguments and errors) --------------------------

_NO_OFFSET = np.zeros(0)


def _source(sums, weights, offset, index, centre, scale) -> tuple:
    """The power sums' arguments checked, as the kernels take them."""
    n_rows, n_pixels = sums.shape
    m = centre.shape[0]
    rows = np.asarray(index, dtype=np.int64)
    if (sums.dtype != np.float64 or not sums.flags.c_contiguous or not 1 <= m <= 3 or scale.shape != (m,)
            or weights.shape != (n_rows,) or rows.shape != (1 + m + m * m + 2 * m,)
            or (offset is not None and offset.shape != (n_pixels,))):
        raise ValueError("inconsistent shapes of the moment arrays")
    if (rows < -1).any() or (rows >= n_rows).any() or (rows[: 1 + m + m * m] < 0).any():
        raise ValueError("index out of range (the mean and covariance are required)")
    off = _NO_OFFSET if offset is None else np.ascontiguousarray(offset, dtype=np.float64)
    return off, offset is not None, rows


def _check_range(start: int, stop: int, n_pixels: int) -> None:
    if not 0 <= start <= stop <= n_pixels:
        raise ValueError(f"pixel range [{start}, {stop}) outside [0, {n_pixels})")


def moment_maps_of_sums(sums, weights, offset, index, centre, scale, valid, fwhm_per_sigma, out, start, stop):
    """The moment maps of the power sums (with `offset` subtracted) for the pixel range
    start..stop, into `out` (n_maps, P) float64 or float32 (the float64 maps' values
    rounded); arguments as `_pixelmaps.central_moments`' and `moment_maps`'."""
    off, has_off, rows = _source(sums, weights, offset, index, centre, scale)
    n_pixels, m = sums.shape[1], centre.shape[0]
    if valid.shape != (n_pixels,) or out.shape != (4 * m + m * (m - 1) // 2, n_pixels):
        raise ValueError("inconsistent shapes of the moment arrays")
    if out.dtype not in (np.float32, np.float64):
        raise TypeError("maps are float32 or float64")
    _check_range(start, stop, n_pixels)
    _moment_maps_of_sums(sums, weights, off, has_off, rows, centre, scale, valid, float(fwhm_per_sigma), out,
                         start, stop)
