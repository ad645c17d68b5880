"""Reciprocal space map (RSM) histogram of a 1-D (diffry) scan without the objective, as
darfix (`_processing/rsm.py`, code by M. Carlsen). Pure, no I/O.

Each detector pixel sees the scattered wave vector of its direction (2θ, η) from the sample,
computed from the pixel size `d`, `ffz` (detector height) and `mainx` (distance), all in
one length unit (darfix: mm, with its `PixelSize` presets in mm):
y = (j - W/2) d, z = ffz - (H/2 - i) d, η = atan2(y, z), 2θ = atan2(√(y² + z²), |mainx|).
q = k_h - k_0 with k = 2π/λ, λ = 12.391 / E (Å, E in keV), is scaled to reciprocal
lattice units (`gorfman`: q a / 2π; `poulsen`: q a / (2π |Q|), relative to the nominal
reflection), rotated by the nominal Bragg angle θ_ref = asin(|Q| λ / 2a) into the sample
frame, then by each frame's diffry (relative to the mean) back to the zero-motor frame
(and, `gorfman`, into the lattice frame built from Q and the surface normal n). Every
pixel of every frame is binned into a map_shape histogram over q_mean ± map_range; each
bin holds the mean intensity of the pixels that fell in it (NaN where none).

Where we differ from darfix: we take |mainx| (darfix negates the recorded value, the same
for a negative record); the gorfman frame's x axis is n - ẑ (ẑ·n) normalised (darfix
divides the projection by |n|, which is the same only for a unit n: pass a unit n to
compare); the frames are binned in batches with one `histogramdd` per batch instead of
two per frame.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

HC_KEV_ANGSTROM = 12.391  # darfix's λ(Å) = 12.391 / E(keV)


def pixel_angles(
    shape: tuple[int, int], pixel_size: float, ffz: float, mainx: float, rotate: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(η, 2θ) in degrees per pixel, (H, W) each (darfix `compute_rsm`, with |mainx|)."""
    h, w = shape
    d = float(pixel_size)
    if rotate:
        y = (np.arange(h) - h / 2) * d
        z = ffz - (w / 2 - np.arange(w)) * d
        y, z = np.meshgrid(y, z, indexing="ij")
    else:
        y = (np.arange(w) - w / 2) * d
        z = ffz - (h / 2 - np.arange(h)) * d
        z, y = np.meshgrid(z, y, indexing="ij")
    eta = np.arctan2(y, z)
    two_theta = np.arctan2(np.sqrt(y * y + z * z), abs(mainx))
    return np.degrees(eta), np.degrees(two_theta)


@dataclass(frozen=True)
class RSM:
    """`intensity` map_shape mean intensity per bin (NaN = empty), `counts` pixels per bin,
    `edges` three bin-edge vectors (poulsen: the third shifted by -1, as darfix, so that the
    nominal reflection is at 0), `centres` the bin centres."""

    intensity: np.ndarray
    counts: np.ndarray
    edges: tuple[np.ndarray, np.ndarray, np.ndarray]

    @property
    def centres(self) -> tuple[np.ndarray, ...]:
        return tuple(0.5 * (e[1:] + e[:-1]) for e in self.edges)


def _rotation_y(angle: np.ndarray) -> np.ndarray:
    """(..., 3, 3) matrices with darfix's sign: [x cos - z sin, y, z cos + x sin]."""
    c, s = np.cos(angle), np.sin(angle)
    zero, one = np.zeros_like(c), np.ones_like(c)
    return np.stack([np.stack([c, zero, -s], -1), np.stack([zero, one, zero], -1),
                     np.stack([s, zero, c], -1)], -2)


def lattice_frame(q_hkl: Sequence[float], normal: Sequence[float]) -> np.ndarray:
    """Rows x, y, z of the gorfman frame: z ∥ Q, x ∥ the surface normal's part ⟂ Q."""
    z = np.asarray(q_hkl, dtype=np.float64)
    z = z / np.linalg.norm(z)
    n = np.asarray(normal, dtype=np.float64)
    x = n - z * np.dot(z, n)
    norm = np.linalg.norm(x)
    if norm == 0:
        raise ValueError("the surface normal is parallel to Q")
    x /= norm
    return np.stack([x, np.cross(z, x), z])


def rsm_histogram(
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    mean_diffry: float,
    two_theta: np.ndarray,
    eta: np.ndarray,
    q_hkl: Sequence[float],
    a: float,
    map_range: float,
    units: Literal["poulsen", "gorfman"] = "poulsen",
    map_shape: tuple[int, int, int] = (50, 50, 50),
    normal: Sequence[float] = (1.0, 0.0, 0.0),
    energy: float = 17.0,
) -> RSM:
    """The RSM of frames given as batches of (diffry values (B,), frames (B, H, W));
    `mean_diffry` is the mean diffry of the whole scan (the zero of the rotation);
    two_theta, eta (H, W) in degrees from :func:`pixel_angles`."""
    if units not in ("poulsen", "gorfman"):
        raise ValueError("units must be 'poulsen' or 'gorfman'")
    k = 2 * np.pi / (HC_KEV_ANGSTROM / energy)
    q_norm = float(np.linalg.norm(q_hkl))
    lab_to_lat = lattice_frame(q_hkl, normal) if units == "gorfman" else np.eye(3)
    tth, et = np.radians(two_theta).reshape(-1), np.radians(eta).reshape(-1)
    q = k * np.stack([np.cos(tth), np.sin(tth) * np.sin(et), np.sin(tth) * np.cos(et)])
    q[0] -= k
    q *= a / (2 * np.pi) / (q_norm if units == "poulsen" else 1.0)
    theta_ref = np.arcsin(2 * np.pi * q_norm / a / k / 2)
    q = _rotation_y(np.array(-theta_ref)) @ q  # darfix: [x cos + z sin, y, z cos - x sin]
    q_mean = lab_to_lat.T @ q.mean(axis=1)  # the mean diffry's rotation is the identity
    ranges = [(c - map_range, c + map_range) for c in q_mean]
    total = np.zeros(map_shape)
    counts = np.zeros(map_shape)
    edges = None
    for diffry, frames in batches:
        frames = np.asarray(frames, dtype=np.float64).reshape(len(frames), -1)
        rot = lab_to_lat.T[None] @ _rotation_y(np.radians(np.asarray(diffry, np.float64) - mean_diffry))
        points = np.einsum("bij,jp->bpi", rot, q).reshape(-1, 3)
        hist, edges = np.histogramdd(points, map_shape, ranges, weights=frames.reshape(-1))
        total += hist
        counts += np.histogramdd(points, map_shape, ranges)[0]
    if edges is None:
        raise ValueError("no frames")
    with np.errstate(invalid="ignore", divide="ignore"):
        intensity = np.where(counts > 0, total / np.where(counts > 0, counts, 1), np.nan)
    edges = [np.asarray(e) for e in edges]
    if units == "poulsen":
        edges[2] = edges[2] - 1
    return RSM(intensity=intensity, counts=counts.astype(np.int64), edges=tuple(edges))
