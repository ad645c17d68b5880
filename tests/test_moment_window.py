"""The moment window: its compiled step against numpy, its truncation factors against
closed forms, and windowed moments of Gaussian curves against their true parameters."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.stats import chi2, norm

from dfxm_online.acquisition.geometry import MotorAxis
from dfxm_online.config import AnalysisConfig
from dfxm_online.gaussian import FWHM_PER_SIGMA
from dfxm_online.online import kernels
from dfxm_online.online.accumulators.moments import PowerSums
from dfxm_online.online.kernels import frame_pass
from dfxm_online.online.moment_window import (
    MAX_CORRELATION,
    MomentWindow,
    correct_truncation,
    truncation_factors,
)
from dfxm_online.online.pipeline import ScanPipeline

from . import brute


def test_truncation_factors_match_closed_forms():
    # one motor: the variance of a standard normal cut at +-rho
    for rho in (1.5, 2.0, 3.0, 4.0):
        kept = 2 * norm.cdf(rho) - 1
        c2 = 1 - 2 * rho * norm.pdf(rho) / kept
        c4 = (3 * kept - 2 * (rho**3 + 3 * rho) * norm.pdf(rho)) / kept / 3
        assert truncation_factors(rho, 1) == pytest.approx((c2, c4), rel=1e-12)
    for dims in (2, 3):
        f = chi2.cdf(9.0, dims)
        assert truncation_factors(3.0, dims) == pytest.approx(
            (chi2.cdf(9.0, dims + 2) / f, chi2.cdf(9.0, dims + 4) / f), rel=1e-12)


def _maps(rng, motors, shape, cov_scale=1.0):
    """Random moment maps: centres, FWHMs, correlations (some beyond 1), a few NaN pixels."""
    p = shape[0] * shape[1]
    maps = {}
    sig = {}
    for name in motors:
        maps[f"com_{name}"] = rng.uniform(-0.3, 0.3, shape)
        sig[name] = rng.uniform(0.02, 0.3, shape)
        maps[f"fwhm_{name}"] = FWHM_PER_SIGMA * sig[name]
    for a, name in enumerate(motors):
        for other in motors[a + 1:]:
            maps[f"cov_{name}_{other}"] = rng.uniform(-1.3, 1.3, shape) * sig[name] * sig[other] * cov_scale
    flat = maps[f"com_{motors[0]}"].reshape(-1)
    flat[rng.choice(p, 3, replace=False)] = np.nan
    maps[f"fwhm_{motors[-1]}"].reshape(-1)[rng.choice(p, 3, replace=False)] = np.nan  # variance <= 0
    return maps


@pytest.mark.parametrize("n_motors", [1, 2, 3])
def test_window_step_equals_its_numpy_expression(n_motors):
    rng = np.random.default_rng(n_motors)
    motors = ["mu", "chi", "ffz"][:n_motors]
    axes = [MotorAxis(n, -1.0, 1.0, 21) for n in motors]
    shape = (7, 9)
    maps = _maps(rng, motors, shape)
    window = MomentWindow.from_maps(maps, axes, 2.5)
    frames = rng.normal(100, 30, (11, *shape)).astype(np.float32)
    offset = rng.normal(95, 3, shape[0] * shape[1])
    positions = {n: rng.uniform(-1, 1, 11) for n in motors}
    got = window.apply(frames, positions, offset)
    # numpy: the same window, pixel by pixel
    p = shape[0] * shape[1]
    expected = np.zeros((11, p), np.float32)
    for k in range(p):
        c = np.array([maps[f"com_{n}"].reshape(-1)[k] for n in motors])
        s = np.array([maps[f"fwhm_{n}"].reshape(-1)[k] / FWHM_PER_SIGMA for n in motors])
        if np.isnan(c).any():
            continue
        s = np.where(np.isnan(s), 2.0, np.fmax(s, 0.1))  # the range where no variance, at least a step
        cov = np.diag(s**2)
        for a in range(n_motors):
            for b in range(a + 1, n_motors):
                bound = MAX_CORRELATION * s[a] * s[b]
                cov[a, b] = cov[b, a] = np.clip(maps[f"cov_{motors[a]}_{motors[b]}"].reshape(-1)[k], -bound, bound)
        if np.linalg.det(cov) <= 0:
            cov = np.diag(np.diag(cov))
        d = np.stack([positions[n] for n in motors], 1) - c
        q = np.einsum("bi,ij,bj->b", d, np.linalg.inv(cov), d)
        values = (frames.reshape(11, p)[:, k] - offset[k]).astype(np.float32)
        expected[:, k] = np.where(q <= 2.5**2, values, 0)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-4)
    assert (got != 0).any() and (got == 0).any()



@pytest.mark.parametrize("n_motors", [1, 2, 3])
def test_windowed_pass_skips_only_frames_outside_every_window_of_a_sub_tile(n_motors):
    """Windows clustered by chunk of pixels (as neighbouring pixels of a grain are) on a
    mesh: every point inside a pixel's window (q summed in the kernel's order) lies in its
    chunk's box, the boxes leave frames out of some sub-tiles, and the sums are those of a
    pass over every frame (boxes open), bit for bit. Extremes among the windows: no centre,
    no variance, correlations beyond the bound, widths below a step, centres far out."""
    rng = np.random.default_rng(40 + n_motors)
    motors = ["mu", "chi", "ffz"][:n_motors]
    steps = {1: (41,), 2: (11, 9), 3: (9, 8, 8)}[n_motors]
    axes = [MotorAxis(n, -1.0, 1.0, k) for n, k in zip(motors, steps)]
    grid = np.meshgrid(*[np.linspace(-1, 1, k) for k in steps], indexing="ij")
    positions = {n: g.ravel() for n, g in zip(motors, grid)}
    n_frames = len(positions["mu"])
    box = frame_pass.BOX_PIXELS
    shape = (12, box)  # a chunk per detector row
    maps = _maps(rng, motors, shape, cov_scale=0.5)
    for name in motors:  # each row's windows around a centre of its own, narrow
        maps[f"com_{name}"] = maps[f"com_{name}"] * 0.1 + rng.uniform(-0.8, 0.8, (shape[0], 1))
        maps[f"fwhm_{name}"] *= 0.5
    maps[f"com_{motors[0]}"][3, :5] = [np.nan, 40.0, -40.0, 1e6, 0.0]
    maps[f"fwhm_{motors[0]}"][4, :3] = [np.nan, 1e-9, 5.0]
    window = MomentWindow.from_maps(maps, axes, 2.5)
    mono, coef = window.monomials(positions), window.coefficients
    q = np.broadcast_to(coef[-1], (n_frames, coef.shape[1])).copy()
    for k in range(coef.shape[0] - 1):
        q += coef[k] * mono[:, k : k + 1]
    points = mono[:, -n_motors:]
    in_box = np.ones((n_frames, shape[0]), bool)
    for i in range(n_motors):
        in_box &= (window.boxes[:, 0, i] <= points[:, i : i + 1]) & (points[:, i : i + 1] <= window.boxes[:, 1, i])
    inside = q <= 2.5**2
    assert inside.any(), n_motors
    assert not (inside & ~np.repeat(in_box, box, axis=1)).any(), "a point inside a window lies outside its box"
    needed = sum(frame_pass.frames_in_box(points, window.boxes, c, np.empty(n_frames, np.bool_))
                 for c in range(shape[0]))
    assert 0 < needed < 0.8 * n_frames * shape[0], needed / (n_frames * shape[0])

    frames = rng.integers(0, 4000, (n_frames, shape[0] * box)).astype(np.uint16)
    offset = rng.uniform(0, 90, shape[0] * box)
    every = dataclasses.replace(window, boxes=np.stack([np.full((shape[0], n_motors), -np.inf),
                                                        np.full((shape[0], n_motors), np.inf)], axis=1))
    got, expected = PowerSums(axes, frames.shape[1]), PowerSums(axes, frames.shape[1])
    with kernels.use_backend("numba"):
        for lo in range(0, n_frames, 16):
            part = {n: v[lo:lo + 16] for n, v in positions.items()}
            window.add_to(got, frames[lo:lo + 16], part, offset)
            every.add_to(expected, frames[lo:lo + 16], part, offset)
    assert np.array_equal(got.sums, expected.sums) and (got.sums != 0).any()


def test_windowed_moments_of_gaussians_give_their_parameters_back():
    """Noise-free bivariate Gaussians with correlation on a fine mesh: the windowed and
    corrected moments are the Gaussians' own centre, sigma, covariance and zero excess
    kurtosis, although the window cuts each curve at 3 sigma."""
    axes = [MotorAxis("mu", -1.0, 1.0, 101), MotorAxis("chi", -2.0, 2.0, 101)]
    mu, chi = np.meshgrid(np.linspace(-1, 1, 101), np.linspace(-2, 2, 101))
    positions = {"mu": mu.ravel(), "chi": chi.ravel()}
    rng = np.random.default_rng(3)
    shape = (4, 5)
    c = np.stack([rng.uniform(-0.2, 0.2, shape), rng.uniform(-0.4, 0.4, shape)])
    s = np.stack([rng.uniform(0.08, 0.15, shape), rng.uniform(0.15, 0.3, shape)])
    r = rng.uniform(-0.6, 0.6, shape)
    d0 = (positions["mu"][:, None, None] - c[0]) / s[0]
    d1 = (positions["chi"][:, None, None] - c[1]) / s[1]
    frames = 1000 * np.exp(-(d0**2 - 2 * r * d0 * d1 + d1**2) / (2 * (1 - r**2)))
    # loose one-pass moments (what the window starts from: COM off, widths 30 % too large)
    maps = {"com_mu": c[0] + 0.3 * s[0], "com_chi": c[1] - 0.3 * s[1], "fwhm_mu": 1.3 * FWHM_PER_SIGMA * s[0],
            "fwhm_chi": 1.3 * FWHM_PER_SIGMA * s[1], "cov_mu_chi": r * s[0] * s[1]}
    from dfxm_online.online.maps import moment_maps_of_sums

    for _ in range(4):
        window = MomentWindow.from_maps(maps, axes, 3.0)
        sums = PowerSums(axes, 20)
        sums.update(window.apply(frames.reshape(len(frames), -1), positions, None), positions)
        maps = moment_maps_of_sums(sums, None, ["mu", "chi"], shape, 0.0)
        correct_truncation(maps, ["mu", "chi"], 3.0)
    np.testing.assert_allclose(maps["com_mu"], c[0], atol=2e-4)
    np.testing.assert_allclose(maps["com_chi"], c[1], atol=4e-4)
    np.testing.assert_allclose(maps["fwhm_mu"] / FWHM_PER_SIGMA, s[0], rtol=0.01)
    np.testing.assert_allclose(maps["fwhm_chi"] / FWHM_PER_SIGMA, s[1], rtol=0.01)
    np.testing.assert_allclose(maps["cov_mu_chi"], r * s[0] * s[1], atol=0.01 * (s[0] * s[1]).max())
    np.testing.assert_allclose(maps["kurtosis_mu"], 0.0, atol=0.05)


def test_pipeline_windowed_maps_equal_brute_force_on_a_three_motor_scan():
    rng = np.random.default_rng(8)
    axes = [MotorAxis("mu", -0.4, 0.4, 7), MotorAxis("chi", -1.0, 1.0, 5), MotorAxis("ffz", -0.3, 0.3, 4)]
    grids = np.meshgrid(*[np.linspace(a.start, a.stop, a.npoints) for a in axes], indexing="ij")
    pos = np.stack([g.ravel() for g in grids], 1)
    shape = (6, 5)
    centre = np.stack([rng.uniform(-0.1, 0.1, shape), rng.uniform(-0.3, 0.3, shape), rng.uniform(-0.1, 0.1, shape)])
    z = sum(((pos[:, i, None, None] - centre[i]) / (0.15, 0.5, 0.12)[i]) ** 2 for i in range(3))
    stack = rng.poisson(3000 * np.exp(-0.5 * z) + 20).astype(np.float64) + 100
    from dfxm_online.acquisition.geometry import ScanGeometry

    geometry = ScanGeometry(motors=tuple(axes), npoints=len(pos), detector="d", frame_shape=shape)
    pipeline = ScanPipeline(geometry, shape, AnalysisConfig(accumulators=[]))
    positions = {a.name: pos[:, i] for i, a in enumerate(axes)}
    pipeline.update(stack, positions)

    class Batch:
        frames, monitor = stack, None

    Batch.positions = positions
    maps = pipeline.windowed_maps(pipeline.snapshot(), lambda: [Batch])
    offset = brute.edge_baseline(stack, pos, axes, 0.2)
    mask = np.isfinite(pipeline.snapshot()["com_mu"])
    ref = brute.windowed_moments(stack, pos, offset, 3.0, 2, mask, axes)
    for i, a in enumerate(axes):
        np.testing.assert_allclose(maps[f"com_{a.name}"], ref[f"mean{i}"], rtol=1e-6, atol=1e-9, equal_nan=True)
        np.testing.assert_allclose(maps[f"fwhm_{a.name}"], FWHM_PER_SIGMA * np.sqrt(ref[f"var{i}"]), rtol=1e-6,
                                   equal_nan=True)
    np.testing.assert_allclose(maps["cov_chi_ffz"], ref["cov12"], rtol=1e-6, atol=1e-8, equal_nan=True)  # near 0
    assert np.isfinite(maps["com_mu"]).sum() > 20


def test_live_snapshots_write_into_the_scans_buffers_and_equal_fresh_ones():
    """The daemon's live snapshots reuse one set of arrays per scan (maps.MapBuffers): the
    same memory from one snapshot to the next, the same values as a snapshot without it."""
    from dfxm_online.acquisition.geometry import ScanGeometry
    from dfxm_online.acquisition.model import CrystalModel, scan_positions
    from dfxm_online.online.maps import MapBuffers

    axes = (MotorAxis("mu", -0.4, 0.4, 9), MotorAxis("chi", -1.0, 1.0, 7))
    shape = (30, 26)
    model = CrystalModel.make(shape, axes, seed=1)
    positions = scan_positions(axes)
    rng = np.random.default_rng(1)
    frames = np.stack([model.frame(p, rng) for p in positions])
    pipeline = ScanPipeline(ScanGeometry(motors=axes, npoints=len(positions), detector="d", frame_shape=shape), shape,
                            AnalysisConfig())
    named = {"mu": positions[:, 0], "chi": positions[:, 1]}
    buffers = MapBuffers()
    half = len(positions) // 2
    pipeline.update(frames[:half], {k: v[:half] for k, v in named.items()})
    first = pipeline.snapshot(np.float32, 1, buffers)
    kept = {k: v.copy() for k, v in first.items()}
    pipeline.update(frames[half:], {k: v[half:] for k, v in named.items()})
    second = pipeline.snapshot(np.float32, 1, buffers)
    fresh = pipeline.snapshot(np.float32, 1)
    for name in ("com_mu", "fwhm_chi", "intensity", "background", "kam", "mosaicity"):
        assert np.shares_memory(first[name], second[name]), name  # the same buffer, overwritten
        np.testing.assert_array_equal(second[name], fresh[name], err_msg=name)
    assert not np.array_equal(kept["com_mu"], second["com_mu"], equal_nan=True)
    binned = pipeline.snapshot(np.float32, 2, buffers)  # another shape: new arrays
    assert binned["com_mu"].shape == (15, 13) and not np.shares_memory(binned["com_mu"], fresh["com_mu"])
