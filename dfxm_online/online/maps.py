"""Accumulator snapshots -> physical maps. Pure functions, no I/O.

Map names are a contract (files, the live viewer and users rely on them): `intensity`,
`com_<motor>`, `fwhm_<motor>`, `skewness_<motor>`, `kurtosis_<motor>`, `cov_<m1>_<m2>`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import numpy as np

from ..gaussian import FWHM_PER_SIGMA
from . import selection
from .accumulators.moments import MomentSnapshot, PowerSums
from .kernels import pixelmaps
from .tiles import SNAPSHOT_PIXELS, for_each_tile


class Maps(dict):
    """Named maps (name -> array) with the axes of those that have physical ones: `axes`
    maps a map's name to its [(axis name, values), ...] (the mosaicity key's motor values,
    the PCA variance's component index, a per-motor-value stack's motor values). One
    object, so that a map and its axes cannot come from two different snapshots."""

    def __init__(self, maps=(), axes: dict | None = None) -> None:
        super().__init__(maps)
        self.axes: dict[str, list[tuple[str, np.ndarray]]] = dict(axes or {})


class MapBuffers:
    """The arrays a scan's snapshots write into, allocated once per scan: on first use, and
    again only when a map's shape or type changes (the live binning moved). The daemon's
    worker passes one to every live snapshot of a scan, so a cycle allocates none of its
    maps; a snapshot made with it is overwritten by the next one (the daemon writes each
    version before it takes the next snapshot)."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def array(self, key: str, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        """The buffer `key` of this shape and type (uninitialised the first time)."""
        current = self._arrays.get(key)
        if current is None or current.shape != tuple(shape) or current.dtype != np.dtype(dtype):
            current = self._arrays[key] = np.empty(shape, dtype=dtype)
        return current

    def copy(self, key: str, values: np.ndarray, dtype: np.dtype | type) -> np.ndarray:
        """`values` as `dtype` in the buffer `key` (a rounding copy without an allocation)."""
        out = self.array(key, values.shape, dtype)
        np.copyto(out, values, casting="unsafe")
        return out


def signal_mask(intensity: np.ndarray, min_fraction: float) -> np.ndarray:
    """Pixels with enough integrated intensity to give meaningful moments.

    The reference level is the 99.5th percentile of the positive intensities (robust to a
    few hot pixels); pixels below `min_fraction` of it, or not positive, are masked.
    """
    if min_fraction <= 0:  # no level: the positive pixels (the window's maps, band by band)
        with np.errstate(invalid="ignore"):
            return intensity > 0
    # np.percentile of the finite positive values, read in place (selection.percentile: at
    # 2048^2 ~0.02 s against ~0.035 s for the filtered copy and its partition)
    reference = selection.percentile(intensity, 99.5, positive=True)
    if np.isnan(reference):  # no positive value
        return np.zeros(intensity.shape, dtype=bool)
    level = min_fraction * reference
    with np.errstate(invalid="ignore"):
        return (intensity > 0) & (intensity >= level)


def _map_names(motor_names: Sequence[str]) -> list[str]:
    """Names of the maps `kernels.pixelmaps.moment_maps_rows` writes, in its order."""
    m = len(motor_names)
    kinds = ("com", "fwhm", "skewness", "kurtosis")
    names = [f"{kind}_{name}" for name in motor_names for kind in kinds]
    names += [f"cov_{motor_names[a]}_{motor_names[b]}" for a in range(m) for b in range(a + 1, m)]
    return names


def _moment_arrays(snap: MomentSnapshot, m: int) -> tuple[np.ndarray, ...]:
    """mean, cov, m3, m4 of the first m motors as the compiled pass reads them."""

    def arr(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x, dtype=np.float64)

    return arr(snap.mean[:m]), arr(snap.cov[:m, :m]), arr(snap.m3[:m]), arr(snap.m4[:m])


def _named_maps(
    intensity: np.ndarray,
    motor_names: Sequence[str],
    shape: tuple[int, int],
    min_intensity_fraction: float,
    fill: Callable[[np.ndarray, np.ndarray, int, int], None],
    tile: int,
    dtype: np.dtype | type = np.float64,
    buffers: MapBuffers | None = None,
) -> dict[str, np.ndarray]:
    """The maps dict: intensity, then the moment maps that `fill(valid, out, start, stop)`
    writes into the rows of `out` (n_maps, P) of `dtype` for each pixel range (on the tile
    threads); each map is a row of it (`out` from `buffers` when given)."""
    valid = np.ascontiguousarray(signal_mask(intensity, min_intensity_fraction)).reshape(-1)
    image = intensity.reshape(shape)
    if buffers is not None and image.dtype != np.dtype(dtype):
        image = buffers.copy("intensity", image, dtype)
    maps: dict[str, np.ndarray] = {"intensity": image.astype(dtype, copy=False)}
    if not motor_names:
        return maps
    names = _map_names(motor_names)
    out = (np.empty if buffers is None else partial(buffers.array, "moments"))((len(names), valid.size), dtype)
    for_each_tile(valid.size, lambda start, stop: fill(valid, out, start, stop), tile=tile)
    maps.update((name, values.reshape(shape)) for name, values in zip(names, out))
    return maps


def moment_maps(
    snap: MomentSnapshot,
    motor_names: Sequence[str],
    shape: tuple[int, int],
    min_intensity_fraction: float = 0.05,
) -> dict[str, np.ndarray]:
    """Named 2-D maps from a moment snapshot; pixels without enough signal are NaN.

    Per motor: `com` = mean, `fwhm` = FWHM_PER_SIGMA * sqrt(var), `skewness` = m3 / var^1.5,
    `kurtosis` = m4 / var^2 - 3 (excess), the last three also NaN where var is not > 0;
    then `cov` of each pair of motors.
    """
    # One compiled pass per pixel range writes all the maps (kernels.pixelmaps.moment_maps_rows):
    # at 2048^2, two motors, 2 cores, in a warm process, moment_maps took 0.10 s (0.044 s of
    # it the signal mask) against 0.23 s with numpy's np.where per map and 0.24 s with the
    # same expressions in numexpr; on fresh memory numpy's temporaries made it 0.6-0.9 s
    # (measured with the C loop that the numba one replaced, level with it: bench/RESULTS.md).
    arrays = _moment_arrays(snap, len(motor_names))

    def fill(valid: np.ndarray, out: np.ndarray, start: int, stop: int) -> None:
        pixelmaps.moment_maps_rows(*arrays, valid, FWHM_PER_SIGMA, out, start, stop)

    return _named_maps(snap.intensity, motor_names, shape, min_intensity_fraction, fill, SNAPSHOT_PIXELS)


def moment_maps_of_sums(
    moments: PowerSums,
    offset: np.ndarray | None,
    motor_names: Sequence[str],
    shape: tuple[int, int],
    min_intensity_fraction: float = 0.05,
    dtype: np.dtype | type = np.float64,
    buffers: MapBuffers | None = None,
) -> dict[str, np.ndarray]:
    """`moment_maps(moments.snapshot(offset), ...)`, bit for bit, straight from the sums
    (into `buffers` when given: see `MapBuffers`).

    With `dtype` float32, the same maps rounded to float32 (computed in float64 and rounded
    once when stored): what a maps file stores, at half the memory (a 2048^2 two-motor
    snapshot holds 10 such maps: 160 MB instead of 320 MB).

    The full-size snapshot holds 11 float64 rows at two motors (352 MB at 2048^2) that
    only feed the maps; here one compiled pass per pixel range goes from each pixel's sums
    to its maps with the moments in registers, so a live publish allocates (and, on a VM,
    page-faults) only the maps. At 2048^2, two motors, 2 cores, warm, the maps after the
    signal mask took 0.08 s made from 32k-pixel tiles of moments (a Python call and five
    small arrays per tile) and 0.03 s in this pass.
    """
    if offset is not None:  # once here, not once per range
        offset = np.ascontiguousarray(offset, dtype=np.float64).reshape(-1)
    table, centre, scale = moments.conversion()

    def fill(valid: np.ndarray, out: np.ndarray, start: int, stop: int) -> None:
        pixelmaps.moment_maps_of_sums(moments.sums, moments.weights, offset, table, centre, scale,
                                      valid, FWHM_PER_SIGMA, out, start, stop)

    return _named_maps(moments.intensity(offset), motor_names, shape, min_intensity_fraction, fill,
                       SNAPSHOT_PIXELS, dtype, buffers)


def default_map(motor_names: Sequence[str]) -> str:
    """The most useful plot of a scan: the centre of mass of the first (rocking) motor."""
    return f"com_{motor_names[0]}" if motor_names else "intensity"
