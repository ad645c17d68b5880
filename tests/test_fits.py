"""Per-pixel Gaussian fits (analysis.fits, analysis.gaussian_lm, analysis.rocking_curves):
known parameters recovered, standard errors that cover the truth, scipy's curve_fit on the
same weights, awkward curves, the band reader, and the /entry/fit group of the maps file."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from scipy.optimize import curve_fit

from dfxm_online.acquisition.geometry import MotorAxis, ScanGeometry
from dfxm_online.acquisition.model import scan_positions
from dfxm_online.acquisition.plain_frames import PlainFrames, read_frames
from dfxm_online.analysis import gaussian_lm
from dfxm_online.analysis.fits import (
    FitSettings,
    FitStart,
    fit_gaussians,
    gaussian_model,
    start_from_moments,
)
from dfxm_online.analysis.rocking_curves import (
    background_noise_variance,
    fit_recorded_scan,
    read_band,
    row_bands,
)
from dfxm_online.config import AnalysisConfig
from dfxm_online.gaussian import FWHM_PER_SIGMA
from dfxm_online.online.accumulators.background import RunningMean
from dfxm_online.online.maps import signal_mask
from dfxm_online.online.pipeline import ScanPipeline
from dfxm_online.publish.nexus import ProcessInfo, read_group, read_maps_file, write_maps_file

RNG_SEED = 7


def grid(*axes: tuple[float, float, int]) -> np.ndarray:
    """Positions (N, M) of a mesh, first motor fastest."""
    motors = [MotorAxis(f"m{i}", a, b, n) for i, (a, b, n) in enumerate(axes)]
    return scan_positions(motors)


def truth_params(rng: np.random.Generator, positions: np.ndarray, n_pixels: int) -> dict[str, np.ndarray]:
    """Peaks inside the inner half of the range, widths of 1.2-2.5 steps, correlations
    within +-0.5, amplitudes 200-1000 counts, a background of 0-3 counts."""
    low, high = positions.min(axis=0), positions.max(axis=0)
    span, centre = high - low, (high + low) / 2
    step = span / np.array([len(np.unique(p)) - 1 for p in positions.T])
    m = positions.shape[1]
    return {
        "background": rng.uniform(0, 3, n_pixels),
        "amplitude": rng.uniform(200, 1000, n_pixels),
        "peak": centre[:, None] + span[:, None] * rng.uniform(-0.25, 0.25, (m, n_pixels)),
        "sigma": step[:, None] * rng.uniform(1.2, 2.5, (m, n_pixels)),
        "correlation": rng.uniform(-0.5, 0.5, (m * (m - 1) // 2, n_pixels)),
    }


def gaussian_curves(positions: np.ndarray, t: dict[str, np.ndarray]) -> np.ndarray:
    """b + A exp(-d^T S^-1 d / 2) at every position (N, P), brute force per pixel."""
    m = positions.shape[1]
    n_pixels = t["amplitude"].size
    out = np.empty((positions.shape[0], n_pixels))
    pairs = [(a, b) for a in range(m) for b in range(a + 1, m)]
    for p in range(n_pixels):
        cov = np.diag(t["sigma"][:, p] ** 2)
        for c, (a, b) in enumerate(pairs):
            cov[a, b] = cov[b, a] = t["correlation"][c, p] * t["sigma"][a, p] * t["sigma"][b, p]
        d = positions - t["peak"][:, p]
        q = np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d)
        out[:, p] = t["background"][p] + t["amplitude"][p] * np.exp(-0.5 * q)
    return out


def perturbed_start(rng: np.random.Generator, positions: np.ndarray, t: dict[str, np.ndarray]) -> FitStart:
    """A start like the moments give: off by up to a step in position, 20 % in width."""
    step = (positions.max(axis=0) - positions.min(axis=0)) / 20
    peak = t["peak"] + step[:, None] * rng.uniform(-1, 1, t["peak"].shape)
    sigma = t["sigma"] * rng.uniform(0.8, 1.25, t["sigma"].shape)
    return FitStart(peak, sigma, None if t["correlation"].size == 0 else np.zeros_like(t["correlation"]))


MESHES = {
    1: ((-0.4, 0.4, 41),),
    2: ((-0.4, 0.4, 21), (-1.5, 1.5, 21)),
    3: ((-0.4, 0.4, 9), (-1.0, 1.0, 9), (-0.3, 0.3, 9)),
}


def test_vectorised_exp_matches_numpy():
    q = np.concatenate([np.linspace(0, 60, 100001), np.linspace(60, 1500, 10001)])
    out = np.empty_like(q)
    gaussian_lm._exp_neg_half(q, out, q.size)
    expected = np.exp(-0.5 * np.minimum(q, gaussian_lm.Q_MAX))
    np.testing.assert_allclose(out, expected, rtol=1e-13, atol=0)


@pytest.mark.parametrize("n_motors", [1, 2, 3])
def test_noise_free_curves_give_the_parameters_back(n_motors):
    rng = np.random.default_rng(RNG_SEED + n_motors)
    positions = grid(*MESHES[n_motors])
    t = truth_params(rng, positions, 300)
    curves = gaussian_curves(positions, t)
    names = [f"m{i}" for i in range(n_motors)]
    fits = fit_gaussians(curves, positions, names, perturbed_start(rng, positions, t))
    maps = fits.maps((1, 300))
    assert maps["converged"].all()

    def close(actual, expected, what):
        np.testing.assert_allclose(actual.reshape(-1), expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max(),
                                   err_msg=what)

    close(maps["amplitude"], t["amplitude"], "amplitude")
    close(maps["background"], t["background"], "background")
    for i, n in enumerate(names):
        close(maps[f"peak_{n}"], t["peak"][i], f"peak_{n}")
        close(maps[f"fwhm_{n}"], FWHM_PER_SIGMA * t["sigma"][i], f"fwhm_{n}")
    pairs = [(a, b) for a in range(n_motors) for b in range(a + 1, n_motors)]
    for c, (a, b) in enumerate(pairs):
        np.testing.assert_allclose(maps[f"correlation_{names[a]}_{names[b]}"].reshape(-1), t["correlation"][c],
                                   atol=1e-6)
    assert np.nanmax(maps["chi2"]) < 1e-10
    np.testing.assert_allclose(gaussian_model(fits, positions), curves, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("n_motors", [1, 2, 3])
def test_poisson_errors_lie_within_three_standard_errors(n_motors):
    """With Poisson counts on a pedestal of known variance, each fitted parameter's error is
    within 3 reported standard errors for >= 95 % of the pixels (99.7 % if exact), and the
    errors are not inflated: within one standard error for 55-80 % (68 % if exact)."""
    rng = np.random.default_rng(RNG_SEED + 10 + n_motors)
    positions = grid(*MESHES[n_motors])
    n_pixels = 3000 if n_motors < 3 else 1000
    t = truth_params(rng, positions, n_pixels)
    pedestal = 5.0  # Poisson photons under the signal, subtracted as the pipeline's background
    curves = rng.poisson(gaussian_curves(positions, t) + pedestal).astype(np.float32)
    names = [f"m{i}" for i in range(n_motors)]
    # what the background's frames would show: the pedestal's and b's Poisson variance
    fits = fit_gaussians(curves, positions, names, perturbed_start(rng, positions, t),
                         offset=np.full(n_pixels, pedestal), noise_variance=pedestal + t["background"])
    maps = fits.maps((1, n_pixels))
    assert maps["converged"].mean() > 0.99
    ok = maps["converged"].reshape(-1) == 1
    checks = {"amplitude": t["amplitude"], "background": t["background"]}
    for i, n in enumerate(names):
        checks[f"peak_{n}"] = t["peak"][i]
        checks[f"fwhm_{n}"] = FWHM_PER_SIGMA * t["sigma"][i]
    for name, truth in checks.items():
        z = np.abs(maps[name].reshape(-1) - truth)[ok] / maps[f"{name}_error"].reshape(-1)[ok]
        assert np.mean(z < 3) >= 0.95, (name, np.mean(z < 3))
        assert 0.55 <= np.mean(z < 1) <= 0.8, (name, np.mean(z < 1))
    assert 0.9 < np.median(maps["chi2"]) < 1.1


def test_agrees_with_scipy_curve_fit_on_the_same_weights():
    """The fits are a fixed point of weighted least squares with the weights of their own
    model (IRLS): scipy's curve_fit with those weights, started elsewhere, lands on the same
    parameters and the same covariance."""
    rng = np.random.default_rng(RNG_SEED + 20)
    positions = grid(*MESHES[2])
    n_pixels = 40
    t = truth_params(rng, positions, n_pixels)
    noise_var = 4.0
    curves = rng.poisson(gaussian_curves(positions, t) + 3.0).astype(np.float64) - 3.0
    curves += rng.normal(0, np.sqrt(noise_var - 3.0), curves.shape)
    fits = fit_gaussians(curves, positions, ["mu", "chi"], perturbed_start(rng, positions, t),
                         noise_variance=np.full(n_pixels, noise_var), settings=FitSettings(tolerance=1e-7))
    maps = fits.maps((1, n_pixels))
    model = gaussian_model(fits, positions)

    def f(x, b, a, p1, p2, s1, s2, r):
        t1, t2 = (x[:, 0] - p1) / s1, (x[:, 1] - p2) / s2
        return b + a * np.exp(-0.5 * (t1**2 - 2 * r * t1 * t2 + t2**2) / (1 - r**2))

    names = ["background", "amplitude", "peak_mu", "peak_chi", "fwhm_mu", "fwhm_chi", "correlation_mu_chi"]
    for p in range(n_pixels):
        assert maps["converged"][0, p] == 1
        b = maps["background"][0, p]  # the kernel's weights: the peak's Poisson variance + the background's
        sigma = np.sqrt(np.maximum(np.maximum(model[:, p] - b, 0.0) + noise_var, 1.0))
        p0 = [0.0, t["amplitude"][p] * 0.9, t["peak"][0, p] + 0.01, t["peak"][1, p] - 0.05,
              t["sigma"][0, p] * 1.1, t["sigma"][1, p] * 0.9, 0.0]
        popt, pcov = curve_fit(f, positions, curves[:, p], p0=p0, sigma=sigma, absolute_sigma=True, maxfev=10000)
        popt[4:6] *= FWHM_PER_SIGMA
        err = np.sqrt(np.diag(pcov)) * np.sqrt(max(maps["chi2"][0, p], 1.0))
        err[4:6] *= FWHM_PER_SIGMA
        ours = np.array([maps[n][0, p] for n in names])
        ours_err = np.array([maps[f"{n}_error"][0, p] for n in names])
        np.testing.assert_allclose(ours, popt, rtol=1e-5, atol=1e-6, err_msg=f"pixel {p}")
        np.testing.assert_allclose(ours_err, err, rtol=1e-3, err_msg=f"pixel {p}")


#: meshes spanning +-5 to +-15 widths of the peaks: a third to most of the frames lie beyond
#: each peak's support
WIDE_MESHES = {
    1: ((-0.4, 0.4, 81),),
    2: ((-0.4, 0.4, 31), (-1.5, 1.5, 31)),
    3: ((-0.4, 0.4, 13), (-1.0, 1.0, 13), (-0.3, 0.3, 13)),
}


def _noisy_wide_mesh(n_motors: int, n_pixels: int, seed: int):
    """Poisson curves on a pedestal over a wide mesh, a few frames NaN, half the pixels with
    a measured background variance (the other half: b's Poisson variance, which moves with
    b, so the weights beyond the support move too)."""
    rng = np.random.default_rng(seed)
    positions = grid(*WIDE_MESHES[n_motors])
    t = truth_params(rng, positions, n_pixels)
    t["sigma"] *= rng.uniform(0.6, 1.0, t["sigma"].shape)  # 0.7-2.5 steps
    truth = gaussian_curves(positions, t)
    curves = rng.poisson(truth + 5.0).astype(np.float64) - 5.0
    curves[rng.random(curves.shape) < 0.02] = np.nan
    noise = np.where(np.arange(n_pixels) % 2 == 0, 5.0 + t["background"], 0.0)
    return rng, positions, t, truth, curves, noise


@pytest.mark.parametrize("n_motors", [1, 2, 3])
def test_fits_over_the_peaks_support_equal_the_full_evaluation(n_motors, monkeypatch):
    """The fits evaluate each peak on its support only (the frames where its Gaussian is
    above gaussian_lm.TAIL of its height, plus a margin): on meshes where most frames are
    beyond it, every pixel lands where the evaluation over every frame (Q_CUT = inf) does,
    within a small fraction of the fit's tolerance (a step below 1e-2 standard errors), with
    the same standard errors, chi^2 and flags. Flags may differ on a pixel in 100: a path
    through a spike (a width of 0.26 step, its J^T W J near singular) that one summation
    order of the float32 sums leaves and another does not (the 1-D case's one such pixel
    fails the full evaluation too on the AVX2 target)."""
    n_pixels = 200 if n_motors < 3 else 60
    rng, positions, t, truth, curves, noise = _noisy_wide_mesh(n_motors, n_pixels, RNG_SEED + 50 + n_motors)
    tail = (truth - t["background"]) / t["amplitude"] < gaussian_lm.TAIL
    assert tail.mean() > 0.3  # the case where the support matters
    names = [f"m{i}" for i in range(n_motors)]
    start = perturbed_start(rng, positions, t)
    support = fit_gaussians(curves, positions, names, start, noise_variance=noise)
    monkeypatch.setattr(gaussian_lm, "Q_CUT", np.inf)
    full = fit_gaussians(curves, positions, names, start, noise_variance=noise)
    assert full.converged.mean() > 0.97
    assert np.mean(support.converged != full.converged) <= 0.01
    ok = (full.converged == 1) & (support.converged == 1)
    z = np.abs(support.params - full.params)[:, ok] / full.errors[:, ok]
    assert z.max() < 2e-3, z.max(axis=1)
    np.testing.assert_allclose(support.errors[:, ok], full.errors[:, ok], rtol=1e-3)
    np.testing.assert_allclose(support.chi2[ok], full.chi2[ok], rtol=1e-6)


def test_chi2_over_the_support_counts_every_frame():
    """The reduced chi^2 a fit reports is sum w (y - model)^2 over every finite frame (the
    support's frames from the model, the others from per-pixel sums of the data), w the
    kernel's weights at the solution: brute force in numpy from the fitted parameters, with
    the model the kernel fits (the Gaussian set to 0 below TAIL of its height) to 1e-9, and
    with the untruncated Gaussian to 1e-6 (what the truncation moves)."""
    n_pixels = 100
    rng, positions, t, truth, curves, noise = _noisy_wide_mesh(2, n_pixels, RNG_SEED + 60)
    fits = fit_gaussians(curves, positions, ["m0", "m1"], perturbed_start(rng, positions, t),
                         noise_variance=noise)
    fitted = fits.fitted & np.isfinite(fits.chi2)
    assert fitted.mean() > 0.97
    b, amplitude = fits.params[0], fits.params[1]
    gaussian = gaussian_model(fits, positions)
    beyond = (gaussian - b) / amplitude < gaussian_lm.TAIL
    assert beyond.mean() > 0.3
    truncated = np.where(beyond, b, gaussian)
    background = np.where(noise > 0, noise, np.maximum(b, 0.0))
    finite = np.isfinite(curves)
    for model, rtol in ((truncated, 1e-9), (gaussian, 1e-6)):
        w = 1.0 / np.maximum(np.maximum(model - b, 0.0) + background, 1.0)
        chi2 = np.nansum(np.where(finite, w * (curves - model) ** 2, np.nan), axis=0) / (finite.sum(axis=0) - 7)
        np.testing.assert_allclose(fits.chi2[fitted], chi2[fitted], rtol=rtol)


def test_awkward_curves_do_not_break_the_fit():
    """Flat, one-point, saturated, all-NaN and partly NaN curves among good ones: no
    exception, every good curve still fitted exactly, the hopeless ones flagged."""
    rng = np.random.default_rng(RNG_SEED + 30)
    positions = grid(*MESHES[1])
    t = truth_params(rng, positions, 6)
    t["peak"][0] = 0.0  # on a frame, so that clipping the top keeps the curve symmetric
    curves = gaussian_curves(positions, t)
    curves[:, 0] = 10.0  # flat
    curves[:, 1] = 0.0
    curves[20, 1] = 1000.0  # one point
    curves[:, 2] = np.minimum(curves[:, 2], 0.3 * t["amplitude"][2])  # saturated
    curves[:, 3] = np.nan  # nothing recorded
    curves[[3, 11, 19, 22, 30], 4] = np.nan  # a few frames lost
    start = FitStart(np.full((1, 6), 0.01), np.full((1, 6), 0.05))
    start.peak[0, 5] = np.nan  # outside the signal mask
    fits = fit_gaussians(curves, positions, ["mu"], start)
    maps = {k: v.reshape(-1) for k, v in fits.maps((1, 6)).items()}
    # flat: no peak to find, the amplitude ends on its bound 0
    assert maps["converged"][0] == 0 and maps["amplitude"][0] < 1e-3 * maps["amplitude_error"][0]
    # one point: a peak on that frame, narrower than a step (unresolved, but not wrong)
    assert abs(maps["peak_mu"][1]) < 0.5 * 0.02 and maps["fwhm_mu"][1] < 0.02
    assert np.isfinite(maps["amplitude"][1]) and maps["amplitude"][1] >= 700
    assert maps["converged"][2] == 1 and abs(maps["peak_mu"][2]) < 1e-6  # saturated: centred
    assert maps["fwhm_mu"][2] > FWHM_PER_SIGMA * t["sigma"][0, 2]  # ... and wider than the peak
    for p in (3, 5):  # nothing to fit: NaN, no iteration
        assert maps["iterations"][p] == 0 and maps["converged"][p] == 0
        assert all(np.isnan(maps[k][p]) for k in ("amplitude", "peak_mu", "fwhm_mu", "chi2"))
    assert maps["converged"][4] == 1
    np.testing.assert_allclose(maps["peak_mu"][4], t["peak"][0, 4], atol=1e-8)
    np.testing.assert_allclose(maps["fwhm_mu"][4], FWHM_PER_SIGMA * t["sigma"][0, 4], rtol=1e-6)
    assert np.all(maps["iterations"] <= FitSettings().max_iterations)


def test_two_peaks_are_separated_and_single_peaks_kept_single():
    rng = np.random.default_rng(RNG_SEED + 40)
    x = np.linspace(-0.4, 0.4, 41)[:, None]
    n_pixels = 600
    t1 = {"background": rng.uniform(0, 3, n_pixels), "amplitude": rng.uniform(300, 800, n_pixels),
          "peak": rng.uniform(-0.2, -0.05, (1, n_pixels)), "sigma": rng.uniform(0.02, 0.04, (1, n_pixels)),
          "correlation": np.zeros((0, n_pixels))}
    t2 = {"background": np.zeros(n_pixels), "amplitude": t1["amplitude"] * rng.uniform(0.3, 0.9, n_pixels),
          "peak": rng.uniform(0.05, 0.2, (1, n_pixels)), "sigma": rng.uniform(0.02, 0.04, (1, n_pixels)),
          "correlation": np.zeros((0, n_pixels))}
    two = gaussian_curves(x, t1) + gaussian_curves(x, t2)
    one = gaussian_curves(x, t1)
    w = np.clip(two, 0, None)
    com = (w * x).sum(0) / w.sum(0)
    start = FitStart(com[None], np.full((1, n_pixels), 0.1))
    settings = FitSettings(max_peaks=2)
    fits = fit_gaussians(two, x, ["mu"], start, settings=settings)
    maps = {k: v.reshape(-1) for k, v in fits.maps((1, n_pixels)).items()}
    assert (maps["peaks"] == 2).mean() > 0.99
    model = gaussian_model(fits, x)
    np.testing.assert_allclose(model[:, maps["peaks"] == 2], two[:, maps["peaks"] == 2], rtol=1e-5, atol=1e-4)
    ok = maps["peaks"] == 2
    np.testing.assert_allclose(maps["peak_mu"][ok], t1["peak"][0][ok], atol=1e-6)
    np.testing.assert_allclose(maps["peak_mu_2"][ok], t2["peak"][0][ok], atol=1e-6)
    np.testing.assert_allclose(maps["fwhm_mu_2"][ok], FWHM_PER_SIGMA * t2["sigma"][0][ok], rtol=1e-5)
    np.testing.assert_allclose(maps["amplitude_2"][ok], t2["amplitude"][ok], rtol=1e-5)
    noisy = rng.poisson(one).astype(np.float32)
    w = np.clip(noisy, 0, None)
    com = (w * x).sum(0) / w.sum(0)
    start = FitStart(com[None], np.sqrt((w * (x - com) ** 2).sum(0) / w.sum(0))[None])
    fits = fit_gaussians(noisy, x, ["mu"], start, settings=settings)
    maps = {k: v.reshape(-1) for k, v in fits.maps((1, n_pixels)).items()}
    assert (maps["peaks"] == 1).mean() >= 0.99  # p = 0.001 per curve for a spurious second peak
    # a pixel that kept one peak is modelled with that one
    single = maps["peaks"] == 1
    sigma = maps["fwhm_mu"][single] / FWHM_PER_SIGMA
    expected = maps["background"][single] + maps["amplitude"][single] * np.exp(
        -0.5 * ((x - maps["peak_mu"][single]) / sigma) ** 2)
    np.testing.assert_allclose(gaussian_model(fits, x)[:, single], expected, rtol=1e-9)
    assert np.isnan(maps["peak_mu_2"][maps["peaks"] == 1]).all()
    single = maps["peaks"] == 1
    z = np.abs(maps["peak_mu"] - t1["peak"][0])[single] / maps["peak_mu_error"][single]
    assert np.mean(z < 3) >= 0.95


def test_two_peaks_need_one_motor():
    with pytest.raises(ValueError, match="one motor"):
        FitSettings(max_peaks=2).validate(2)


# -- from a recorded scan ------------------------------------------------------------------


@pytest.fixture()
def recorded_stack(tmp_path):
    """A 2-motor scan's frames in an HDF5 file (chunked one frame per chunk, as Lima
    writes), with a Poisson pedestal of 5 counts on a dark offset of 100 ADU."""
    rng = np.random.default_rng(RNG_SEED + 50)
    positions = grid(*MESHES[2])
    h, w = 12, 10
    t = truth_params(rng, positions, h * w)
    t["amplitude"][rng.random(h * w) < 0.3] = 0.0  # no crystal there
    expected = gaussian_curves(positions, t) + 5.0
    frames = (rng.poisson(expected) + 100).astype(np.uint16).reshape(-1, h, w)
    path = tmp_path / "stack.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("frames", data=frames, chunks=(1, h, w))
    return path, positions, frames, t


class _Recorded:
    """The parts of a RecordedScan the fits read."""

    def __init__(self, dataset, positions, names):
        self.frames = dataset
        self.positions = {n: positions[:, i] for i, n in enumerate(names)}
        self.monitor = None
        self.npoints = dataset.shape[0]
        self.frame_shape = tuple(dataset.shape[1:])
        self._plain = PlainFrames.of(dataset)

    def read(self, start, stop, out, rows=None):
        read_frames(self.frames, self._plain, start, stop, out, rows)


def _pipeline(frames, positions, config=None):
    names = ["mu", "chi"]
    axes = tuple(MotorAxis(n, positions[:, i].min(), positions[:, i].max(), len(np.unique(positions[:, i])))
                 for i, n in enumerate(names))
    pipe = ScanPipeline(ScanGeometry(axes, frames.shape[0], "det"), frames.shape[1:], config)
    for s in range(0, frames.shape[0], 64):
        pipe.update(frames[s:s + 64], {n: positions[s:s + 64, i] for i, n in enumerate(names)})
    pipe.finish()
    return pipe


def test_row_bands_cover_the_frame_within_the_budget():
    bands = row_bands(441, (2048, 2048), 2, 1024)
    assert bands[0] == (0, 594) and bands[-1][1] == 2048
    assert all(b[0] == a[1] for a, b in zip(bands, bands[1:]))
    assert all((r1 - r0) * 441 * 2048 * 2 <= 1024 << 20 for r0, r1 in bands)
    assert row_bands(10, (4, 4), 4, 1) == [(0, 4)]


def test_read_band_is_the_chain_applied_to_whole_frames(recorded_stack):
    path, positions, frames, _ = recorded_stack
    with h5py.File(path, "r") as f:
        rec = _Recorded(f["frames"], positions, ["mu", "chi"])
        plain = _pipeline(frames, positions)
        band = read_band(rec, plain, (3, 7), batch_size=50)
        assert band.dtype == np.uint16
        np.testing.assert_array_equal(band, frames[:, 3:7])
        config = AnalysisConfig(preprocess=[{"step": "hot_pixels"}, {"step": "binning", "factor": 2}])
        binned = _pipeline(frames, positions, config)
        band = read_band(rec, binned, (1, 4), batch_size=50)
        np.testing.assert_array_equal(band, binned.chain(frames)[:, 1:4])


def test_background_noise_variance_is_the_quietest_edge_group(recorded_stack):
    _, positions, frames, _ = recorded_stack
    pipe = _pipeline(frames, positions)
    flat = frames.reshape(frames.shape[0], -1).astype(np.float64)
    variances = []
    for i in range(2):
        u = (positions[:, i] - positions[:, i].min()) / np.ptp(positions[:, i])
        for group in (u <= 0.2 + 1e-9, u >= 0.8 - 1e-9):
            variances.append(flat[group].var(axis=0, ddof=1))
    np.testing.assert_allclose(background_noise_variance(pipe), np.min(variances, axis=0), rtol=1e-9)
    # a dark scan (read noise only: no diffuse background) does not lower it...
    dark = RunningMean(flat.shape[1])
    dark.update(np.full((5, *frames.shape[1:]), 100, np.uint16) + np.arange(5, dtype=np.uint16)[:, None, None])
    pipe.set_dark(dark)
    assert pipe.dark_frames is dark
    np.testing.assert_allclose(background_noise_variance(pipe), np.min(variances, axis=0), rtol=1e-9)
    # ... and stands in only where no edge group has two frames
    pipe.edges.counts[:] = 1
    np.testing.assert_allclose(background_noise_variance(pipe), 2.5)


def test_recorded_scan_fits_use_the_pipelines_background_and_mask(recorded_stack, monkeypatch):
    """Fits of a recorded stack through the pipeline: only the moment maps' signal pixels,
    the same result in one band or in many, and peaks within 3 standard errors."""
    path, positions, frames, t = recorded_stack
    pipe = _pipeline(frames, positions)
    maps = pipe.snapshot()
    with h5py.File(path, "r") as f:
        rec = _Recorded(f["frames"], positions, ["mu", "chi"])
        whole = fit_recorded_scan(rec, pipe, maps, FitSettings())
        # 1 MiB holds this whole stack: bands of 5 rows instead
        import dfxm_online.analysis.rocking_curves as rc

        monkeypatch.setattr(rc, "row_bands", lambda n, shape, itemsize, mb: [(0, 5), (5, 10), (10, 12)])
        banded = fit_recorded_scan(rec, pipe, maps, FitSettings())
    mask = signal_mask(maps["intensity"], pipe.config.min_intensity_fraction).reshape(-1)
    np.testing.assert_array_equal(whole.fitted, mask)
    np.testing.assert_array_equal(np.isfinite(maps["com_mu"]).reshape(-1), mask)
    for a, b in ((whole.params, banded.params), (whole.errors, banded.errors), (whole.chi2, banded.chi2)):
        np.testing.assert_array_equal(a, b)
    fit_maps = {k: v.reshape(-1) for k, v in whole.maps((12, 10)).items()}
    ok = fit_maps["converged"] == 1
    assert ok.sum() >= 0.95 * mask.sum()
    for i, n in enumerate(["mu", "chi"]):
        z = np.abs(fit_maps[f"peak_{n}"] - t["peak"][i])[ok] / fit_maps[f"peak_{n}_error"][ok]
        assert np.mean(z < 3) >= 0.95
    # the 100 ADU offset and the 5-count pedestal are the pipeline's background, not the fit's
    assert abs(np.median(fit_maps["background"][ok])) < 1.5


def test_start_from_moments_masks_and_converts():
    maps = {"com_mu": np.array([[0.1, 0.2]]), "com_chi": np.array([[1.0, np.nan]]),
            "fwhm_mu": np.array([[FWHM_PER_SIGMA, 2 * FWHM_PER_SIGMA]]), "fwhm_chi": np.array([[FWHM_PER_SIGMA] * 2]),
            "cov_mu_chi": np.array([[0.5, 0.0]])}
    start = start_from_moments(maps, ["mu", "chi"], np.array([[True, False]]))
    np.testing.assert_array_equal(start.peak, [[0.1, np.nan], [1.0, np.nan]])
    np.testing.assert_allclose(start.sigma, [[1.0, 2.0], [1.0, 1.0]])
    np.testing.assert_allclose(start.correlation, [[0.5, 0.0]])


def test_maps_file_groups_are_nxdata_beside_the_maps(tmp_path):
    maps = {"intensity": np.ones((3, 4)), "com_mu": np.zeros((3, 4))}
    groups = {"fit": {"amplitude": np.full((3, 4), 2.0), "converged": np.ones((3, 4), np.uint8)},
              "bss/nmf": {"components": np.ones((2, 3, 4))}}
    out = write_maps_file(tmp_path / "m.h5", maps, ProcessInfo(state="complete", extra={"fit_pixels": 12}),
                          default="com_mu", groups=groups)
    read, process = read_maps_file(out)
    assert set(read) == set(maps) and process["fit_pixels"] == 12
    with h5py.File(out, "r") as f:
        assert f["entry"].attrs["default"] == "maps" and f["entry/maps"].attrs["default"] == "com_mu"
        group = f["entry/fit"]
        assert group.attrs["NX_class"] == "NXcollection"
        assert group["amplitude"].attrs["NX_class"] == "NXdata" and group["amplitude"].attrs["signal"] == "amplitude"
        assert group["amplitude/amplitude"].dtype == np.float32
        assert group["converged/converged"].dtype == np.uint8
        assert f["entry/bss/nmf/components/components"].shape == (2, 3, 4)
    np.testing.assert_array_equal(read_group(out, "fit")["amplitude"], 2.0)
    with pytest.raises(ValueError, match="taken"):
        write_maps_file(tmp_path / "x.h5", maps, ProcessInfo(), groups={"maps": {}})
    assert not (tmp_path / "x.h5").exists()
