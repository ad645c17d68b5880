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
file once more by bands of rows (online/window_bands.py), the daemon re-reads the scan at its
end. Live maps are the one-pass moments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numba
import numpy as np
from scipy.special import gammainc

from ..acquisition.geometry import MotorAxis
from ..gaussian import FWHM_PER_SIGMA
from . import kernels
from .framesums import MAX_PASS_FRAMES, PASS_PIXELS, frames_for_pass, numba_dense_rows
from .kernels import frame_pass as numba_pass
from .kernels.frame_pass import BOX_PIXELS
from .tiles import TILE_PIXELS, for_each_tile

if TYPE_CHECKING:
    from .accumulators.moments import PowerSums


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

#: bytes of windowed float32 frames made at once where the window's step and the moment sums
#: are two passes (`MomentWindow.add_to` on the numpy floor)
WINDOW_CHUNK_BYTES = 64 << 20


@numba.njit(nogil=True, cache=True)
def _window_kernel(frames, offset, mono, coef, rho2, out, start, stop):  # pragma: no cover - compiled
    """out[b, p] = frames[b, p] - offset[p] where q_p(point b) <= rho2, else 0, for pixels
    start <= p < stop (`kernels.frame_pass.window_values`, in blocks of BLOCK pixels)."""
    every = np.arange(frames.shape[0])
    for p0 in range(start, stop, BLOCK):
        numba_pass.window_values(frames, offset, mono, coef, rho2, p0, min(BLOCK, stop - p0), out, p0,
                                 every, frames.shape[0])


@dataclass
class MomentWindow:
    """Per-pixel ellipsoids in motor space, as the coefficients of each pixel's quadratic
    form q(v) = (v - c)^T A (v - c) in the reduced coordinates v = (x - centre) / step of
    `axes` (PowerSums' coordinates), expanded over the monomials v_i v_j (i <= j), v_i and 1:
    `coefficients` (K, P). Expanded, a batch's q for every pixel is K multiply-adds per
    pixel and frame over a cached block of coefficients, instead of reading the pixel's
    centre and inverse covariance again for every frame (2048^2 x 32 frames: 4.9 s read
    per frame, measured; see bench/accuracy.py for the current figure). `valid` (P,) False
    where a pixel has no window (its constant term is +inf: every frame counts as 0).

    `boxes` (C, 2, M): for each chunk of BOX_PIXELS pixels (the tiles of `from_maps` and of
    the windowed pass are multiples of it: each chunk is one thread's), the lowest and highest reduced
    coordinates along each motor of its pixels' windows (a little wider: rounding), the
    low above the high where no pixel of the chunk has a window. A point outside a chunk's
    box is outside every window of its pixels: the windowed pass skips that frame there."""

    axes: tuple[MotorAxis, ...]
    coefficients: np.ndarray
    valid: np.ndarray
    rho: float
    boxes: np.ndarray

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

        def flat(names: list[str]) -> tuple[np.ndarray, ...]:
            """The maps as flat float64 rows, not copied where they are (a tuple, not a
            stack: copying five 2048^2 maps took 0.25 s of each window)."""
            return tuple(np.ascontiguousarray(maps[name], np.float64).reshape(-1) for name in names)

        com = flat([f"com_{a.name}" for a in axes])
        fwhm = flat([f"fwhm_{a.name}" for a in axes])
        # one motor: no pair, a row that is never read (a tuple of one type for the kernel)
        cov = flat([f"cov_{axes[i].name}_{axes[j].name}" for i in range(m) for j in range(i + 1, m)]) or (com[0],)
        n = com[0].shape[0]
        coefficients = np.empty((m * (m + 1) // 2 + m + 1, n))
        valid = np.empty(n, dtype=np.bool_)
        boxes = np.empty(((n + BOX_PIXELS - 1) // BOX_PIXELS, 2, m))
        boxes[:, 0], boxes[:, 1] = np.inf, -np.inf
        centre, scale = np.array([a.centre for a in axes], np.float64), np.array([a.scale for a in axes], np.float64)
        span = np.array([abs(a.high - a.low) for a in axes], np.float64)
        for_each_tile(n, lambda a, b: _window_coefficients(
            com, fwhm, cov, centre, scale, span, float(rho), coefficients, valid, boxes, BOX_PIXELS, a, b),
            tile=TILE_PIXELS // BOX_PIXELS * BOX_PIXELS)
        return cls(axes, coefficients, valid, float(rho), boxes)

    @property
    def n_pixels(self) -> int:
        return self.valid.shape[0]

    def without(self, pixels: np.ndarray) -> None:
        """No window (every frame counts as 0) for the pixels where `pixels` (P,) is True.
        The boxes stay as they are: still around every window left."""
        hit = self.valid & pixels
        if not hit.any():  # the usual case: pixels masked for want of a centre have no window
            return
        self.valid &= ~pixels
        self.coefficients[:-1, hit] = 0.0
        self.coefficients[-1, hit] = np.inf

    def monomials(self, positions: Mapping[str, np.ndarray]) -> np.ndarray:
        """(B, K-1) the monomials v_i v_j (i <= j) and v_i of each point, in `coefficients`'
        order (the last M columns: the points' reduced coordinates, as `boxes` has them)."""
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

    def add_to(self, sums: PowerSums, frames: np.ndarray, positions: Mapping[str, np.ndarray],
               offset: np.ndarray | None) -> None:
        """``sums.update(self.apply(frames, positions, offset), positions)``, in one pass:
        each sub-tile's windowed values go straight into the frame pass's packed sub-tile,
        which its dense register blocks read (`kernels.frame_pass.windowed_pass`), where the
        step and the sums were two passes over a float32 copy made a few frames at a time.

        Why: the two passes ran at 38 frames/s on a 2048^2 two-motor mesh (window step 4.3 s
        and sums 2.0 s per 240 frames, the sums over 4-frame chunks), `process` spending 2 of
        its 3 passes over the frames there (bench/RESULTS.md, session 7). The values are
        float64 here (the two passes rounded them to float32 first). On the numpy floor
        (`DFXM_KERNELS=numpy`) it is the two passes, a chunk at a time."""
        frames = np.asarray(frames).reshape(len(frames), -1)
        if frames.shape[1] != self.n_pixels or sums.n_pixels != self.n_pixels:
            raise ValueError(f"frames have {frames.shape[1]} pixels, the sums {sums.n_pixels}, "
                             f"the window {self.n_pixels}")
        if kernels.frame_pass_backend() != "numba":
            step = max(1, WINDOW_CHUNK_BYTES // max(1, 4 * self.n_pixels))
            for start in range(0, len(frames), step):
                part = {k: np.asarray(v)[start:start + step] for k, v in positions.items()}
                sums.update(self.apply(frames[start:start + step], part, offset), part)
            return
        for lo in range(0, len(frames), MAX_PASS_FRAMES):
            part = {k: np.asarray(v)[lo:lo + MAX_PASS_FRAMES] for k, v in positions.items()}
            self._windowed_pass(sums, frames[lo:lo + MAX_PASS_FRAMES], part, offset)

    def _windowed_pass(self, sums: PowerSums, frames: np.ndarray, positions: Mapping[str, np.ndarray],
                       offset: np.ndarray | None) -> None:
        """One compiled windowed pass of at most MAX_PASS_FRAMES frames (`add_to`)."""
        plan = sums.sums_plan(positions, len(frames))
        flat = frames_for_pass(frames, self.n_pixels)
        off = np.zeros(self.n_pixels) if offset is None else np.ascontiguousarray(offset, np.float64).reshape(-1)
        weights, addresses = numba_dense_rows(plan.weights, plan.sums, plan.single)
        rows = np.array(addresses, dtype=np.uint64)
        mono = self.monomials(positions)
        points = np.ascontiguousarray(mono[:, mono.shape[1] - len(self.axes):])
        rho2 = self.rho * self.rho
        sub = numba_pass.sub_pixels(len(flat))

        def work(a: int, b: int) -> None:
            numba_pass.windowed_pass(flat, a, b, off, mono, self.coefficients, rho2, weights, rows,
                                     np.empty((len(flat), sub)), points, self.boxes, BOX_PIXELS,
                                     np.empty(len(flat), np.int64), np.empty_like(weights),
                                     np.empty((2, len(flat)), np.bool_))

        for_each_tile(self.n_pixels, work, tile=PASS_PIXELS // BOX_PIXELS * BOX_PIXELS)
        if plan.after is not None:
            plan.after()


@numba.njit(nogil=True, cache=True)
def _window_coefficients(com, fwhm, cov_maps, centre, scale, span, rho, out, valid, boxes, box_pixels, start, stop):  # pragma: no cover
    """`MomentWindow.from_maps`, pixel by pixel: each pixel's centre and covariance in reduced
    coordinates (variances at least a step squared, or the scanned range where no number;
    correlations within MAX_CORRELATION), the identity and no window where any is not
    finite, a three-motor matrix that is not positive definite without its correlations;
    then its inverse A (closed forms) and the rows of q(v) = (v - c)^T A (v - c) into
    `out` (K, P): A_ii / 2 A_ij (i < j), -2 (A c)_i, c^T A c (+inf without a window).
    Why compiled: the same in numpy on (M, M, P) arrays took 2.3-2.7 s per window at
    2048^2 (np.linalg.inv over (P, 2, 2), its transposes and temporaries; bench/RESULTS.md,
    session 7). `com`, `fwhm`: M maps (P,), `cov_maps`: the M (M - 1) / 2 maps of the pairs
    (0, 1), (0, 2), (1, 2) in that order (tuples of float64 rows); pixels start..stop.
    Each window also widens its chunk's box (`MomentWindow.boxes`, chunks of `box_pixels`):
    c_i +- rho sqrt(cov_ii) is the ellipsoid's extent along motor i, widened by 1e-6 of
    itself and of |c_i| so that no point whose expanded q rounds to inside is left out
    (q's rounding is ~1e-16 of its terms)."""
    m = len(com)
    c = np.zeros(3)
    g = np.zeros(3)
    cv = np.zeros((3, 3))
    inv = np.zeros((3, 3))
    for p in range(start, stop):
        ok = True
        for i in range(m):
            c[i] = (com[i][p] - centre[i]) / scale[i]
            sigma = fwhm[i][p] / FWHM_PER_SIGMA
            sigma = span[i] if np.isnan(sigma) else max(sigma, abs(scale[i]))
            v = sigma / scale[i]
            cv[i, i] = v * v
            ok = ok and np.isfinite(c[i]) and np.isfinite(cv[i, i])
        k = 0
        for i in range(m):
            for j in range(i + 1, m):
                # the tails' noise can make a weak peak's correlation exceed 1: at most
                # MAX_CORRELATION for the window
                bound = MAX_CORRELATION * np.sqrt(cv[i, i] * cv[j, j])
                value = cov_maps[k][p] / (scale[i] * scale[j])
                k += 1
                if not np.isnan(value):
                    value = min(max(value, -bound), bound)
                cv[i, j] = value
                cv[j, i] = value
                ok = ok and np.isfinite(value)
        if not ok:  # no window: the identity, centred at 0 (its constant term is +inf below)
            for i in range(m):
                c[i] = 0.0
                for j in range(m):
                    cv[i, j] = 1.0 if i == j else 0.0
        if m == 3:
            det = (cv[0, 0] * (cv[1, 1] * cv[2, 2] - cv[1, 2] * cv[2, 1])
                   - cv[0, 1] * (cv[1, 0] * cv[2, 2] - cv[1, 2] * cv[2, 0])
                   + cv[0, 2] * (cv[1, 0] * cv[2, 1] - cv[1, 1] * cv[2, 0]))
            if not det > 0:
                # correlations each below 1 can still make a matrix that is not positive
                # definite (Sylvester: the 1 x 1 and 2 x 2 minors are by the bounds above);
                # those windows lose their correlations
                for i in range(3):
                    for j in range(3):
                        if i != j:
                            cv[i, j] = 0.0
        _invert(cv, inv, m)
        for i in range(m):
            g[i] = 0.0
            for j in range(m):
                g[i] += inv[i, j] * c[j]
        r = 0
        for i in range(m):
            for j in range(i, m):
                out[r, p] = inv[i, i] if i == j else 2.0 * inv[i, j]
                r += 1
        constant = 0.0
        for i in range(m):
            out[r, p] = -2.0 * g[i]
            r += 1
            constant += c[i] * g[i]
        out[r, p] = constant if ok else np.inf
        valid[p] = ok
        if ok:
            box = boxes[p // box_pixels]
            for i in range(m):
                half = rho * np.sqrt(cv[i, i])
                half += 1e-6 * (half + abs(c[i]))
                box[0, i] = min(box[0, i], c[i] - half)
                box[1, i] = max(box[1, i], c[i] + half)


@numba.njit(nogil=True, cache=True, inline="always")
def _invert(a, inv, m):  # pragma: no cover - compiled
    """inv = a^-1 of a symmetric m x m matrix (m <= 3), by its adjugate."""
    if m == 1:
        inv[0, 0] = 1.0 / a[0, 0]
    elif m == 2:
        det = a[0, 0] * a[1, 1] - a[0, 1] * a[0, 1]
        inv[0, 0] = a[1, 1] / det
        inv[1, 1] = a[0, 0] / det
        inv[0, 1] = inv[1, 0] = -a[0, 1] / det
    else:
        c00 = a[1, 1] * a[2, 2] - a[1, 2] * a[2, 1]
        c01 = a[1, 2] * a[2, 0] - a[1, 0] * a[2, 2]
        c02 = a[1, 0] * a[2, 1] - a[1, 1] * a[2, 0]
        det = a[0, 0] * c00 + a[0, 1] * c01 + a[0, 2] * c02
        inv[0, 0] = c00 / det
        inv[1, 0] = inv[0, 1] = c01 / det
        inv[2, 0] = inv[0, 2] = c02 / det
        inv[1, 1] = (a[0, 0] * a[2, 2] - a[0, 2] * a[2, 0]) / det
        inv[2, 1] = inv[1, 2] = (a[0, 2] * a[1, 0] - a[0, 0] * a[1, 2]) / det
        inv[2, 2] = (a[0, 0] * a[1, 1] - a[0, 1] * a[1, 0]) / det


def correct_truncation(maps: dict[str, np.ndarray], motors: Sequence[str], rho: float) -> None:
    """Undo a Gaussian's loss to the window (see the module docstring), in place: FWHM by
    1/sqrt(c2), covariances by 1/c2, excess kurtosis to (k + 3) c2^2 / c4 - 3."""
    c2, c4 = truncation_factors(rho, len(motors))
    for a, name in enumerate(motors):
        maps[f"fwhm_{name}"] = maps[f"fwhm_{name}"] / np.sqrt(c2)
        maps[f"kurtosis_{name}"] = (maps[f"kurtosis_{name}"] + 3.0) * (c2 * c2 / c4) - 3.0
        for other in motors[a + 1:]:
            maps[f"cov_{name}_{other}"] = maps[f"cov_{name}_{other}"] / c2
