"""Orientation map loops compiled with numba: the mosaicity colours and KAM (see
`online/orientation.py` for the maths). The same arithmetic, in the same order, as the C
loops `hsv_colour` and `kam_rows` of the C module `_pixelmaps` they replaced, so the same
values bit for bit on every target (no fastmath: no FMA contraction, no reassociation), and
equivalent argument checks (the same exception types).

Each function works a range of pixels or rows and releases the GIL; callers spread the
ranges over the tile threads. Arrays are indexed, not sliced, in the loops (a view's
reference count is updated atomically: see frame_pass.py), with unsigned offsets (numba
adds the length to a negative signed index, and that check keeps loops from vectorizing).

The live snapshot's COM maps are float32: both passes read them as they are, each value
widened exactly to float64, so their results are those of the float64 maps without 16 MB
converted copies per map at 2048^2. KAM reads its 1 to 64 maps through their addresses
(`rows.pointer`), not a stacked (M, H, W) copy; one compiled loop per dtype, and within it
one per map count 1, 2 and 3 (the COM maps of one to three motors) with the loop over the
maps unrolled, and a loop for any count.

Speed against the C (2048^2 float32 maps, 2 cores under load, tile threads as in
production, median of 15 alternating runs, C / numba, 2026-12-07; the machine's load moved
both by up to 2x between runs, not their ratio): on the AVX2 host (znver3) the colours
(`orientation._colour`) 75 / 70 ms, the pass alone 9.5 / 7.5 ms, KAM of two maps 3x3
30 / 26 ms, 5x5 81 / 76 ms; NUMBA_CPU_NAME=haswell and x86-64 the same picture (numba
2-25 % faster), and KAM of 4 maps, the loop for any count, 3x faster than the C's. The
exception is NUMBA_CPU_NAME=generic (the tests' SSE2 path), numba 1.6-2x slower in the
passes: LLVM's cost model for that CPU name splits a vector sqrt into scalar `sqrtsd`s
(even in a plain `t[i] += sqrt(x[i])` loop), where x86-64, the same SSE2 instruction set,
takes `sqrtpd`. Real pre-AVX2 CPUs are compiled for under their own names (nehalem,
sandybridge, ...), which take `sqrtpd`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numba import njit

from .rows import check_range as _check_range
from .rows import pointer as _map_pointer

#: most maps `kam_rows` takes (as the C did)
MAX_MAPS = 64
#: sixths of a turn per radian (the C's 3.0 / M_PI, the same double)
_SIXTHS_PER_RADIAN = 3.0 / math.pi


# ---- maps read where they are, and the checks of the C ------------------------------------


#: the dtype marker `_map_pointer` takes, per map dtype
_LIKE = {np.dtype(np.float32): np.empty(0, np.float32), np.dtype(np.float64): np.empty(0, np.float64)}


def _address(x: np.ndarray) -> np.uint64:
    """The address of a C-contiguous array's first element (the caller keeps `x` alive
    while a pass reads it)."""
    return np.uint64(x.__array_interface__["data"][0])


def _float_kind(x: np.ndarray) -> int:
    """1 for float32, 0 for float64, -1 for anything else (the passes that take both)."""
    return 1 if x.dtype == np.float32 else (0 if x.dtype == np.float64 else -1)


def _array(x, ndim: int, name: str, dtype: type | None = None, writable: bool = False) -> np.ndarray:
    """`x` as a C-contiguous ndarray of `ndim` dimensions (of `dtype` when given), as the C
    took its buffers: ValueError for the dimensions, contiguity or a read-only `out`,
    TypeError for the dtype."""
    x = np.asarray(x)
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, not {x.ndim}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if writable and not x.flags.writeable:
        raise ValueError(f"{name} must be writable")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name} must be {np.dtype(dtype).name}, not {x.dtype.name}")
    return x


# ---- mosaicity colours --------------------------------------------------------------------


@njit(nogil=True, cache=True, error_model="numpy")
def _hsv_range(like, a_address, b_address, ca, sa, cb, sb, angle, out, start, n):
    """out[3 p + c] for pixels start <= p < start + n (see `hsv_colour`) of the maps a, b at
    `a_address`, `b_address` (of `like`'s dtype: one compiled loop per dtype, whether the
    maps are writable or not); `out` flat (3 P,), so that the three stores per pixel have a
    stride known to LLVM (3) and the loop vectorizes. Branch-free selects, as the C;
    error_model "numpy": a zero scale divides as in C (inf, NaN), with no check in the
    loop."""
    a = _map_pointer(like, a_address)
    b = _map_pointer(like, b_address)
    base = np.uint64(start)
    for i in range(n):
        iu = np.uint64(i)
        p = base + iu
        x = np.float64(a[p])
        y = np.float64(b[p])
        ok = np.isfinite(x) & np.isfinite(y)  # else no signal: black, no orientation has it
        u = (x - ca) / sa
        v = (y - cb) / sb
        hue6 = angle[iu] * _SIXTHS_PER_RADIAN  # sixths of a turn, in [-3, 3]
        hue6 = hue6 + 6.0 if hue6 < 0 else hue6
        # sqrt(u^2 + v^2), not hypot (which guards against overflow and does not vectorize):
        # within an ulp of it; overflow (inf) and underflow (0) land where the clip below puts
        # the exact value anyway, to within 1e-150 of a colour
        sat = np.sqrt(u * u + v * v)
        sat = sat if sat < 1.0 else 1.0
        # closed form of HSV -> RGB at value 1: 1 - s * clip(min(k, 4 - k), 0, 1) with
        # k = (n + hue6) mod 6 for n = 5, 3, 1; n + hue6 is in [1, 11], where subtracting 6 is
        # exact, so equal to fmod
        o = np.uint64(3) * p
        k = 5.0 + hue6
        k = k if k < 6.0 else k - 6.0
        g = k if k < 4.0 - k else 4.0 - k
        g = 0.0 if g < 0.0 else (1.0 if g > 1.0 else g)
        out[o] = np.float32(1.0 - sat * g) if ok else np.float32(0.0)
        k = 3.0 + hue6
        k = k if k < 6.0 else k - 6.0
        g = k if k < 4.0 - k else 4.0 - k
        g = 0.0 if g < 0.0 else (1.0 if g > 1.0 else g)
        out[o + np.uint64(1)] = np.float32(1.0 - sat * g) if ok else np.float32(0.0)
        k = 1.0 + hue6
        k = k if k < 6.0 else k - 6.0
        g = k if k < 4.0 - k else 4.0 - k
        g = 0.0 if g < 0.0 else (1.0 if g > 1.0 else g)
        out[o + np.uint64(2)] = np.float32(1.0 - sat * g) if ok else np.float32(0.0)


def hsv_colour(a, b, centre_a: float, scale_a: float, centre_b: float, scale_b: float, angle, out,
               start: int, stop: int) -> None:
    """out[p] = RGB (3 float32) of the orientation vector (u, v) = ((a[p] - centre_a) / scale_a,
    (b[p] - centre_b) / scale_b), for start <= p < stop: hue = its direction in turns
    counter-clockwise from +u, saturation = its length clipped to 1, value 1; black (0, 0, 0)
    where a[p] or b[p] is not finite (see orientation.mosaicity_rgb). a, b (P,) both float64
    or both float32 (read as they are, each value widened exactly: the live float32 COM maps
    need no converted copies); angle (stop - start,) float64 = arctan2(v, u) of those pixels
    (numpy's: see orientation._colour); out (P, 3) float32, C-contiguous."""
    a = _array(a, 1, "a")
    b = _array(b, 1, "b")
    angle = _array(angle, 1, "angle", np.float64)
    out = _array(out, 2, "out", np.float32, writable=True)
    f32 = _float_kind(a)
    if f32 < 0 or _float_kind(b) != f32:
        raise TypeError("a and b must be both float64 or both float32")
    n_pixels = a.shape[0]
    if b.shape[0] != n_pixels or out.shape != (n_pixels, 3):
        raise ValueError("a, b must be (P,) and out (P, 3)")
    _check_range(start, stop, n_pixels)
    if angle.shape[0] != stop - start:
        raise ValueError("angle must have one value per pixel of start..stop")
    _hsv_range(_LIKE[a.dtype], _address(a), _address(b), float(centre_a), float(scale_a), float(centre_b),
               float(scale_b), angle, out.reshape(-1), start, stop - start)


# ---- kernel average misorientation --------------------------------------------------------


@njit(nogil=True, cache=True, inline="always", error_model="numpy")
def _span(y, dy, dx, w, h, y0):
    """Where row y's pixels meet their neighbour (dy, dx) inside the map: how many pixels
    (0: none, the neighbour row or column is outside), and the unsigned offsets of the first
    such pixel x0 in a row of totals, in the maps, of its neighbour in the maps, and of both
    in the validity rows (which start at row y0). Never negative, so unsigned: no
    wraparound check in the loops that use them."""
    qy = y + dy
    if qy < 0 or qy >= h or dx >= w or dx <= -w:
        zero = np.uint64(0)
        return 0, zero, zero, zero, zero, zero
    x0 = -dx if dx < 0 else 0
    x1 = w - dx if dx > 0 else w
    return (x1 - x0, np.uint64(x0), np.uint64(y * w + x0), np.uint64(qy * w + dx + x0),
            np.uint64((y - y0) * w + x0), np.uint64((qy - y0) * w + dx + x0))


@njit(nogil=True, cache=True, inline="always", error_model="numpy")
def _clear_row(total, count, w):
    for x in range(w):
        total[x] = 0.0
        count[x] = 0


@njit(nogil=True, cache=True, inline="always", error_model="numpy")
def _row_means(total, count, valid, out, y, y0, w):
    """Row y of KAM: the mean distance to the valid neighbours, NaN where the pixel is not
    valid or has none."""
    row = np.uint64((y - y0) * w)
    o = np.uint64(y * w)
    for x in range(w):
        xu = np.uint64(x)
        out[o + xu] = total[xu] / count[xu] if (valid[row + xu] and count[xu] != 0) else np.nan


@njit(nogil=True, cache=True, inline="always", error_model="numpy")
def _kam_fixed(like, addresses, n_maps, w, h, off, max_distance, out, start, stop, valid, y0, y1,
               total, count):
    """Rows start <= y < stop of KAM for a literal `n_maps` of 1 to 3 (see `kam_rows`): the
    loop over the maps has a known length, so it unrolls inside the loop over a row's pixels,
    which vectorizes; the sums are those of the C, in the same order."""
    p0 = _map_pointer(like, addresses[0])
    p1 = _map_pointer(like, addresses[1 if n_maps > 1 else 0])
    p2 = _map_pointer(like, addresses[2 if n_maps > 2 else 0])
    wu = np.uint64(w)
    first = np.uint64(y0) * wu
    for i in range((y1 - y0) * w):
        iu = np.uint64(i)
        ok = True
        for m in range(n_maps):
            pm = p0 if m == 0 else (p1 if m == 1 else p2)
            ok &= np.isfinite(np.float64(pm[first + iu]))
        valid[iu] = ok
    for y in range(start, stop):
        _clear_row(total, count, w)
        for k in range(off.shape[0]):
            n, tp, pp, pq, vp, vq = _span(y, off[k, 0], off[k, 1], w, h, y0)
            for j in range(n):
                ju = np.uint64(j)
                s = 0.0
                for m in range(n_maps):
                    pm = p0 if m == 0 else (p1 if m == 1 else p2)
                    d = np.float64(pm[pp + ju]) - np.float64(pm[pq + ju])
                    s += d * d
                both = valid[vp + ju] & valid[vq + ju]
                dist = np.sqrt(s if both else 0.0)  # never NaN
                ok = both & (dist <= max_distance)
                total[tp + ju] += dist if ok else 0.0
                count[tp + ju] += ok
        _row_means(total, count, valid, out, y, y0, w)


@njit(nogil=True, cache=True, error_model="numpy")
def _kam_any(like, addresses, w, h, off, max_distance, out, start, stop, valid, y0, y1, total, count,
             sums):
    """`_kam_fixed` for any number of maps: one map at a time over a row's pixels, the squared
    differences summed into `sums` (one row of scratch) in map order, as the C sums them."""
    n_maps = addresses.shape[0]
    wu = np.uint64(w)
    first = np.uint64(y0) * wu
    n_valid = (y1 - y0) * w
    for i in range(n_valid):
        valid[np.uint64(i)] = True
    for m in range(n_maps):
        pm = _map_pointer(like, addresses[m])
        for i in range(n_valid):
            iu = np.uint64(i)
            valid[iu] &= np.isfinite(np.float64(pm[first + iu]))
    for y in range(start, stop):
        _clear_row(total, count, w)
        for k in range(off.shape[0]):
            n, tp, pp, pq, vp, vq = _span(y, off[k, 0], off[k, 1], w, h, y0)
            for j in range(n):
                sums[np.uint64(j)] = 0.0
            for m in range(n_maps):
                pm = _map_pointer(like, addresses[m])
                for j in range(n):
                    ju = np.uint64(j)
                    d = np.float64(pm[pp + ju]) - np.float64(pm[pq + ju])
                    sums[ju] += d * d
            for j in range(n):
                ju = np.uint64(j)
                both = valid[vp + ju] & valid[vq + ju]
                dist = np.sqrt(sums[ju] if both else 0.0)  # never NaN
                ok = both & (dist <= max_distance)
                total[tp + ju] += dist if ok else 0.0
                count[tp + ju] += ok
        _row_means(total, count, valid, out, y, y0, w)


@njit(nogil=True, cache=True, error_model="numpy")
def _kam_range(like, addresses, w, h, off, max_distance, out, start, stop):
    """KAM of rows start <= y < stop (0 <= start < stop <= h) into `out` (h * w,) float64, from
    the maps at `addresses` ((M,) uint64, C-contiguous (h, w) arrays of `like`'s dtype, which
    the caller keeps alive): the validity of the rows within the kernel's reach first ("finite
    in every map"), then per row its neighbours gathered (so that threads on other row ranges
    never write here)."""
    r = 0  # rows of halo
    for k in range(off.shape[0]):
        dy = abs(off[k, 0])
        r = (dy if dy < h else h) if dy > r else r
    y0 = max(start - r, 0)
    y1 = min(stop + r, h)
    valid = np.empty((y1 - y0) * w, np.bool_)
    total = np.empty(w)
    count = np.empty(w, np.int32)
    n_maps = addresses.shape[0]
    if n_maps == 2:  # two motors' COM maps, the usual case
        _kam_fixed(like, addresses, 2, w, h, off, max_distance, out, start, stop, valid, y0, y1, total, count)
    elif n_maps == 1:
        _kam_fixed(like, addresses, 1, w, h, off, max_distance, out, start, stop, valid, y0, y1, total, count)
    elif n_maps == 3:
        _kam_fixed(like, addresses, 3, w, h, off, max_distance, out, start, stop, valid, y0, y1, total, count)
    else:
        _kam_any(like, addresses, w, h, off, max_distance, out, start, stop, valid, y0, y1, total, count,
                 np.empty(w))


def kam_rows(maps: Sequence[np.ndarray], offsets, max_distance: float, out, start: int, stop: int) -> None:
    """For rows start <= y < stop: out[y, x] = mean distance sqrt(sum_m (map_m[y, x] -
    map_m[y + dy, x + dx])^2) to the neighbours (dy, dx) of offsets ((K, 2) int64) that are
    inside the map, finite in every map and no farther than max_distance (inf: no limit); NaN
    where the pixel is not finite in every map or has no such neighbour (see orientation.kam).
    maps: a sequence of 1 to MAX_MAPS C-contiguous (H, W) arrays, all float64 or all float32
    (read as they are); out (H, W) float64, C-contiguous."""
    offsets = _array(offsets, 2, "offsets")
    out = _array(out, 2, "out", np.float64, writable=True)
    if offsets.dtype != np.int64 or offsets.shape[1] != 2:
        raise ValueError("offsets must be (K, 2) int64")
    h, w = out.shape
    maps = list(maps)
    if not 1 <= len(maps) <= MAX_MAPS:
        raise ValueError(f"need 1 to {MAX_MAPS} maps, got {len(maps)}")
    maps = [_array(m, 2, "maps") for m in maps]
    kind = _float_kind(maps[0])
    for m in maps:
        if _float_kind(m) < 0 or _float_kind(m) != kind or m.shape != (h, w):
            raise ValueError("maps must be all float64 or all float32, of the shape of out")
    _check_range(start, stop, h)
    if start == stop:
        return
    # the maps stay referenced by `maps` until the pass returns
    addresses = np.array([_address(m) for m in maps], dtype=np.uint64)
    _kam_range(_LIKE[maps[0].dtype], addresses, w, h, offsets, float(max_distance), out.reshape(-1),
               start, stop)
