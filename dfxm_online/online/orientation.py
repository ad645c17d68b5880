"""Orientation maps from centre-of-mass maps: mosaicity colouring, KAM, orientation gradient.

Pure functions over 2-D maps (NaN = no signal), no I/O. The inputs are the `com_<motor>` maps
of `maps.moment_maps` (in motor units, e.g. degrees); with the usual motor order the first
one is the rocking angle (`mu`) and the second the rolling angle (`chi`).

Where we differ from darfix (on purpose):

- `kam` averages over the neighbours only. darfix includes the pixel itself (distance 0) in
  the mean over the kernel, which biases every value low by a factor (n-1)/n, n the number
  of valid pixels in the kernel: 8/9 inside a 3x3 kernel but 5/6 along the map's edges, 3/4
  in its corners and anything down to 1/2 next to masked pixels, so the bias is not even a
  uniform scale factor that could be corrected afterwards.
- `mosaicity_rgb` scales each axis by a robust half-range (99th percentile of the absolute
  deviation from the median), not by the min/max range, so a few outlier pixels (edges of
  the signal mask, hot pixels) cannot wash out the colours of the whole map.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from . import selection
from .kernels import orientation_maps
from .tiles import SNAPSHOT_PIXELS, for_each_tile

KEY_SIZE = 128
SCALE_PERCENTILE = 99.0
#: pixels per range of the colour pass: its three float64 temporaries (1.5 MB) stay in cache
COLOUR_PIXELS = 65536


# --------------------------------------------------------------------------------------------
# Mosaicity map


def _maps_as_read(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two COM maps as the compiled passes read them: both float32 as they are (the live
    snapshot's maps; each value is exact as a float64, so the colours and the key's centre
    and scale are those of the float64 maps, without two 32 MB converted copies at 2048^2),
    otherwise both float64."""
    a, b = np.asarray(a), np.asarray(b)
    dtype = np.float32 if a.dtype == np.float32 and b.dtype == np.float32 else np.float64
    return a.astype(dtype, copy=False), b.astype(dtype, copy=False)


def _colour(
    a: np.ndarray,
    b: np.ndarray,
    centre: tuple[float, float] = (0.0, 0.0),
    scale: tuple[float, float] = (1.0, 1.0),
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Key colour of the orientation vectors (u, v) = ((a - centre_a) / scale_a,
    (b - centre_b) / scale_b): (..., 3) float32 RGB, black where a or b is not finite
    (written into `out`, C-contiguous float32 of that shape, when given).

    hue = direction of (u, v), counter-clockwise from +u, in turns; saturation = length,
    clipped to 1; value = 1. With value 1 every channel is 1 - s * g(hue) with g piecewise
    linear, so the colour is continuous everywhere, including at the origin (white) and
    across hue 0/1, which is what lets a viewer read a pixel's orientation off the key.
    """
    # the closed form of HSV -> RGB at value 1 (channel n = 5, 3, 1 for R, G, B):
    # 1 - s * clip(min(k, 4 - k), 0, 1) with k = (n + 6 hue) mod 6. It equals matplotlib's
    # hsv_to_rgb to 1e-15 before the rounding to float32 (tested). One compiled pass per
    # pixel range (`orientation_maps.hsv_colour`) goes from the COM maps to float32 RGB.
    # Measured with the C pass it replaced (the numba one gives the same colours bit for
    # bit): at 2048^2 on 2 cores the colours took 1.2 s with matplotlib and 0.3 s in numpy;
    # with only the colours compiled and u, v (np.where), the black of pixels without signal
    # and the float32 copy in numpy, mosaicity_rgb with a given centre and scale took
    # 0.18 s, with all of it in the pass 0.05 s. The direction comes from numpy's arctan2
    # (SIMD where the CPU has it), one range at a time: glibc's atan2 in the pass cost
    # ~33 ns a pixel, and kept the pass from vectorizing; the colours of a 2048^2 map on 2
    # cores took 0.10 s with it and 0.012-0.017 s this way (one thread: 0.20 -> 0.041 s).
    # C against numba, same runs, 2048^2 float32, 2 cores under load, AVX2 host, median of
    # 15 (2026-12-07): this function 75 / 70 ms, the pass alone 9.5 / 7.5 ms (figures
    # per target in kernels/orientation_maps.py).
    a, b = np.broadcast_arrays(*_maps_as_read(a, b))
    shape = a.shape
    af, bf = np.ascontiguousarray(a).reshape(-1), np.ascontiguousarray(b).reshape(-1)
    (ca, cb), (sa, sb) = centre, scale
    out = np.empty((af.size, 3), dtype=np.float32) if out is None else out.reshape(af.size, 3)

    def colour_range(start: int, stop: int) -> None:
        # u and v as the pass computes them ((value - centre) / scale in float64). Where a
        # map is not finite the pass paints black whatever the angle; an overflow to inf
        # has its arctan2 as in C.
        with np.errstate(all="ignore"):  # numpy's error state is per thread: set it here
            u = np.subtract(af[start:stop], ca, dtype=np.float64)
            u /= sa
            v = np.subtract(bf[start:stop], cb, dtype=np.float64)
            v /= sb
            angle = np.arctan2(v, u, out=u)
        orientation_maps.hsv_colour(af, bf, ca, sa, cb, sb, angle, out, start, stop)

    for_each_tile(af.size, colour_range, tile=COLOUR_PIXELS)
    return out.reshape(*shape, 3)


def _robust_centre_scale(values: np.ndarray, other: np.ndarray, centre: float | None) -> tuple[float, float]:
    """Centre (default: median) and 99th percentile of |values - centre|, over the pixels
    where both `values` and `other` are finite.

    Both statistics are read off the map in place (`selection`: the values numpy's median
    and percentile give, without a filtered copy and its partitions; both axes of a 2048^2
    map in ~0.045 s on two threads, against ~0.055 s with numpy's partitions of copies).
    A constant (or empty) axis carries no orientation information: its scale falls back to
    1 so the division is defined and that axis contributes no saturation.
    """
    if centre is None:
        centre = selection.median(values, finite_with=other)
        if np.isnan(centre):  # no pixel with an orientation
            return 0.0, 1.0
    scale = selection.percentile(values, SCALE_PERCENTILE, finite_with=other, distance_to=centre)
    return centre, (scale if np.isfinite(scale) and scale > 0 else 1.0)


def mosaicity_rgb(
    com_a: np.ndarray,
    com_b: np.ndarray,
    centre: tuple[float, float] | None = None,
    scale: float | tuple[float, float] | None = None,
    key_size: int = KEY_SIZE,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float, float]]:
    """DFXM mosaicity map: each pixel coloured by its (COM_a, COM_b) orientation vector.

    The vector is ((com_a - centre_a) / scale_a, (com_b - centre_b) / scale_b):
    hue = its direction in turns, counter-clockwise from +a towards +b (+a -> 0 red,
    +b -> 0.25 yellow-green, -a -> 0.5 cyan, -b -> 0.75 violet); saturation = its length,
    clipped to 1 (the centre orientation is white); value = 1. Pixels where either map is
    NaN (no signal) are black, a colour no orientation can take.

    Defaults, over the pixels valid in both maps: `centre` = per-axis median, `scale` =
    per-axis 99th percentile of |com - centre|, i.e. a robust half-range, so each axis uses
    the whole key whatever its spread (a rocking angle typically spans far less than a
    rolling angle). Pass a scalar `scale` to give both axes the same one: hue is then the
    true tilt direction. Fixed `centre` and `scale` keep colours comparable between maps
    (and skip four partial sorts of the map).

    Returns `(rgb, key, key_extent)`:

    - `rgb`: (H, W, 3) float32 in [0, 1] (in `out` when given: see `maps.MapBuffers`);
    - `key`: (key_size, key_size, 3) float32, the same colouring evaluated at the centres of
      a key_size x key_size grid of cells; row i <-> b, column j <-> a, row 0 at bmin, so
      `imshow(key, origin="lower", extent=key_extent)` draws it with a horizontal;
    - `key_extent`: (amin, amax, bmin, bmax) = centre -/+ scale per axis.

    A pixel's colour is that of the key cell containing its (com_a, com_b) (up to the colour
    change within one cell). Pixels beyond the key are fully saturated: their colour is
    that of the key's rim (the unit circle) in the same direction.
    """
    a, b = _maps_as_read(com_a, com_b)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"com_a and com_b must be 2-D maps of one shape, got {a.shape} and {b.shape}"
        )
    if key_size < 1:
        raise ValueError(f"key_size must be positive, got {key_size}")

    ca, cb = (None, None) if centre is None else (float(centre[0]), float(centre[1]))
    if scale is None:  # robust half-range of the pixels that get a colour
        # one axis per thread (the compiled selection releases the GIL)
        stats = [(0.0, 0.0)] * 2

        def axis(i: int, _stop: int) -> None:
            stats[i] = _robust_centre_scale((a, b)[i], (b, a)[i], (ca, cb)[i])

        for_each_tile(2, axis, tile=1)
        (ca, sa), (cb, sb) = stats
    else:
        sa, sb = (float(s) for s in np.broadcast_to(np.asarray(scale, dtype=np.float64), (2,)))
        if ca is None or cb is None:
            medians = (selection.median(x, finite_with=y) for x, y in ((a, b), (b, a)))
            ca, cb = (0.0 if np.isnan(m) else m for m in medians)
    if not (np.isfinite([ca, cb, sa, sb]).all() and sa > 0 and sb > 0):
        raise ValueError(f"centre must be finite and scale positive, got {(ca, cb)}, {(sa, sb)}")

    rgb = _colour(a, b, (ca, cb), (sa, sb), out)
    # Key cell centres in normalised units: the grid spans [-1, 1] on both axes.
    grid = (2.0 * np.arange(key_size) + 1.0) / key_size - 1.0
    key = _colour(grid[np.newaxis, :], grid[:, np.newaxis])
    extent = (ca - sa, ca + sa, cb - sb, cb + sb)
    return rgb, key, extent


# --------------------------------------------------------------------------------------------
# Kernel average misorientation and orientation gradient


def _stack_maps(com_maps: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(M, H, W) float64 stack of the maps and the (H, W) mask of pixels finite in all."""
    if len(com_maps) == 0:
        raise ValueError("need at least one COM map")
    stack = np.stack([np.asarray(m, dtype=np.float64) for m in com_maps])
    if stack.ndim != 3:
        raise ValueError(f"COM maps must be 2-D, got shape {stack.shape[1:]}")
    return stack, np.isfinite(stack).all(axis=0)


def _offsets(radius: int, connectivity: str) -> np.ndarray:
    """(K, 2) int64 (dy, dx) of the neighbourhood, the pixel itself excluded."""
    offsets = [
        (dy, dx)
        for dy in range(-radius, radius + 1)
        for dx in range(-radius, radius + 1)
        if (dy, dx) != (0, 0) and (connectivity == "eight" or abs(dy) + abs(dx) <= radius)
    ]
    return np.array(offsets, dtype=np.int64).reshape(-1, 2)


def kam(
    com_maps: Sequence[np.ndarray],
    radius: int = 1,
    connectivity: Literal["four", "eight"] = "eight",
    max_distance: float | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Kernel average misorientation: mean distance from a pixel's COM vector to its neighbours'
    (into `out`, float64 of the maps' shape, when given).

    For each pixel p: the mean over its valid neighbours q of
    sqrt(sum_m (com_m[p] - com_m[q])^2), in the maps' units (e.g. degrees). This is the local
    orientation spread of Pantleon's KAM as darfix computes it from the COM maps, with one
    deliberate difference: the pixel itself is NOT one of its neighbours. darfix counts it
    with distance 0, which biases KAM low by (n-1)/n, with n the number of pixels in the
    kernel, and n changes at mask edges, so the bias is not even uniform.

    Neighbourhood: `connectivity="eight"` is the (2r+1) x (2r+1) square kernel (r = 1: the
    usual 3x3 kernel, 8 neighbours), `"four"` the diamond |dy| + |dx| <= r (r = 1: the 4
    edge-sharing neighbours). A neighbour is valid when it is inside the map and finite in every map.
    `max_distance`, if given, also drops neighbours farther than it (the EBSD practice of
    keeping grain boundaries out of the intra-grain KAM).

    NaN where the pixel itself is NaN or has no valid neighbour. float64 result; float32
    maps are read as they are (each value is widened exactly), others converted to float64.
    """
    # One compiled pass per range of rows (`orientation_maps.kam_rows`), each pixel
    # gathering its neighbours, so row ranges run on the tile threads. Measured with the C
    # pass it replaced (the numba one gives the same values bit for bit): at 2048^2, two COM
    # maps, 2 cores: 0.04 s for the 3x3 kernel (0.10 s for 5x5), against 0.20 s (0.52 s)
    # for numpy's whole-array slices per +/- pair of offsets in a warm process and up to
    # 0.9 s on fresh memory (a 64 MB stack of the maps and map-sized temporaries per pair).
    # C against numba, same runs, two float32 maps, 2 cores under load, AVX2 host, median of
    # 15 (2026-12-07): 3x3 30 / 26 ms, 5x5 81 / 76 ms (figures per target in
    # kernels/orientation_maps.py).
    if radius < 1:
        raise ValueError(f"radius must be >= 1, got {radius}")
    if connectivity not in ("four", "eight"):
        raise ValueError(f"connectivity must be 'four' or 'eight', got {connectivity!r}")
    if len(com_maps) == 0:
        raise ValueError("need at least one COM map")
    maps = [np.asarray(m) for m in com_maps]
    dtype = np.float32 if all(m.dtype == np.float32 for m in maps) else np.float64
    maps = [np.ascontiguousarray(m, dtype=dtype) for m in maps]
    shape = maps[0].shape
    if len(shape) != 2 or any(m.shape != shape for m in maps):
        raise ValueError(f"COM maps must be 2-D of one shape, got {[m.shape for m in maps]}")
    if out is None:
        out = np.empty(shape)
    elif out.shape != shape or out.dtype != np.float64 or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous float64 of shape {shape}")
    offsets = _offsets(radius, connectivity)
    limit = np.inf if max_distance is None else float(max_distance)
    rows = max(1, SNAPSHOT_PIXELS // max(shape[1], 1))
    for_each_tile(shape[0], lambda start, stop: orientation_maps.kam_rows(
        maps, offsets, limit, out, start, stop), tile=rows)
    return out


def orientation_gradient(com_maps: Sequence[np.ndarray]) -> np.ndarray:
    """Orientation gradient magnitude per pixel step, from forward differences.

    sqrt(sum_m [(com_m[y, x+1] - com_m[y, x])^2 + (com_m[y+1, x] - com_m[y, x])^2]): for
    (mu, chi) maps this is sqrt(|grad mu|^2 + |grad chi|^2), the darfix-style
    delta-gamma = sqrt(delta-mu^2 + delta-chi^2). Unlike `kam` it is one-sided and uses only
    two neighbours, so it is noisier and shifted by half a pixel; it is here for comparison
    with darfix results. NaN where the pixel, its right or its lower neighbour is NaN, and on
    the last row and column (no forward neighbour).
    """
    stack, valid = _stack_maps(com_maps)
    h, w = valid.shape
    out = np.full((h, w), np.nan)
    if h < 2 or w < 2:
        return out
    with np.errstate(invalid="ignore"):
        dx = stack[:, :-1, 1:] - stack[:, :-1, :-1]
        dy = stack[:, 1:, :-1] - stack[:, :-1, :-1]
        grad = np.sqrt(np.einsum("mij,mij->ij", dx, dx) + np.einsum("mij,mij->ij", dy, dy))
    ok = valid[:-1, :-1] & valid[:-1, 1:] & valid[1:, :-1]
    out[:-1, :-1] = np.where(ok, grad, np.nan)
    return out
