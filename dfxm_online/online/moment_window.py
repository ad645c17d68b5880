"""Final moments within a window around each pixel's peak: the noise floor of the tails.

Why: after the baseline is subtracted, the tails of a rocking curve hold nothing but the
Poisson noise of the diffuse pedestal, and the moments weight that noise by the lever arm
(x - COM)^k of the whole scanned range. On a 21 x 21 mosaicity mesh with a 5-count pedestal
(docs/science.md) the one-pass moments scatter by 0.004 deg (COM, mu) where the signal's own
Poisson limit is 0.001 deg: three quarters of the error is noise from points that hold no
peak. Thresholding each frame at k standard deviations of the baseline noise keeps positive
noise spikes far out in the tails (they dominate the COM error: 0.0013 deg at k = 4) and
biases the widths; a window in motor space does not.

The rule (measured on that case, see tests/test_background_rule.py and bench/): a pixel's
frames count only where the point lies within `rho` standard deviations (Mahalanobis distance
with the pixel's covariance) of the pixel's centre of mass; the window comes from the
one-pass moments and is re-centred from the windowed ones `passes` times. A Gaussian cut at
radius rho in d dimensions keeps the fraction c2 = P(chi2_{d+2} < rho^2) / P(chi2_d < rho^2) of
its variance and c4 = P(chi2_{d+4} < rho^2) / P(chi2_d < rho^2) of its fourth moment; the
windowed variance, covariance and kurtosis are divided by those factors, so that a Gaussian
curve gives its own sigma, correlation and zero excess kurtosis back (COM and skewness need no
correction: the cut is symmetric about the window's centre). For curves that are not
Gaussian the factors are the same, which is what makes the maps comparable between pixels;
a curve with a wide shoulder beyond rho sigma loses it (use a larger `moment_window`).

The window is a per-frame, per-pixel step between preprocessing and the moment sums, so it
needs the frames a second time (`ScanPipeline.windowed_maps`): offline `process` reads the
file again, the daemon re-reads the scan at its end. Live maps are the one-pass moments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numba
import numpy as np
from scipy.special import gammainc

from ..acquisition.geometry import MotorAxis
from ..gaussian import FWHM_PER_SIGMA
from .tiles import TILE_PIXELS, for_each_tile


def truncation_factors(rho: float, dims: int) -> tuple[float, float]:
    """(c2, c4): the fractions of a `dims`-dimensional Gaussian's second and fourth moment
    that a cut at Mahalanobis radius `rho` keeps (c2 = E[r^2 | r < rho] / d,
    c4 = E[r^4 | r < rho] / (d (d + 2)), r^2 ~ chi2_d)."""
    x = 0.5 * rho * rho
    base = gammainc(0.5 * dims, x)
    return float(gammainc(0.5 * dims + 1, x) / base), float(gammainc(0.5 * dims + 2, x) / base)


#: largest correlation a window takes from the (noisy) moments it is made of
MAX_CORRELATION = 0.9


#: pixels per block of the window step: a block's coefficients (K x BLOCK float64, 48 KiB
#: for two motors) stay in cache while every frame of the batch is windowed
BLOCK = 1024


@numba.njit(nogil=True, cache=True)
def _window_kernel(frames, offset, mono, coef, rho2, out, start, stop):  # pragma: no cover - compiled
    """out[b, p] = frames[b, p] - offset[p] where q_p(point b) <= rho2, else 0, for pixels
    start <= p < stop; q_p(point b) = sum_k mono[b, k] coef[k, p] (the last coefficient
    row is the constant term)."""
    n_frames = frames.shape[0]
    n_terms = coef.shape[0] - 1
    q = np.empty(BLOCK)
    for p0 in range(start, stop, BLOCK):
        n = min(BLOCK, stop - p0)
        for b in range(n_frames):
            for i in range(n):
                q[i] = coef[n_terms, p0 + i]
            for k in range(n_terms):
                f = mono[b, k]
                for i in range(n):
                    q[i] += coef[k, p0 + i] * f
            for i in range(n):
                p = p0 + i
                out[b, p] = (frames[b, p] - offset[p]) if q[i] <= rho2 else 0.0


@dataclass
class MomentWindow:
    """Per-pixel ellipsoids in motor space, as the coefficients of each pixel's quadratic
    form q(v) = (v - c)^T A (v - c) in the reduced coordinates v = (x - centre) / step of
    `axes` (PowerSums' coordinates), expanded over the monomials v_i v_j (i <= j), v_i and 1:
    `coefficients` (K, P). Expanded, a batch's q for every pixel is K multiply-adds per
    pixel and frame over a cached block of coefficients, instead of reading the pixel's
    centre and inverse covariance again for every frame (2048^2 x 32 frames: 4.9 s read
    per frame, measured; see bench/accuracy.py for the current figure). `valid` (P,) False
    where a pixel has no window (its constant term is +inf: every frame counts as 0)."""

    axes: tuple[MotorAxis, ...]
    coefficients: np.ndarray
    valid: np.ndarray
    rho: float

    @classmethod
    def from_maps(cls, maps: Mapping[str, np.ndarray], axes: Sequence[MotorAxis], rho: float) -> MomentWindow:
        """The window of moment maps (`com_<m>`, `fwhm_<m>`, `cov_<a>_<b>`) over `axes`.

        Each motor's variance is taken as at least its step squared, so that a window
        always spans +-rho steps: a curve narrower than a step (undersampled, or its sigma
        estimate low by noise) would otherwise get a window of one point and no variance.
        The truncation factors then overcorrect its sigma by at most 1/sqrt(c2) (2.6 % at
        rho = 3 over two motors), where its moments say little anyway. A pixel whose
        variance is no number (the tails' noise made it negative: a weak peak on a high
        pedestal) gets a window as wide as the scanned range along that motor, so that
        the next pass measures it again."""
        if rho <= 0:
            raise ValueError("the window radius must be > 0 standard deviations")
        axes = tuple(axes)
        m = len(axes)
        scale = np.array([a.scale for a in axes])
        centre = np.stack([(np.asarray(maps[f"com_{a.name}"], np.float64).reshape(-1) - a.centre) / a.scale
                           for a in axes])
        cov = np.empty((m, m, centre.shape[1]))
        for i, axis in enumerate(axes):
            sigma = np.asarray(maps[f"fwhm_{axis.name}"], np.float64).reshape(-1) / FWHM_PER_SIGMA
            sigma = np.where(np.isnan(sigma), abs(axis.high - axis.low), np.fmax(sigma, abs(axis.scale)))
            cov[i, i] = (sigma / scale[i]) ** 2
        for i in range(m):
            for j in range(i + 1, m):
                # the tails' noise can make a weak peak's correlation exceed 1: at most
                # MAX_CORRELATION for the window
                bound = MAX_CORRELATION * np.sqrt(cov[i, i] * cov[j, j])
                value = np.asarray(maps[f"cov_{axes[i].name}_{axes[j].name}"], np.float64).reshape(-1)
                cov[i, j] = cov[j, i] = np.clip(value / (scale[i] * scale[j]), -bound, bound)
        valid = np.isfinite(centre).all(axis=0) & np.isfinite(cov).all(axis=(0, 1))
        stacked = np.where(valid, cov, 0.0).transpose(2, 0, 1)  # (P, M, M)
        # three motors: correlations each below 1 can still make a matrix that is not
        # positive definite (every leading minor > 0, Sylvester); those windows lose theirs
        definite = np.ones(valid.shape, dtype=bool)
        for k in range(3, m + 1):
            definite &= np.linalg.det(stacked[:, :k, :k]) > 0
        stacked = np.where(definite[:, None, None], stacked, stacked * np.eye(m))
        inv = np.linalg.inv(np.where(valid[:, None, None], stacked, np.eye(m))).transpose(1, 2, 0)
        c = np.where(valid, centre, 0.0)
        g = np.einsum("ijp,jp->ip", inv, c)
        rows = [inv[i, i] if i == j else 2.0 * inv[i, j] for i in range(m) for j in range(i, m)]
        rows += [-2.0 * g[i] for i in range(m)]
        rows.append(np.where(valid, np.einsum("ip,ip->p", c, g), np.inf))
        return cls(axes, np.ascontiguousarray(np.stack(rows)), valid, float(rho))

    @property
    def n_pixels(self) -> int:
        return self.valid.shape[0]

    def without(self, pixels: np.ndarray) -> None:
        """No window (every frame counts as 0) for the pixels where `pixels` (P,) is True."""
        self.valid &= ~pixels
        self.coefficients[:-1, pixels] = 0.0
        self.coefficients[-1, pixels] = np.inf

    def monomials(self, positions: Mapping[str, np.ndarray]) -> np.ndarray:
        """(B, K-1) the monomials v_i v_j (i <= j) and v_i of each point, in `coefficients`' order."""
        v = np.stack([(np.asarray(positions[a.name], np.float64) - a.centre) / a.scale for a in self.axes], axis=1)
        m = len(self.axes)
        cols = [v[:, i] * v[:, j] for i in range(m) for j in range(i, m)] + [v[:, i] for i in range(m)]
        return np.ascontiguousarray(np.stack(cols, axis=1))

    def apply(self, frames: np.ndarray, positions: Mapping[str, np.ndarray],
              offset: np.ndarray | None) -> np.ndarray:
        """(B, P) float32: `frames` (B, ...) minus `offset` (P,) where each point lies inside
        the pixel's window, 0 elsewhere (one compiled pass on the tile threads; frames of
        any numeric type are read as they are)."""
        frames = np.ascontiguousarray(frames).reshape(len(frames), -1)
        if frames.shape[1] != self.n_pixels:
            raise ValueError(f"frames have {frames.shape[1]} pixels, the window {self.n_pixels}")
        off = np.zeros(self.n_pixels) if offset is None else np.ascontiguousarray(offset, np.float64).reshape(-1)
        out = np.empty(frames.shape, dtype=np.float32)
        mono = self.monomials(positions)
        rho2 = self.rho * self.rho
        for_each_tile(self.n_pixels, lambda a, b: _window_kernel(
            frames, off, mono, self.coefficients, rho2, out, a, b), tile=TILE_PIXELS)
        return out


def correct_truncation(maps: dict[str, np.ndarray], motors: Sequence[str], rho: float) -> None:
    """Undo a Gaussian's loss to the window (see the module docstring), in place: FWHM by
    1/sqrt(c2), covariances by 1/c2, excess kurtosis to (k + 3) c2^2 / c4 - 3."""
    c2, c4 = truncation_factors(rho, len(motors))
    for a, name in enumerate(motors):
        maps[f"fwhm_{name}"] = maps[f"fwhm_{name}"] / np.sqrt(c2)
        maps[f"kurtosis_{name}"] = (maps[f"kurtosis_{name}"] + 3.0) * (c2 * c2 / c4) - 3.0
        for other in motors[a + 1:]:
            maps[f"cov_{name}_{other}"] = maps[f"cov_{name}_{other}"] / c2
