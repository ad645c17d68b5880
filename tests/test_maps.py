"""Named maps of a moment snapshot (the compiled pass of maps.moment_maps) against a per-pixel loop."""

from __future__ import annotations

import numpy as np
import pytest

from dfxm_online.gaussian import FWHM_PER_SIGMA
from dfxm_online.online import maps as maps_module
from dfxm_online.online.accumulators.moments import MomentSnapshot
from dfxm_online.online.maps import moment_maps, signal_mask

SHAPE = (7, 9)
NAMES = ("mu", "chi", "omega")


def snapshot(n_motors: int, seed: int) -> MomentSnapshot:
    """Random moments with the awkward cases: no signal, weak signal, NaN intensity,
    variances 0, negative, NaN, inf and tiny, NaN third / fourth moments."""
    rng = np.random.default_rng(seed)
    p = SHAPE[0] * SHAPE[1]
    intensity = rng.uniform(0.0, 100.0, p)
    intensity[:4] = [0.0, -3.0, np.nan, 1.0]  # 1.0: below 5 % of the reference level
    intensity[4:30] = rng.uniform(50.0, 100.0, 26)  # signal where the variances are awkward
    mean = rng.normal(size=(n_motors, p))
    cov = rng.normal(size=(n_motors, n_motors, p)) * 0.1
    cov = (cov + cov.transpose(1, 0, 2)) / 2
    m3 = rng.normal(size=(n_motors, p))
    m4 = rng.uniform(0.0, 5.0, (n_motors, p))
    for a in range(n_motors):
        var = rng.uniform(0.01, 2.0, p)
        var[4 + 6 * a : 10 + 6 * a] = [0.0, -0.5, np.nan, np.inf, 1e-300, 1e-200]
        cov[a, a] = var
        m3[a, 20 + a] = np.nan
        m4[a, 21 + a] = np.nan
    return MomentSnapshot(intensity=intensity, mean=mean, cov=cov, m3=m3, m4=m4)


def brute_maps(snap: MomentSnapshot, names, min_fraction: float = 0.05) -> dict:
    """The definitions pixel by pixel (numpy float64 scalars: IEEE division by zero)."""
    valid = signal_mask(snap.intensity, min_fraction)
    out = {"intensity": snap.intensity.reshape(SHAPE)}
    m, p = len(names), snap.intensity.size
    nan = np.float64(np.nan)
    for a, name in enumerate(names):
        com, fwhm, skew, kurt = (np.full(p, np.nan) for _ in range(4))
        for i in range(p):
            var = np.float64(snap.cov[a, a, i])
            if not valid[i]:
                continue
            com[i] = snap.mean[a, i]
            if var > 0:
                fwhm[i] = FWHM_PER_SIGMA * np.sqrt(var)
                skew[i] = snap.m3[a, i] / (var * np.sqrt(var))
                kurt[i] = snap.m4[a, i] / (var * var) - 3.0
            else:
                fwhm[i] = skew[i] = kurt[i] = nan
        for kind, values in zip(("com", "fwhm", "skewness", "kurtosis"), (com, fwhm, skew, kurt)):
            out[f"{kind}_{name}"] = values.reshape(SHAPE)
    for a in range(m):
        for b in range(a + 1, m):
            out[f"cov_{names[a]}_{names[b]}"] = np.where(valid, snap.cov[a, b], np.nan).reshape(SHAPE)
    return out


def assert_same_maps(ours: dict, ref: dict) -> None:
    assert list(ours) == list(ref)  # names and order are a contract
    for name in ref:
        assert ours[name].shape == SHAPE and ours[name].dtype == np.float64, name
        np.testing.assert_array_equal(np.isnan(ours[name]), np.isnan(ref[name]), err_msg=name)
        np.testing.assert_allclose(ours[name], ref[name], rtol=1e-14, atol=0, err_msg=name)


@pytest.mark.parametrize("n_motors", [1, 2, 3])
def test_moment_maps_equal_per_pixel_definitions(n_motors):
    snap = snapshot(n_motors, seed=n_motors)
    intensity = snap.intensity.copy()
    names = NAMES[:n_motors]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ref = brute_maps(snap, names)
    ours = moment_maps(snap, names, SHAPE)
    assert_same_maps(ours, ref)
    np.testing.assert_array_equal(snap.intensity, intensity)  # not partitioned in place
    com, fwhm, skew = (ours[f"{kind}_{names[0]}"].reshape(-1) for kind in ("com", "fwhm", "skewness"))
    assert np.isnan(com[:4]).all() and np.isfinite(com[4:30]).all()
    assert np.isnan(fwhm[:7]).all() and np.isinf(fwhm[7]) and np.isfinite(fwhm[8:30]).all()
    assert np.isinf(skew[8]) and np.isnan(skew[20])  # var 1e-300: var^1.5 is 0; m3 NaN


def test_moment_maps_on_many_tiles_and_converted_inputs(monkeypatch):
    """Tiles of 5 pixels over the threads give the one-pass result bit for bit; float32 and
    strided snapshot arrays are read as float64."""
    snap = snapshot(2, seed=7)
    one_pass = moment_maps(snap, NAMES[:2], SHAPE)
    monkeypatch.setattr(maps_module, "SNAPSHOT_PIXELS", 5)
    tiled = moment_maps(snap, NAMES[:2], SHAPE)
    for name in one_pass:
        np.testing.assert_array_equal(tiled[name], one_pass[name])
    odd = MomentSnapshot(
        intensity=snap.intensity,
        mean=snap.mean.astype(np.float32),
        cov=np.asfortranarray(snap.cov),
        m3=snap.m3[:, ::-1][:, ::-1],
        m4=snap.m4,
    )
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ref = brute_maps(odd, NAMES[:2])
    assert_same_maps(moment_maps(odd, NAMES[:2], SHAPE), ref)
    # the first motors of a larger snapshot
    assert_same_maps(moment_maps(snapshot(3, seed=2), NAMES[:2], SHAPE), brute_maps(
        snapshot(3, seed=2), NAMES[:2]))


def test_moment_maps_without_motors_and_with_a_stricter_mask():
    snap = snapshot(1, seed=5)
    assert list(moment_maps(snap, (), SHAPE)) == ["intensity"]
    strict = moment_maps(snap, ("mu",), SHAPE, min_intensity_fraction=0.5)
    keep = signal_mask(snap.intensity, 0.5).reshape(SHAPE)
    assert 0 < keep.sum() < keep.size
    np.testing.assert_array_equal(np.isfinite(strict["com_mu"]), keep)


@pytest.mark.parametrize("n_motors", [1, 2, 3])
def test_maps_of_sums_range_by_range_equal_maps_of_the_whole_snapshot(n_motors, monkeypatch):
    # moment_maps_of_sums goes from each pixel's sums to its maps (no full-size snapshot):
    # bit-identical to the maps of the whole snapshot, over several pixel ranges on the
    # tile threads and a last partial one, with and without an offset, pixels without
    # signal included
    from dfxm_online.acquisition.geometry import MotorAxis
    from dfxm_online.online import maps
    from dfxm_online.online.accumulators.moments import PowerSums
    from dfxm_online.online.maps import moment_maps_of_sums

    monkeypatch.setattr(maps, "SNAPSHOT_PIXELS", 32768)
    shape = (190, 401)  # > 2 ranges, not a multiple of one
    assert shape[0] * shape[1] > 2 * 32768 and (shape[0] * shape[1]) % 32768
    rng = np.random.default_rng(n_motors)
    axes = [MotorAxis(n, -1.0 - a, 1.0 + a, 5) for a, n in enumerate(NAMES[:n_motors])]
    ps = PowerSums(axes, shape[0] * shape[1])
    for _ in range(4):
        frames = rng.poisson(20.0, size=(6, *shape)).astype(np.uint16)
        frames[:, :3] = 0  # rows without signal: NaN maps
        ps.update(frames, {ax.name: rng.uniform(ax.start, ax.stop, 6) for ax in axes})
    offset = rng.uniform(0.0, 2.0, shape[0] * shape[1])
    names = NAMES[:n_motors]
    for off in (None, offset):
        with np.errstate(divide="ignore", invalid="ignore"):
            whole = moment_maps(ps.snapshot(off), names, shape)
            tiled = moment_maps_of_sums(ps, off, names, shape)
        assert list(tiled) == list(whole)
        for name in whole:
            np.testing.assert_array_equal(tiled[name], whole[name], err_msg=name)
        assert np.isnan(tiled[f"com_{names[0]}"][:3]).all() and np.isfinite(tiled[f"com_{names[0]}"][10:]).all()


def test_snapshot_of_a_pixel_range_is_that_range_of_the_whole():
    from dfxm_online.acquisition.geometry import MotorAxis
    from dfxm_online.online.accumulators.moments import PowerSums
    from dfxm_online.online.kernels.pixelmaps import central_moments

    rng = np.random.default_rng(7)
    axes = [MotorAxis("mu", -1, 1, 5), MotorAxis("chi", -2, 2, 7)]
    ps = PowerSums(axes, 1000)
    ps.update(rng.uniform(1, 50, (12, 1000)), {"mu": rng.uniform(-1, 1, 12), "chi": rng.uniform(-2, 2, 12)})
    offset = rng.uniform(0, 1, 1000)
    whole, part = ps.snapshot(offset), ps.snapshot(offset, 333, 777)
    np.testing.assert_array_equal(part.intensity, whole.intensity[333:777])
    np.testing.assert_array_equal(ps.intensity(offset), whole.intensity)
    for name in ("mean", "cov", "m3", "m4"):
        np.testing.assert_array_equal(getattr(part, name), getattr(whole, name)[..., 333:777])
    assert ps.snapshot(offset, 5, 5).intensity.shape == (0,)
    with pytest.raises(ValueError, match="pixel range"):
        ps.snapshot(offset, 10, 1001)
    # the compiled pass takes outputs of all pixels or of the range, nothing else
    m = np.empty((2, 50))
    with pytest.raises(ValueError, match="inconsistent shapes"):
        central_moments(ps.sums, ps.weights, offset, np.zeros(11), np.zeros(2), np.ones(2),
                        np.empty(50), m, np.empty((2, 2, 50)), m, m, 0, 40)
