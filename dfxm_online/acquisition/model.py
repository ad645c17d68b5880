"""A known per-pixel DFXM model: the ground truth behind the simulator.

Each pixel inside the illuminated crystal diffracts with a Gaussian in every scanned motor,
centred on the local orientation (sub-grains with sharp boundaries, plus a smooth lattice
bending) and with a spatially varying width. A detector frame is that expected intensity
plus a photon background, with Poisson noise, plus the detector's dark offset and read
noise. Tests compare the daemon's maps with `centre` and `sigma` below.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..gaussian import FWHM_PER_SIGMA
from .geometry import MotorAxis


@dataclass
class CrystalModel:
    """Per-pixel truth and the noise model of the simulated detector."""

    motors: tuple[MotorAxis, ...]
    amplitude: np.ndarray  # (H, W) peak counts; 0 outside the crystal
    centre: np.ndarray  # (M, H, W) peak position per motor, motor units
    sigma: np.ndarray  # (M, H, W) Gaussian sigma per motor, motor units
    #: photon background per pixel per frame (Poisson): a number, or an (H, W) image (a
    #: diffuse pedestal that varies across the detector); the dark scan does not hold it
    background: float | np.ndarray = 0.0
    dark_offset: float = 100.0  # detector offset in ADU, present in dark frames too
    read_noise: float = 2.0  # Gaussian read noise in ADU

    @property
    def shape(self) -> tuple[int, int]:
        return self.amplitude.shape  # type: ignore[return-value]

    @property
    def fwhm(self) -> np.ndarray:
        return FWHM_PER_SIGMA * self.sigma

    @classmethod
    def make(
        cls,
        shape: tuple[int, int],
        motors: Sequence[MotorAxis],
        seed: int = 0,
        n_grains: int = 6,
        peak_counts: float = 1000.0,
        background: float = 0.0,
        dark_offset: float = 100.0,
        read_noise: float = 2.0,
    ) -> CrystalModel:
        """A crystal with `n_grains` sub-grains filling an ellipse in the field of view.

        Peaks stay within the inner 40 % of each motor's half range and sigmas within 8-13 %
        of it, so the scanned range covers every rocking curve beyond 3.5 sigma: the moments
        of the recorded curves are then those of the Gaussians.
        """
        rng = np.random.default_rng(seed)
        h, w = shape
        yy, xx = np.mgrid[0:h, 0:w].astype(float)
        ny, nx = (yy - (h - 1) / 2) / (h / 2), (xx - (w - 1) / 2) / (w / 2)
        inside = (ny / 0.85) ** 2 + (nx / 0.8) ** 2 <= 1.0
        seeds = rng.uniform(-0.8, 0.8, size=(n_grains, 2))
        dist = (ny[None] - seeds[:, 0, None, None]) ** 2 + (nx[None] - seeds[:, 1, None, None]) ** 2
        grain = np.argmin(dist, axis=0)
        nearest = np.sort(dist, axis=0)
        # sub-grain boundaries diffract less: a dip where the two closest seeds are equidistant
        boundary = np.clip((np.sqrt(nearest[1]) - np.sqrt(nearest[0])) / 0.05, 0.0, 1.0)
        amplitude = peak_counts * (0.6 + 0.4 * np.cos(1.3 * nx) * np.cos(1.1 * ny))
        amplitude *= 0.5 + 0.5 * boundary
        amplitude[~inside] = 0.0
        centres, sigmas = [], []
        for i, axis in enumerate(motors):
            half = 0.5 * (axis.high - axis.low) or 1.0
            offsets = rng.uniform(-0.25, 0.25, size=n_grains)
            tilt = rng.uniform(-0.1, 0.1, size=2)
            centres.append(axis.centre + half * (offsets[grain] + tilt[0] * nx + tilt[1] * ny))
            phase = rng.uniform(0, 2 * np.pi)
            sigmas.append(half * (0.105 + 0.025 * np.sin(2.0 * nx + 1.5 * ny + phase + i)))
        return cls(
            motors=tuple(motors),
            amplitude=amplitude,
            centre=np.stack(centres),
            sigma=np.stack(sigmas),
            background=background,
            dark_offset=dark_offset,
            read_noise=read_noise,
        )

    @classmethod
    def random_spread(
        cls,
        shape: tuple[int, int],
        motors: Sequence[MotorAxis],
        seed: int = 0,
        amplitude: tuple[float, float] = (200.0, 300.0),
        spread: Sequence[float] = (0.1, 0.2, 0.1),
        sigma: Sequence[tuple[float, float]] = ((0.06, 0.08), (0.14, 0.16), (0.06, 0.08)),
        background: float | np.ndarray = 0.0,
        dark_offset: float = 100.0,
        read_noise: float = 2.0,
    ) -> CrystalModel:
        """A crystal over the upper half of the detector whose every pixel has its own
        rocking curve: amplitude uniform in `amplitude`, centre uniform within +-`spread`
        of each motor's centre, sigma uniform in `sigma` (motor units). The case of the
        "right by default" issue: weak peaks (a few thousand counts in all) on a diffuse
        pedestal, where every count of background bias shows in the moments."""
        rng = np.random.default_rng(seed)
        h, w = shape
        amp = rng.uniform(*amplitude, size=shape)
        amp[h // 2 :] = 0.0
        centres = np.stack([a.centre + rng.uniform(-spread[i], spread[i], size=shape) for i, a in enumerate(motors)])
        sigmas = np.stack([rng.uniform(*sigma[i], size=shape) for i in range(len(motors))])
        return cls(tuple(motors), amp, centres, sigmas, background, dark_offset, read_noise)

    def expected_photons(self, position: Sequence[float], flux: float = 1.0) -> np.ndarray:
        """Mean photon count per pixel at one point of the scan (no offset, no noise);
        `flux` scales the beam (monitor / reference monitor)."""
        pos = np.asarray(position, dtype=float).reshape(-1, 1, 1)
        z = ((pos - self.centre) / self.sigma) ** 2
        return flux * (self.background + self.amplitude * np.exp(-0.5 * z.sum(axis=0)))

    def frame(self, position: Sequence[float], rng: np.random.Generator, flux: float = 1.0) -> np.ndarray:
        """One noisy uint16 detector frame at `position` (one value per motor)."""
        photons = rng.poisson(self.expected_photons(position, flux)).astype(np.float64)
        return self._digitise(photons, rng)

    def dark_frame(self, rng: np.random.Generator) -> np.ndarray:
        """One frame with the beam off: offset and read noise only."""
        return self._digitise(np.zeros(self.shape), rng)

    def _digitise(self, photons: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        adu = photons + self.dark_offset
        if self.read_noise > 0:
            adu += rng.normal(0.0, self.read_noise, size=adu.shape)
        return np.clip(np.rint(adu), 0, np.iinfo(np.uint16).max).astype(np.uint16)


def scan_positions(motors: Sequence[MotorAxis], zigzag: bool = False) -> np.ndarray:
    """Positions (npoints, M) of a BLISS scan over `motors`; the first motor is the fastest.

    With `zigzag`, the fast motor reverses direction on every other line, as BLISS's zigzag
    meshes do.
    """
    grids = [np.linspace(m.start, m.stop, m.npoints) for m in motors]
    fast = grids[0]
    # slow motors in the outer loops, the slowest outermost (product's first factor)
    lines = list(itertools.product(*grids[:0:-1])) if len(grids) > 1 else [()]
    rows = []
    for k, slow in enumerate(lines):
        f = fast[::-1] if zigzag and k % 2 else fast
        rows.append(np.column_stack([f, *[np.full(f.size, v) for v in slow[::-1]]]))
    return np.concatenate(rows)
