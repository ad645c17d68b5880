"""Orientation distribution: the scan's integrated intensity per motor position, and its
iso-contours. Pure, no I/O.

darfix's "orientation distribution function" is the sum over all pixels of each frame (its
`xysum`), reshaped onto the motor grid. Here the frames' integrated intensities are
histogrammed on the scan's nominal grid (bins centred on the nominal points, edges halfway
between them), so continuous scans, zigzag meshes, repeated or missing points need nothing
special; each bin also reports how many frames fell in it. The 1-D distribution along one
motor can come from the `SumsAlongMotor` accumulator's images (one summed image per value)
without the frames.

Iso-contours: scikit-image's marching squares (`skimage.measure.find_contours`) on the
distribution after darfix's minimal smoothing (Gaussian, σ = 0.5 bin, radius 2), at levels
given as fractions of the maximum (default 0.1, 0.25, 0.5, 0.75, 0.9). darfix places its
levels evenly between the minimum and the maximum and truncates each to an integer (a
distribution in counts/frame below 1 then has all its contours at 0); fractions of the peak
are what is read off a pole figure. Contours of fewer than 5 points are dropped, as in darfix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter
from skimage.measure import find_contours

from ..acquisition.geometry import MotorAxis

DEFAULT_LEVELS = (0.1, 0.25, 0.5, 0.75, 0.9)
MIN_CONTOUR_POINTS = 5


def frame_totals(frames: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(B,) integrated intensity of each frame (B, H, W), optionally within a (H, W) mask."""
    frames = np.asarray(frames)
    flat = frames.reshape(frames.shape[0], -1)
    if mask is None:
        return flat.sum(axis=1, dtype=np.float64)
    return flat[:, np.asarray(mask, dtype=bool).reshape(-1)].sum(axis=1, dtype=np.float64)


def grid_centres(axis: MotorAxis) -> np.ndarray:
    """The axis's nominal points, increasing."""
    n = max(int(axis.npoints), 1)
    if n == 1 or axis.high == axis.low:
        return np.array([0.5 * (axis.low + axis.high)])
    return np.linspace(axis.low, axis.high, n)


def grid_edges(axis: MotorAxis) -> np.ndarray:
    """(npoints + 1,) increasing bin edges centred on the axis's nominal points."""
    centres = grid_centres(axis)
    if centres.size == 1:
        half = 0.5 * (abs(axis.scale) if axis.scale else 1.0)
        return np.array([axis.low - half, axis.high + half])
    step = centres[1] - centres[0]
    return np.concatenate([centres - step / 2, [centres[-1] + step / 2]])


@dataclass(frozen=True)
class Distribution:
    """`intensity` (n_1, ..., n_m) summed integrated intensity per grid bin (axis i is
    motor i); `frames` the number of frames per bin; `axes` the bin centres per motor."""

    intensity: np.ndarray
    frames: np.ndarray
    axes: dict[str, np.ndarray]


def orientation_distribution(
    totals: np.ndarray, positions: Mapping[str, np.ndarray], axes: Sequence[MotorAxis]
) -> Distribution:
    """Histogram of the frames' integrated intensities `totals` (B,) at their recorded
    `positions` ({motor: (B,)}) on the nominal grid of `axes`; frames outside the grid's
    outer edges are not counted."""
    totals = np.asarray(totals, dtype=np.float64).reshape(-1)
    coords = np.column_stack([np.asarray(positions[a.name], np.float64).reshape(-1) for a in axes])
    if coords.shape[0] != totals.size:
        raise ValueError(f"{coords.shape[0]} positions for {totals.size} frame totals")
    edges = [grid_edges(a) for a in axes]
    intensity, _ = np.histogramdd(coords, bins=edges, weights=totals)
    frames, _ = np.histogramdd(coords, bins=edges)
    centres = {a.name: grid_centres(a) for a in axes}
    return Distribution(intensity=intensity, frames=frames.astype(np.int64), axes=centres)


def distribution_along(values: np.ndarray, images: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Integrated intensity per value of one motor from `SumsAlongMotor`'s (values (V,),
    images (V, P)) snapshot: the 1-D distribution along that motor, without the frames."""
    images = np.asarray(images, dtype=np.float64).reshape(len(values), -1)
    if mask is not None:
        images = images[:, np.asarray(mask, dtype=bool).reshape(-1)]
    return images.sum(axis=1)


def iso_contours(
    distribution: np.ndarray,
    axis_a: np.ndarray,
    axis_b: np.ndarray,
    levels: Sequence[float] = DEFAULT_LEVELS,
    smoothing: float = 0.5,
) -> np.ndarray:
    """Iso-contours of a 2-D distribution (rows <-> axis_a, columns <-> axis_b, both
    evenly spaced) as one (N, 3) array of (level fraction, a, b) points, polygons separated
    by a row of NaN (a plottable, storable layout)."""
    dist = np.nan_to_num(np.asarray(distribution, dtype=np.float64))
    if dist.ndim != 2:
        raise ValueError("iso-contours need a 2-D distribution")
    if smoothing > 0:
        dist = gaussian_filter(dist, smoothing, radius=2)
    peak = dist.max()
    rows: list[np.ndarray] = []
    if not peak > 0:
        return np.zeros((0, 3))

    def to_motor(index: np.ndarray, axis: np.ndarray) -> np.ndarray:
        if axis.size == 1:
            return np.full(index.shape, float(axis[0]))
        return axis[0] + index * (axis[-1] - axis[0]) / (axis.size - 1)

    for fraction in levels:
        for contour in find_contours(dist, fraction * peak):
            if len(contour) < MIN_CONTOUR_POINTS:
                continue
            block = np.column_stack([
                np.full(len(contour), fraction),
                to_motor(contour[:, 0], np.asarray(axis_a, np.float64)),
                to_motor(contour[:, 1], np.asarray(axis_b, np.float64)),
            ])
            rows += [block, np.full((1, 3), np.nan)]
    return np.concatenate(rows[:-1]) if rows else np.zeros((0, 3))
