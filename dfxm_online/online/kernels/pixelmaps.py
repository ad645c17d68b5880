"""Per-pixel snapshot loops compiled with numba: block sums (the binning step and the live
maps at a coarser binning), the moment maps straight from the power sums, the central
moments and the maps of moments, and the pooled edge baseline. The same arithmetic, in the
same order, as the C loops they replaced (a C module, `_pixelmaps.c`, until issue 20's last
step), so the same values bit for bit on every target (no fastmath: no FMA contraction, no
reassociation; tests/kernel_checks.py holds them to the same expressions in numpy on each
target); figures in bench/RESULTS.md.

Each function works a range of rows or pixels and releases the GIL; callers spread the
ranges over the tile threads. Arrays are indexed, not sliced, in the loops (a view's
reference count is updated atomically: see frame_pass.py).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .rows import check_range as _check_range
from .rows import row as _row


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
# The expressions and their order are those of `_central_moments` and `_moment_maps` below
# (pixel by pixel; they stayed in C while a numba version measured 0-40 % slower on the
# Intel AVX-512 machine, and are numba now, level with the C on an AVX2 EPYC: below),
# so this computes exactly what `moment_maps_rows` makes of `central_moments`' moments, bit
# for bit, on every target (tests/kernel_checks.py). 2048^2, two motors, 2 cores, same run
# under load (median s): host 0.120 C, 0.099 numba (float32 maps), 0.120 / 0.109 (float64);
# AVX2 target 0.168 / 0.152 and 0.199 / 0.168.


_MAPS_BLOCK = 256


@njit(nogil=True, cache=True, error_model="numpy")
def _moment_maps_of_sums(sums, weights, offset, has_offset, index, centre, scale, valid, fwhm_per_sigma, out,
                        start, stop):
    """`moment_maps_rows` of `central_moments`' moments for pixels
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


def moment_maps_of_sums(sums, weights, offset, index, centre, scale, valid, fwhm_per_sigma, out, start, stop):
    """The moment maps of the power sums (with `offset` subtracted) for the pixel range
    start..stop, into `out` (n_maps, P) float64 or float32 (the float64 maps' values
    rounded); arguments as `central_moments`' and `moment_maps_rows`'."""
    off, has_off, rows = _source(sums, weights, offset, index, centre, scale)
    n_pixels, m = sums.shape[1], centre.shape[0]
    if valid.shape != (n_pixels,) or out.shape != (4 * m + m * (m - 1) // 2, n_pixels):
        raise ValueError("inconsistent shapes of the moment arrays")
    if out.dtype not in (np.float32, np.float64):
        raise TypeError("maps are float32 or float64")
    _check_range(start, stop, n_pixels)
    _moment_maps_of_sums(sums, weights, off, has_off, rows, centre, scale, valid, float(fwhm_per_sigma), out,
                         start, stop)


# ---- the pooled edge baseline, central moments and moment maps -----------------------------
#
# Ported from the C loops of `_pixelmaps.c` (issue 20: numba compiles for the CPU it runs
# on, no C build step), the same expressions in the same order, so the same values bit for
# bit (compared with the C on 420 random cases before it was removed). 2048^2, 2 cores,
# median of 11 alternating, C / numba: the pooled edge baseline (8 groups) 85 / 79 ms,
# the central moments (two motors) 175 / 172, the maps of moments 125 / 122 on the host
# (znver3); haswell 90 / 74, 187 / 183, 125 / 130 (a loaded machine, 2026-12-07). The seen
# edge groups' rows, which are not rows of one array, come in by address (`rows.py`).

#: pixels per block of the pooled edge baseline: its five (block,) scratch rows stay in L1
_EDGE_BLOCK = 256


@njit(nogil=True, cache=True, error_model="numpy")
def _pooled_edge_mean(s_addr, q_addr, counts, k, out, start, stop):
    """out[p] for start <= p < stop: the pooled mean of the groups within k standard errors
    of pixel p's lowest group mean (first lowest on ties), a block of pixels and one group
    at a time so that every loop is a plain loop over the block (the pixel-by-pixel form:
    2048^2, 8 groups, 2 cores, 0.088 s in C, 0.017 s by blocks). `s_addr`, `q_addr` (G,)
    uint64: the addresses of the groups' (P,) float64 sums and sums of squares."""
    n_groups = counts.shape[0]
    n_pixels = out.shape[0]
    m_low = np.empty(_EDGE_BLOCK)
    var_low = np.empty(_EDGE_BLOCK)
    n_low = np.empty(_EDGE_BLOCK)
    num = np.empty(_EDGE_BLOCK)
    den = np.empty(_EDGE_BLOCK)
    for p0 in range(start, stop, _EDGE_BLOCK):
        nb = min(_EDGE_BLOCK, stop - p0)
        base = np.uint64(p0)
        s0 = _row(s_addr[0], 0, n_pixels)
        q0 = _row(q_addr[0], 0, n_pixels)
        n0 = counts[0]
        for i in range(nb):
            m = s0[base + np.uint64(i)] / n0
            v = q0[base + np.uint64(i)] / n0 - m * m
            m_low[i] = m
            var_low[i] = v if v > 0 else 0.0
            n_low[i] = n0
        for g in range(1, n_groups):  # the lowest group (the first one on ties)
            sg = _row(s_addr[g], 0, n_pixels)
            qg = _row(q_addr[g], 0, n_pixels)
            ng = counts[g]
            for i in range(nb):
                mean = sg[base + np.uint64(i)] / ng
                v = qg[base + np.uint64(i)] / ng - mean * mean
                lower = mean < m_low[i]
                var_low[i] = (v if v > 0 else 0.0) if lower else var_low[i]
                m_low[i] = mean if lower else m_low[i]
                n_low[i] = ng if lower else n_low[i]
        for i in range(nb):
            num[i] = 0.0
            den[i] = 0.0
        for g in range(n_groups):
            sg = _row(s_addr[g], 0, n_pixels)
            ng = counts[g]
            for i in range(nb):
                x = sg[base + np.uint64(i)]
                inside = x / ng <= m_low[i] + k * np.sqrt(var_low[i] * (1.0 / n_low[i] + 1.0 / ng))
                num[i] += x if inside else 0.0
                den[i] += ng if inside else 0.0
        for i in range(nb):
            out[base + np.uint64(i)] = num[i] / den[i]


def pooled_edge_mean_rows(sums, sumsq, counts: np.ndarray, k: float, out: np.ndarray, start: int,
                          stop: int) -> None:
    """For pixels start <= p < stop: out[p] = the pooled mean of the groups whose mean is
    within k standard errors of the pixel's lowest group mean (`sums`, `sumsq`: sequences
    of G C-contiguous (P,) float64 rows, which the caller keeps alive; `counts` (G,)
    float64 frame counts > 0; see `background.pooled_edge_mean`)."""
    if out.ndim != 1 or out.dtype != np.float64 or not out.flags.c_contiguous:
        raise ValueError("out must be a C-contiguous (P,) float64 array")
    n_pixels = out.shape[0]
    s_addr, q_addr = _row_addresses(sums, n_pixels, "sums"), _row_addresses(sumsq, n_pixels, "sumsq")
    n = np.asarray(counts)
    if (n.dtype != np.float64 or n.shape != s_addr.shape or s_addr.shape != q_addr.shape or not len(n)
            or not (n > 0).all()):
        raise ValueError("counts must have one positive entry per group")
    _check_range(start, stop, n_pixels)
    if stop > start:
        _pooled_edge_mean(s_addr, q_addr, np.ascontiguousarray(n), float(k), out, start, stop)


def _row_addresses(rows, n_pixels: int, name: str) -> np.ndarray:
    """The addresses of C-contiguous (P,) float64 rows, checked (the caller keeps the rows
    alive while a kernel reads them)."""
    for row in rows:
        if (not isinstance(row, np.ndarray) or row.dtype != np.float64 or row.shape != (n_pixels,)
                or not row.flags.c_contiguous):
            raise ValueError(f"{name}: each row must be a C-contiguous ({n_pixels},) float64 array")
    return np.array([row.ctypes.data for row in rows], dtype=np.uint64)


@njit(nogil=True, cache=True, error_model="numpy")
def _central_moments(sums, weights, offset, has_offset, index, centre, scale, intensity, mean, cov, m3, m4,
                     start, stop, base):
    """The raw power sums (with the offset subtracted through the weights) of pixels
    start <= p < stop to the intensity, mean, cov, m3 and m4 in motor units, pixel p into
    column p - base of the outputs. Pixel by pixel: the moments are a tool's and the
    tests' (the maps come straight from the sums, `_moment_maps_of_sums`)."""
    m_motors = centre.shape[0]
    i0 = index[0]
    mu = np.empty(m_motors)
    for p in range(start, stop):
        pu = np.uint64(p)
        q = np.uint64(p - base)
        o = offset[pu] if has_offset else 0.0
        s0 = sums[i0, pu] - weights[i0] * o
        intensity[q] = s0
        inv_s0 = 1.0 / s0 if s0 > 0 else np.nan
        for a in range(m_motors):
            row = index[1 + a]
            mu[a] = (sums[row, pu] - weights[row] * o) * inv_s0
        for a in range(m_motors):
            sa = scale[a]
            for b in range(a, m_motors):
                row = index[1 + m_motors + a * m_motors + b]
                c = ((sums[row, pu] - weights[row] * o) * inv_s0 - mu[a] * mu[b]) * sa * scale[b]
                cov[a, b, q] = c
                cov[b, a, q] = c
            # Horner forms of the raw -> central conversion in step units, then scaled
            x = mu[a]
            row = index[1 + m_motors + a * m_motors + a]
            e2 = (sums[row, pu] - weights[row] * o) * inv_s0
            e3 = np.nan
            row = index[1 + m_motors + m_motors * m_motors + a]
            if row >= 0:
                e3 = (sums[row, pu] - weights[row] * o) * inv_s0
                m3[a, q] = (e3 - x * (3.0 * e2 - 2.0 * x * x)) * sa * sa * sa
            else:
                m3[a, q] = np.nan
            row = index[1 + 2 * m_motors + m_motors * m_motors + a]
            if row >= 0:
                e4 = (sums[row, pu] - weights[row] * o) * inv_s0
                m4[a, q] = (e4 - x * (4.0 * e3 - x * (6.0 * e2 - 3.0 * x * x))) * sa * sa * sa * sa
            else:
                m4[a, q] = np.nan
            mean[a, q] = centre[a] + sa * x


def central_moments(sums, weights, offset, index, centre, scale, intensity, mean, cov, m3, m4, start, stop):
    """Raw power sums (R, P) in step units, with a per-pixel offset (P,) (or None)
    subtracted from every frame through the monomial weights (R,), to the intensity (P,),
    mean (M, P), cov (M, M, P), m3 and m4 (M, P) in motor units (see PowerSums.snapshot).
    `index` (as row numbers) = [i0, i_unit[M], i_pair[M*M], i3[M], i4[M]], -1 where the
    order is too low. The outputs may instead hold only the pixel range (their last
    dimension stop - start): pixel p then goes to column p - start (a tile's moments,
    without full-size arrays)."""
    off, has_off, rows = _source(sums, weights, offset, index, centre, scale)
    n_pixels, m = sums.shape[1], centre.shape[0]
    _check_range(start, stop, n_pixels)
    width = intensity.shape[0] if intensity.ndim == 1 else -1
    outputs = (intensity, mean, cov, m3, m4)
    if (width not in (n_pixels, stop - start) or mean.shape != (m, width) or cov.shape != (m, m, width)
            or m3.shape != (m, width) or m4.shape != (m, width)
            or any(a.dtype != np.float64 or not a.flags.c_contiguous or not a.flags.writeable for a in outputs)):
        raise ValueError("inconsistent shapes of the moment arrays")
    _central_moments(sums, np.ascontiguousarray(weights, dtype=np.float64), off, has_off, rows,
                     np.ascontiguousarray(centre, dtype=np.float64), np.ascontiguousarray(scale, dtype=np.float64),
                     intensity, mean, cov, m3, m4, start, stop, 0 if width == n_pixels else start)


@njit(nogil=True, cache=True, error_model="numpy")
def _moment_maps(mean, cov, m3, m4, valid, fwhm_per_sigma, out, start, stop):
    """The named maps of the moments for pixels start <= p < stop (see `moment_maps_rows`),
    into the rows of `out` (n_maps, P) float64."""
    m_motors = mean.shape[0]
    for p in range(start, stop):
        pu = np.uint64(p)
        ok = valid[pu]
        for a in range(m_motors):
            var = cov[a, a, pu]
            positive = ok and var > 0
            sd = np.sqrt(var if positive else 0.0)
            out[4 * a, pu] = mean[a, pu] if ok else np.nan
            out[4 * a + 1, pu] = fwhm_per_sigma * sd if positive else np.nan
            out[4 * a + 2, pu] = m3[a, pu] / (var * sd) if positive else np.nan
            out[4 * a + 3, pu] = m4[a, pu] / (var * var) - 3.0 if positive else np.nan
        r = 4 * m_motors
        for a in range(m_motors):
            for b in range(a + 1, m_motors):
                out[r, pu] = cov[a, b, pu] if ok else np.nan
                r += 1


def moment_maps_rows(mean, cov, m3, m4, valid, fwhm_per_sigma: float, out, start: int, stop: int) -> None:
    """For pixels start <= p < stop, the rows of `out` ((n_maps, P) float64): for each
    motor a, com = mean[a], fwhm = fwhm_per_sigma * sqrt(var), skewness = m3[a] /
    (var * sqrt(var)), kurtosis = m4[a] / (var * var) - 3 with var = cov[a, a]; then
    cov[a, b] for each a < b. NaN where valid[p] (bool) is false, and fwhm, skewness and
    kurtosis also where var is not > 0 (see maps.moment_maps). mean, m3, m4 (M, P), cov
    (M, M, P) float64."""
    arrays = (mean, cov, m3, m4, out)
    if any(not isinstance(a, np.ndarray) or a.dtype != np.float64 or not a.flags.c_contiguous for a in arrays):
        raise ValueError("mean, cov, m3, m4 and out must be C-contiguous float64 arrays")
    m, n_pixels = mean.shape if mean.ndim == 2 else (0, 0)
    if (not 1 <= m <= 3 or cov.shape != (m, m, n_pixels) or m3.shape != (m, n_pixels)
            or m4.shape != (m, n_pixels) or valid.shape != (n_pixels,) or valid.dtype != np.bool_):
        raise ValueError("inconsistent shapes of the moment arrays")
    if out.shape != (4 * m + m * (m - 1) // 2, n_pixels) or not out.flags.writeable:
        raise ValueError(f"out must be a writeable ({4 * m + m * (m - 1) // 2}, {n_pixels}) array")
    _check_range(start, stop, n_pixels)
    _moment_maps(mean, cov, m3, m4, valid, float(fwhm_per_sigma), out, start, stop)
