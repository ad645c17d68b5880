"""Accumulator snapshots -> physical maps. Pure functions, no I/O.

Map names are a contract (files, the live viewer and users rely on them): `intensity`,
`com_<motor>`, `fwhm_<motor>`, `skewness_<motor>`, `kurtosis_<motor>`, `cov_<m1>_<m2>`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .acquisition.model import FWHM_PER_SIGMA
from .online.accumulators.moments import MomentSnapshot


def signal_mask(intensity: np.ndarray, min_fraction: float) -> np.ndarray:
    """Pixels with enough integrated intensity to give meaningful moments.

    The reference level is the 99.5th percentile of the positive intensities (robust to a
    few hot pixels); pixels below `min_fraction` of it, or not positive, are masked.
    """
    positive = intensity[np.isfinite(intensity) & (intensity > 0)]
    if positive.size == 0:
        return np.zeros(intensity.shape, dtype=bool)
    level = min_fraction * np.percentile(positive, 99.5)
    with np.errstate(invalid="ignore"):
        return (intensity > 0) & (intensity >= level)


def moment_maps(
    snap: MomentSnapshot,
    motor_names: Sequence[str],
    shape: tuple[int, int],
    min_intensity_fraction: float = 0.05,
) -> dict[str, np.ndarray]:
    """Named 2-D maps from a moment snapshot; pixels without enough signal are NaN."""
    valid = signal_mask(snap.intensity, min_intensity_fraction)
    maps: dict[str, np.ndarray] = {"intensity": snap.intensity.reshape(shape)}

    def masked(values: np.ndarray, ok: np.ndarray | None = None) -> np.ndarray:
        keep = valid if ok is None else valid & ok
        return np.where(keep, values, np.nan).reshape(shape)

    with np.errstate(invalid="ignore", divide="ignore"):
        for a, name in enumerate(motor_names):
            var = snap.cov[a, a]
            positive = var > 0
            maps[f"com_{name}"] = masked(snap.mean[a])
            maps[f"fwhm_{name}"] = masked(FWHM_PER_SIGMA * np.sqrt(var), positive)
            maps[f"skewness_{name}"] = masked(snap.m3[a] / (var * np.sqrt(var)), positive)
            maps[f"kurtosis_{name}"] = masked(snap.m4[a] / (var * var) - 3.0, positive)
        for a in range(len(motor_names)):
            for b in range(a + 1, len(motor_names)):
                maps[f"cov_{motor_names[a]}_{motor_names[b]}"] = masked(snap.cov[a, b])
    return maps


def default_map(motor_names: Sequence[str]) -> str:
    """The most useful plot of a scan: the centre of mass of the first (rocking) motor."""
    return f"com_{motor_names[0]}" if motor_names else "intensity"
