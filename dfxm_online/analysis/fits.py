"""Per-pixel Gaussian fits of the rocking curves, vectorised across pixels. Pure: no I/O.

Models (darfix paper eq. 1-3): one motor `b + A exp(-(x - p)^2 / 2 s^2)`, optionally two
peaks (`max_peaks = 2`); two motors the bivariate Gaussian with correlation r; three motors
the trivariate one with its three correlations. Solved by Levenberg-Marquardt over blocks of
pixels (`gaussian_lm.fit_block`, compiled, on the tile threads), started from the online
moments, with Poisson weights and per-pixel standard errors.

What differs from darfix (docs/science.md, "Fits"): no pre-smoothing of the curves (its
Gaussian filter of 0.5 points widens every peak and lowers its amplitude), the background is
a free parameter on top of the pipeline's per-pixel background (darfix fixes it to the
curve's minimum, which sits below the true level by the noise), weights are Poisson instead
of uniform, and every parameter comes with its standard error.

Map names are a contract (`/entry/fit/<map>`): `amplitude`, `background`, `peak_<m>`,
`fwhm_<m>`, `correlation_<m1>_<m2>`, `chi2` (reduced), `converged`, `iterations`, with
`<name>_error` for each fitted quantity; with two peaks, the second peak's maps are the same
names with `_2` (`amplitude_2`, `peak_mu_2`, `peak_mu_2_error`, ...) and `peaks` counts
the peaks kept per pixel (the stronger one is peak 1).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ..acquisition.geometry import axis_from_positions
from ..gaussian import FWHM_PER_SIGMA
from ..online.tiles import for_each_tile
from . import gaussian_lm

logger = logging.getLogger(__name__)

#: pixels per call of the compiled fit (small: a pixel costs ~50 us, and each thread takes
#: the next free tile, so masked regions do not leave one thread idle)
FIT_PIXELS = 1024

#: chi^2 quantile of 3 degrees of freedom at p = 0.001: the drop of chi^2 a second peak must
#: bring (its three parameters) to be kept
TWO_PEAK_DCHI2 = 16.27


@dataclass(frozen=True)
class FitSettings:
    """How the per-pixel fits run; written as JSON to /entry/process/fit_settings."""

    #: peaks per pixel: 1, or 2 (scans of one motor; the second kept only where it lowers
    #: chi^2 by more than `two_peak_dchi2`)
    max_peaks: int = 1
    #: Levenberg-Marquardt iterations at most per pixel (and per model with two peaks)
    max_iterations: int = 100
    #: a fit has converged when its last step moved every parameter by less than this
    #: many of its (conditional) standard errors: 1 % of the noise is nothing, and near the
    #: solution Gauss-Newton steps shrink quadratically, so what remains is far less
    #: (noise-free curves still come back to 1e-6; 1e-4 cost one more iteration per pixel,
    #: ~15 % of the time on the bench mesh)
    tolerance: float = 1e-2
    #: MiB of frames held at once: the scan is read in bands of detector rows of half this
    #: size, the next band read while one is fitted
    band_mb: int = 1024
    #: chi^2 drop a second peak must bring to be kept
    two_peak_dchi2: float = TWO_PEAK_DCHI2

    def validate(self, n_motors: int | None = None) -> None:
        if self.max_peaks not in (1, 2):
            raise ValueError(f"fit max_peaks={self.max_peaks}: expected 1 or 2")
        if self.max_peaks == 2 and n_motors is not None and n_motors != 1:
            raise ValueError("fit max_peaks=2 is for scans of one motor")
        if self.max_iterations < 1:
            raise ValueError("fit max_iterations must be >= 1")
        if not self.tolerance > 0:
            raise ValueError("fit tolerance must be > 0")
        if self.band_mb < 1:
            raise ValueError("fit band_mb must be >= 1")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ReducedAxes:
    """u = (x - centre) / scale per motor: the fit's coordinates (steps from the scan
    centre, as the moment sums use), so that every parameter is O(1) to O(npoints)."""

    names: tuple[str, ...]
    centre: np.ndarray  # (M,)
    scale: np.ndarray  # (M,)

    @classmethod
    def of_positions(cls, names: Sequence[str], positions: np.ndarray) -> ReducedAxes:
        axes = [axis_from_positions(n, positions[:, i]) for i, n in enumerate(names)]
        return cls(tuple(names), np.array([a.centre for a in axes]), np.array([a.scale for a in axes]))

    def reduce(self, positions: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray((positions - self.centre) / self.scale, dtype=np.float64)


@dataclass
class FitStart:
    """Start of every pixel's fit in motor units; a NaN `peak` skips the pixel."""

    peak: np.ndarray  # (M, P)
    sigma: np.ndarray  # (M, P), NaN: a sixth of the scanned range
    correlation: np.ndarray | None = None  # (M(M-1)/2, P), NaN or None: 0

    def select(self, pixels: slice) -> FitStart:
        """The start of a range of pixels (a band of detector rows)."""
        corr = None if self.correlation is None else self.correlation[:, pixels]
        return FitStart(self.peak[:, pixels], self.sigma[:, pixels], corr)


def pair_names(motor_names: Sequence[str]) -> list[str]:
    m = len(motor_names)
    return [f"{motor_names[a]}_{motor_names[b]}" for a in range(m) for b in range(a + 1, m)]


def start_from_moments(maps: Mapping[str, np.ndarray], motor_names: Sequence[str], mask: np.ndarray) -> FitStart:
    """The fits' start from the moment maps (`com_<m>`, `fwhm_<m>`, `cov_<m1>_<m2>`): the
    pixels of `mask` (the moment maps' signal mask, `maps.signal_mask`) are fitted."""
    mask = np.asarray(mask, dtype=bool).reshape(-1)
    peak = np.stack([np.asarray(maps[f"com_{m}"], dtype=np.float64).reshape(-1) for m in motor_names])
    peak = np.where(mask, peak, np.nan)
    sigma = np.stack([np.asarray(maps[f"fwhm_{m}"], dtype=np.float64).reshape(-1) / FWHM_PER_SIGMA
                      for m in motor_names])
    corr = None
    if len(motor_names) > 1:
        rows = []
        m = len(motor_names)
        for a, b in [(i, j) for i in range(m) for j in range(i + 1, m)]:
            cov = np.asarray(maps[f"cov_{motor_names[a]}_{motor_names[b]}"], dtype=np.float64).reshape(-1)
            with np.errstate(invalid="ignore", divide="ignore"):
                rows.append(cov / (sigma[a] * sigma[b]))
        corr = np.stack(rows)
    return FitStart(peak, sigma, corr)


@dataclass
class GaussianFits:
    """Fitted parameters of every pixel, in motor units, and their quality."""

    motor_names: tuple[str, ...]
    n_peaks: int  # peaks of the model (1 or 2)
    params: np.ndarray  # (n_params, P): b, then per peak A, p (M), sigma (M), r (pairs)
    errors: np.ndarray  # (n_params, P) standard errors
    chi2: np.ndarray  # (P,) reduced chi^2
    converged: np.ndarray  # (P,) uint8
    iterations: np.ndarray  # (P,) int32
    peaks: np.ndarray | None = None  # (P,) uint8 peaks kept, with n_peaks = 2

    @classmethod
    def empty(cls, motor_names: tuple[str, ...], n_peaks: int, n_pixels: int) -> GaussianFits:
        """Fits of `n_pixels` none of which is fitted yet (NaN, 0 iterations)."""
        npar = gaussian_lm.n_params(len(motor_names), n_peaks)
        return cls(motor_names, n_peaks, np.full((npar, n_pixels), np.nan), np.full((npar, n_pixels), np.nan),
                   np.full(n_pixels, np.nan), np.zeros(n_pixels, np.uint8), np.zeros(n_pixels, np.int32),
                   np.zeros(n_pixels, np.uint8) if n_peaks == 2 else None)

    def put(self, pixels: slice, part: GaussianFits) -> None:
        """Store the fits of a range of pixels (a band of detector rows)."""
        self.params[:, pixels] = part.params
        self.errors[:, pixels] = part.errors
        self.chi2[pixels] = part.chi2
        self.converged[pixels] = part.converged
        self.iterations[pixels] = part.iterations
        if self.peaks is not None and part.peaks is not None:
            self.peaks[pixels] = part.peaks

    @property
    def fitted(self) -> np.ndarray:
        """Pixels that were fitted (in the signal mask, with enough finite points)."""
        return self.iterations > 0

    @property
    def converged_fraction(self) -> float:
        fitted = int(self.fitted.sum())
        return float(self.converged[self.fitted].sum()) / fitted if fitted else float("nan")

    def maps(self, shape: tuple[int, int]) -> dict[str, np.ndarray]:
        """The contract's named maps (see the module docstring), each of `shape`."""
        m = len(self.motor_names)
        q = gaussian_lm.n_peak_params(m)
        pairs = pair_names(self.motor_names)

        def img(values: np.ndarray) -> np.ndarray:
            return values.reshape(shape)

        out: dict[str, np.ndarray] = {}
        for k in range(self.n_peaks):
            suffix = "" if k == 0 else f"_{k + 1}"
            base = 1 + k * q
            names = [f"amplitude{suffix}"]
            names += [f"peak_{n}{suffix}" for n in self.motor_names]
            names += [f"fwhm_{n}{suffix}" for n in self.motor_names]
            names += [f"correlation_{p}{suffix}" for p in pairs]
            for j, name in enumerate(names):
                scale = FWHM_PER_SIGMA if name.startswith("fwhm_") else 1.0
                out[name] = img(self.params[base + j] * scale)
                out[f"{name}_error"] = img(self.errors[base + j] * scale)
            if k == 0:
                out["background"] = img(self.params[0])
                out["background_error"] = img(self.errors[0])
        out["chi2"] = img(self.chi2)
        out["converged"] = img(self.converged)
        out["iterations"] = img(self.iterations)
        if self.peaks is not None:
            out["peaks"] = img(self.peaks)
        return out


def _reduced_start(start: FitStart, axes: ReducedAxes, u: np.ndarray, n_peaks: int) -> np.ndarray:
    """theta0 (n_params, P) in reduced units: the start's position (clipped into the scanned
    range), width (clipped to [half a step, half the range]; a sixth of the range where the
    moments give none) and correlation (clipped to +-0.9); b = 0, A = 1 (the kernel solves
    for both at the start's shape)."""
    m = len(axes.names)
    n_pixels = start.peak.shape[1]
    theta = np.zeros((gaussian_lm.n_params(m, n_peaks), n_pixels))
    low, high = u.min(axis=0), u.max(axis=0)
    span = np.maximum(high - low, 1.0)
    theta[1] = 1.0
    with np.errstate(invalid="ignore"):
        for i in range(m):
            p = (start.peak[i] - axes.centre[i]) / axes.scale[i]
            theta[2 + i] = np.where(np.isfinite(p), np.clip(p, low[i], high[i]), np.nan)
            s = start.sigma[i] / axes.scale[i]
            s = np.where(np.isfinite(s) & (s > 0), s, span[i] / 6)
            theta[2 + m + i] = np.clip(s, 0.5, span[i] / 2)
        if m > 1:
            corr = start.correlation if start.correlation is not None else np.zeros((m * (m - 1) // 2, n_pixels))
            theta[2 + 2 * m : 2 + 2 * m + corr.shape[0]] = np.clip(np.nan_to_num(corr, nan=0.0), -0.9, 0.9)
    return theta


def _run_fit(data: np.ndarray, offset: np.ndarray, noise: np.ndarray, u: np.ndarray, theta0: np.ndarray,
             m: int, n_peaks: int, linear_start: bool, settings: FitSettings) -> tuple[np.ndarray, ...]:
    n_pixels = data.shape[1]
    npar = theta0.shape[0]
    theta = np.empty((npar, n_pixels))
    errors = np.empty((npar, n_pixels))
    chi2 = np.empty(n_pixels)
    converged = np.empty(n_pixels, dtype=np.uint8)
    iterations = np.empty(n_pixels, dtype=np.int32)

    def work(start: int, stop: int) -> None:
        gaussian_lm.fit_block(data, offset, noise, u, theta0, m, n_peaks, linear_start,
                              settings.max_iterations, settings.tolerance, gaussian_lm.Q_CUT,
                              theta, errors, chi2, converged, iterations, start, stop)

    for_each_tile(n_pixels, work, tile=FIT_PIXELS)
    return theta, errors, chi2, converged, iterations


def _native(data: np.ndarray) -> np.ndarray:
    """Frames as the kernel reads them: float32/float64/uint16/int32... as they are (one
    compiled variant per type, cached), others converted to float32."""
    data = np.asarray(data)
    if data.dtype.isnative and data.dtype.name in _KERNEL_TYPES:
        return data
    return data.astype(np.float32)


_KERNEL_TYPES = ("float32", "float64", "uint8", "uint16", "uint32", "int16", "int32", "int64")


def fit_gaussians(
    curves: np.ndarray,
    positions: np.ndarray,
    motor_names: Sequence[str],
    start: FitStart,
    offset: np.ndarray | None = None,
    noise_variance: np.ndarray | None = None,
    settings: FitSettings | None = None,
    axes: ReducedAxes | None = None,
) -> GaussianFits:
    """Fit every pixel's curve; no Python call per pixel.

    curves (N, P): frame n of pixel p (any numeric type; non-finite values are left out of
    that pixel's fit); positions (N, M) the motors' recorded positions per frame in
    `motor_names` order; `offset` (P,) the per-pixel background to subtract first (the
    pipeline's `background()`), `noise_variance` (P,) that background's per-frame variance,
    added to the Poisson variance of the model in the weights; `axes` the reduced
    coordinates (default: from the positions' range and distinct values).
    """
    settings = settings or FitSettings()
    m = len(motor_names)
    settings.validate(m)
    curves = _native(curves)
    if curves.ndim != 2:
        raise ValueError(f"curves must be (frames, pixels), got shape {curves.shape}")
    n_frames, n_pixels = curves.shape
    positions = np.asarray(positions, dtype=np.float64).reshape(n_frames, m)
    axes = axes or ReducedAxes.of_positions(motor_names, positions)
    u = axes.reduce(positions)
    offset = np.zeros(n_pixels) if offset is None else np.ascontiguousarray(offset, dtype=np.float64).reshape(-1)
    noise = (np.zeros(n_pixels) if noise_variance is None
             else np.ascontiguousarray(noise_variance, dtype=np.float64).reshape(-1))
    theta0 = _reduced_start(start, axes, u, 1)
    theta, errors, chi2, converged, iterations = _run_fit(curves, offset, noise, u, theta0, m, 1, True, settings)
    peaks = None
    n_peaks = 1
    if settings.max_peaks == 2:
        theta, errors, chi2, converged, iterations, peaks = _second_peak(
            curves, offset, noise, u, theta, errors, chi2, converged, iterations, settings)
        n_peaks = 2
    return GaussianFits(tuple(motor_names), n_peaks, *_to_motor_units(theta, errors, axes, n_peaks),
                        chi2, converged, iterations, peaks)


def _second_peak(curves, offset, noise, u, theta1, errors1, chi2_1, conv1, iters1, settings):
    """One-motor fits with a second peak where it pays: started from the curve's highest
    point and the highest of what remains (`gaussian_lm.two_peak_start`), fitted as one
    7-parameter model, kept where its chi^2 is lower by `two_peak_dchi2` (in units of its
    reduced chi^2 when that exceeds 1) and it converged with both peaks inside the range;
    the stronger peak is then peak 1."""
    n_pixels = curves.shape[1]
    npar = gaussian_lm.n_params(1, 2)
    theta0 = np.empty((npar, n_pixels))
    order = np.argsort(u[:, 0], kind="stable")
    # every pixel the one-peak fit took (its own result may be NaN: it diverged)
    skip = np.where(iters1 > 0, 0.0, np.nan)
    for_each_tile(n_pixels, lambda a, b: gaussian_lm.two_peak_start(
        curves, offset, u, order, skip, theta0, a, b), tile=FIT_PIXELS)
    theta2, errors2, chi2_2, conv2, iters2 = _run_fit(curves, offset, noise, u, theta0, 1, 2, False, settings)
    n_valid = (np.isfinite(curves).sum(axis=0) if curves.dtype.kind == "f"
               else np.full(n_pixels, curves.shape[0]))
    dof1, dof2 = n_valid - 4, n_valid - npar
    with np.errstate(invalid="ignore"):
        gain = (chi2_1 * dof1 - chi2_2 * dof2) / np.maximum(chi2_2, 1.0)
        keep = (conv2 == 1) & (gain > settings.two_peak_dchi2)
    theta = np.full((npar, n_pixels), np.nan)
    errors = np.full((npar, n_pixels), np.nan)
    theta[:4], errors[:4] = theta1, errors1
    theta[:, keep], errors[:, keep] = theta2[:, keep], errors2[:, keep]
    # the stronger peak first
    swap = keep & (theta[4] > theta[1])
    for a, b in ((1, 4), (2, 5), (3, 6)):
        for arr in (theta, errors):
            arr[a, swap], arr[b, swap] = arr[b, swap], arr[a, swap].copy()
    chi2 = np.where(keep, chi2_2, chi2_1)
    converged = np.where(keep, conv2, conv1).astype(np.uint8)
    iterations = (iters1 + np.where(iters1 > 0, iters2, 0)).astype(np.int32)
    peaks = np.where(iters1 > 0, np.where(keep, 2, 1), 0).astype(np.uint8)
    return theta, errors, chi2, converged, iterations, peaks


def _to_motor_units(theta: np.ndarray, errors: np.ndarray, axes: ReducedAxes, n_peaks: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions x = centre + scale u, widths scale s; b, A and correlations unchanged."""
    m = len(axes.names)
    q = gaussian_lm.n_peak_params(m)
    theta, errors = theta.copy(), errors.copy()
    for k in range(n_peaks):
        base = 1 + k * q
        for i in range(m):
            theta[base + 1 + i] = axes.centre[i] + axes.scale[i] * theta[base + 1 + i]
            errors[base + 1 + i] *= axes.scale[i]
            theta[base + 1 + m + i] *= axes.scale[i]
            errors[base + 1 + m + i] *= axes.scale[i]
    return theta, errors


def gaussian_model(fits: GaussianFits, positions: np.ndarray, axes: ReducedAxes | None = None) -> np.ndarray:
    """The fitted curves (N, P) at `positions` (N, M): for residuals, plots and tests."""
    m = len(fits.motor_names)
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, m)
    axes = axes or ReducedAxes.of_positions(fits.motor_names, positions)
    theta = fits.params.copy()
    q = gaussian_lm.n_peak_params(m)
    for k in range(fits.n_peaks):
        base = 1 + k * q
        for i in range(m):
            theta[base + 1 + i] = (theta[base + 1 + i] - axes.centre[i]) / axes.scale[i]
            theta[base + 1 + m + i] /= axes.scale[i]
    u = axes.reduce(positions)

    def model_of(params: np.ndarray, n_peaks: int) -> np.ndarray:
        out = np.empty((positions.shape[0], params.shape[1]))
        for_each_tile(params.shape[1], lambda a, b: gaussian_lm.model_block(
            params, u, m, n_peaks, out, a, b), tile=FIT_PIXELS * 16)
        return out

    one = model_of(np.ascontiguousarray(theta[: 1 + q]), 1)
    if fits.n_peaks == 1:
        return one
    return np.where(fits.peaks == 2, model_of(theta, 2), one)  # pixels that kept one peak
