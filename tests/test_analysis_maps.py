"""Masks, sub-domain clustering and the orientation distribution against direct
implementations (scipy/scikit-image/scikit-learn steps written out, brute-force sums)."""

import numpy as np
import pytest
from scipy import ndimage
from skimage.morphology import dilation, disk, erosion
from sklearn.cluster import MiniBatchKMeans
from sklearn.preprocessing import StandardScaler

from dfxm_online.acquisition.geometry import MotorAxis
from dfxm_online.analysis import domains, masks
from dfxm_online.analysis import orientation_distribution as od
from dfxm_online.online.orientation import mosaicity_rgb


def _spots(shape=(80, 90)):
    """Two bright grains (one with a hole), one faint grain, a small speck, noise."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[: shape[0], : shape[1]]
    img = 2.0 * rng.random(shape)
    big = ((y - 25) ** 2 + (x - 25) ** 2) < 15**2
    hole = ((y - 25) ** 2 + (x - 25) ** 2) < 3**2
    img[big & ~hole] += 100.0
    img[((y - 60) / 10.0) ** 2 + ((x - 65) / 14.0) ** 2 < 1] += 100.0
    faint = np.exp(-(((y - 20) ** 2 + (x - 70) ** 2) / (2 * 4.0**2)))
    img += 20.0 * faint
    img[70:72, 10:12] += 100.0  # 4-pixel speck
    return img, big, faint


def test_recon3d_mask_follows_the_manual_steps():
    img, big, _ = _spots()
    got = masks.recon3d_mask(img, threshold=10.0, min_area=100)
    # the manual's getdata.py, step by step
    b = ndimage.binary_fill_holes(img > 10.0)
    c = ndimage.binary_fill_holes(erosion(dilation(b, disk(1)), disk(1)))
    lab, n = ndimage.label(c, structure=np.ones((3, 3)))
    areas = ndimage.sum(np.ones_like(img), lab, index=np.arange(1, n + 1))
    expected = np.isin(lab, 1 + np.flatnonzero(areas >= 100))
    np.testing.assert_array_equal(got, expected)
    assert got[25, 25]  # the hole is filled
    assert not got[70:72, 10:12].any()  # the speck is below the minimum area
    assert got[big].all()


def test_double_threshold_segments_each_grain_at_its_own_peak():
    img, big, faint = _spots()
    got = masks.double_threshold_mask(img, threshold=8.0, tolerance=0.5, box_min=3)
    # brute force: each region's component above half its maximum, connected to the maximum
    lab, n = ndimage.label(img > 8.0, structure=np.ones((3, 3)))
    expected = np.zeros(img.shape, bool)
    for r in range(1, n + 1):
        region = lab == r
        peak = np.unravel_index(np.argmax(np.where(region, img, -np.inf)), img.shape)
        comp, _ = ndimage.label(img >= 0.5 * img[peak], structure=np.ones((3, 3)))
        c = comp == comp[peak]
        rows, cols = np.flatnonzero(c.any(1)), np.flatnonzero(c.any(0))
        if np.ptp(rows) + 1 >= 3 and np.ptp(cols) + 1 >= 3:
            expected |= c
    np.testing.assert_array_equal(got, expected)
    # the faint grain is kept at half its own peak: a disc of radius 4·sqrt(2 ln 2)
    r = 4.0 * np.sqrt(2 * np.log(2))
    assert abs(int((got & (faint > 0.01)).sum()) - np.pi * r**2) < 0.25 * np.pi * r**2
    assert got[big].mean() > 0.95


def test_double_threshold_box_limits():
    img, _, _ = _spots()
    boxed = masks.double_threshold_mask(img, threshold=8.0, tolerance=0.5, box_max=5)
    rows, cols = np.flatnonzero(boxed.any(1)), np.flatnonzero(boxed.any(0))
    lab, n = ndimage.label(boxed, structure=np.ones((3, 3)))
    for sl in ndimage.find_objects(lab):
        assert all(s.stop - s.start <= 11 for s in sl)
    assert rows.size and cols.size
    assert not masks.double_threshold_mask(img, threshold=8.0, box_min=40).any()


def _domain_maps(seed=0):
    rng = np.random.default_rng(seed)
    truth = np.zeros((40, 50), int)
    truth[:, 20:] = 1
    truth[25:, 35:] = 2
    centres = np.array([[0.0, 0.0], [0.02, 0.3], [-0.02, 0.5]])
    a = centres[truth, 0] + 0.002 * rng.standard_normal(truth.shape)
    b = centres[truth, 1] + 0.02 * rng.standard_normal(truth.shape)
    a[:3, :3] = np.nan
    return a, b, truth


def test_domains_equal_scikit_learn_and_find_the_truth():
    a, b, truth = _domain_maps()
    got = domains.cluster_domains(a, b, 3, random_state=0)
    valid = np.isfinite(a) & np.isfinite(b)
    feats = StandardScaler().fit_transform(np.column_stack([a[valid], b[valid]]))
    ref = MiniBatchKMeans(3, n_init=20, random_state=0).fit_predict(feats)
    np.testing.assert_array_equal(got.labels[valid], ref)
    assert (got.labels[~valid] == -1).all() and (got.rgb[~valid] == 0).all()
    # each true domain is one cluster
    for t in range(3):
        assert np.unique(got.labels[valid & (truth == t)]).size == 1
    np.testing.assert_array_equal(got.sizes, np.bincount(ref, minlength=3))
    for j in range(3):
        members = got.labels == j
        np.testing.assert_allclose(got.centres[j], [a[members].mean(), b[members].mean()])


def test_domain_colours_are_the_mosaicity_key_at_the_domain_mean():
    a, b, _ = _domain_maps()
    got = domains.cluster_domains(a, b, 3)
    _, _, extent = mosaicity_rgb(a, b)
    centre = ((extent[0] + extent[1]) / 2, (extent[2] + extent[3]) / 2)
    scale = ((extent[1] - extent[0]) / 2, (extent[3] - extent[2]) / 2)
    for j in range(3):
        rgb, _, _ = mosaicity_rgb(np.array([[got.centres[j, 0]]]), np.array([[got.centres[j, 1]]]), centre, scale)
        np.testing.assert_allclose(got.colours[j], rgb[0, 0])
        np.testing.assert_array_equal(got.rgb[got.labels == j], np.broadcast_to(got.colours[j], ((got.labels == j).sum(), 3)))


def test_domains_mask_and_errors():
    a, b, _ = _domain_maps()
    mask = np.zeros(a.shape, bool)
    mask[:, :25] = True
    got = domains.cluster_domains(a, b, 2, mask=mask)
    assert (got.labels[~mask] == -1).all()
    with pytest.raises(ValueError, match="cannot make"):
        domains.cluster_domains(a[:1, :3], b[:1, :3], 3)


def test_orientation_distribution_is_the_brute_force_sum_per_grid_point():
    rng = np.random.default_rng(1)
    mu, chi = MotorAxis("mu", -0.1, 0.1, 11), MotorAxis("chi", 1.0, 2.0, 6)
    grid_mu, grid_chi = np.meshgrid(np.linspace(-0.1, 0.1, 11), np.linspace(1.0, 2.0, 6), indexing="ij")
    pos = {"mu": grid_mu.ravel() + 0.003 * rng.standard_normal(66), "chi": grid_chi.ravel()}
    frames = rng.random((66, 8, 9))
    totals = od.frame_totals(frames)
    np.testing.assert_allclose(totals, frames.sum(axis=(1, 2)))
    dist = od.orientation_distribution(totals, pos, [mu, chi])
    np.testing.assert_allclose(dist.intensity, totals.reshape(11, 6))
    assert (dist.frames == 1).all()
    np.testing.assert_allclose(dist.axes["mu"], np.linspace(-0.1, 0.1, 11))
    # a repeated point adds up; a point outside the grid is not counted
    pos2 = {k: np.concatenate([v, v[:1], [99.0]]) for k, v in pos.items()}
    dist2 = od.orientation_distribution(np.concatenate([totals, totals[:1], [5.0]]), pos2, [mu, chi])
    assert dist2.intensity[0, 0] == pytest.approx(2 * totals[0]) and dist2.frames[0, 0] == 2
    assert dist2.intensity.sum() == pytest.approx(totals.sum() + totals[0])
    mask = np.zeros((8, 9), bool)
    mask[2:5, 3:7] = True
    np.testing.assert_allclose(od.frame_totals(frames, mask), frames[:, 2:5, 3:7].sum(axis=(1, 2)))


def test_distribution_along_one_motor_from_sums_along_motor():
    from dfxm_online.online.accumulators.projections import SumsAlongMotor

    rng = np.random.default_rng(2)
    frames = rng.random((30, 5, 6))
    omega = np.repeat(np.arange(5.0), 6)
    acc = SumsAlongMotor(30, "omega", normalise=False)
    acc.update(frames, {"omega": omega})
    values, images = acc.snapshot()
    np.testing.assert_allclose(od.distribution_along(values, images), frames.reshape(5, 6, -1).sum(axis=(1, 2)))


def test_iso_contours_of_a_gaussian_are_its_ellipses():
    a = np.linspace(-1, 1, 81)
    b = np.linspace(-2, 2, 101)
    sa, sb = 0.2, 0.5
    dist = np.exp(-0.5 * (a[:, None] ** 2 / sa**2 + b[None, :] ** 2 / sb**2))
    out = od.iso_contours(dist, a, b, levels=(0.5,), smoothing=0.0)
    pts = out[np.isfinite(out[:, 0])]
    assert (pts[:, 0] == 0.5).all()
    # on the half-maximum ellipse: (a/sa)^2 + (b/sb)^2 = 2 ln 2
    r = (pts[:, 1] / sa) ** 2 + (pts[:, 2] / sb) ** 2
    np.testing.assert_allclose(r, 2 * np.log(2), rtol=0.02)
    several = od.iso_contours(dist, a, b)
    assert set(np.unique(several[np.isfinite(several[:, 0]), 0])) == set(od.DEFAULT_LEVELS)
    assert od.iso_contours(np.zeros((5, 5)), a[:5], b[:5]).shape == (0, 3)
