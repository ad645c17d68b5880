"""Weak beam, z-sum and the RSM histogram against darfix's formulas on the same arrays
(darfix 7.0.2 `recover_weak_beam`, `z_sum_along_axis`, `calculate_RSM_histogram`,
transcribed below) and brute-force numpy."""

import numpy as np
import pytest

from dfxm_online.acquisition.geometry import MotorAxis
from dfxm_online.analysis import rsm, weak_beam
from dfxm_online.online.accumulators.projections import SumsAlongMotor


def _mesh(seed=0):
    rng = np.random.default_rng(seed)
    mu = np.linspace(-0.1, 0.1, 9)
    chi = np.linspace(-0.5, 0.5, 7)
    gm, gc = np.meshgrid(mu, chi)  # chi slow, mu fast
    pos = {"mu": gm.ravel(), "chi": gc.ravel()}
    peak_mu = 0.03 * rng.standard_normal((12, 10))
    frames = np.stack([
        50 * np.exp(-0.5 * ((m - peak_mu) / 0.03) ** 2 - 0.5 * (c / 0.2) ** 2) + rng.poisson(3, (12, 10))
        for m, c in zip(pos["mu"], pos["chi"])
    ])
    axes = [MotorAxis("mu", -0.1, 0.1, 9), MotorAxis("chi", -0.5, 0.5, 7)]
    return frames, pos, axes


def test_weak_beam_frames_are_darfix_threshold_removal():
    frames, _, _ = _mesh()
    n = 1.5
    expected = frames.astype(float).copy()
    std = np.std(expected, axis=0)
    expected[expected > n * std] = 0  # darfix threshold_removal(top=n * std)
    np.testing.assert_array_equal(weak_beam.weak_beam_frames(frames, n), expected)


def test_weak_beam_com_is_the_brute_force_com_of_the_kept_values():
    frames, pos, axes = _mesh()
    kept = weak_beam.weak_beam_frames(frames, 1.5)
    # streamed in batches of 10 frames, in two passes
    def batches():
        return ((np.arange(i, min(i + 10, len(frames))), frames[i : i + 10]) for i in range(0, len(frames), 10))

    np.testing.assert_allclose(weak_beam.pixel_std(batches()), frames.std(axis=0), rtol=1e-12)
    maps = weak_beam.weak_beam_maps(batches, pos, axes, 1.5, min_intensity_fraction=0.0)
    total = kept.sum(axis=0)
    for name in ("mu", "chi"):
        com = np.tensordot(pos[name], kept, axes=1) / total
        valid = np.isfinite(maps[f"com_{name}"])
        assert valid.mean() > 0.9
        np.testing.assert_allclose(maps[f"com_{name}"][valid], com[valid], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(maps["intensity"], total, rtol=1e-9)


def test_zsum_is_darfix_sum_over_the_other_axes():
    frames, pos, _ = _mesh()
    data = frames.reshape(7, 9, 12, 10)  # darfix's reshaped stack: (chi, mu, H, W)
    values, images = weak_beam.zsum_along(frames, pos["chi"])
    np.testing.assert_allclose(values, np.linspace(-0.5, 0.5, 7), atol=1e-6)  # rounded to 1e-6
    np.testing.assert_allclose(images, data.sum(axis=1), rtol=1e-12)  # darfix axis_to_keep = chi
    values, images = weak_beam.zsum_along(frames, pos["mu"])
    np.testing.assert_allclose(images, data.sum(axis=0), rtol=1e-12)
    acc = SumsAlongMotor(120, "mu", normalise=True)  # the accumulator's own normalisation off
    acc.update(frames, pos)
    v2, i2 = weak_beam.zsum_of_accumulator(acc, (12, 10))
    np.testing.assert_allclose(v2, values)
    np.testing.assert_allclose(i2, images, rtol=1e-12)


def _darfix_rsm(data, diffry_values, twotheta, eta, Q, a, map_range, units, map_shape, n, E):
    """darfix 7.0.2 calculate_RSM_histogram (tqdm removed)."""
    k = 2 * np.pi / (12.391 / E)
    diffry_center = np.mean(diffry_values)
    img_shape = data[0].shape
    if units == "gorfman":
        sampl_z = np.array(Q) / np.linalg.norm(np.array(Q))
        sampl_x = n - sampl_z * np.dot(sampl_z, n) / np.linalg.norm(n)
        sampl_x /= np.linalg.norm(sampl_x)
        sampl_y = np.cross(sampl_z, sampl_x)
        lab_to_lat = np.stack((sampl_x, sampl_y, sampl_z))
    else:
        lab_to_lat = np.identity(3)
    k0 = np.array([k, 0, 0])
    twotheta = np.radians(twotheta)
    eta = np.radians(eta)
    kh = k * np.stack([np.cos(twotheta), np.sin(twotheta) * np.sin(eta), np.sin(twotheta) * np.cos(eta)])
    q = kh - k0[:, np.newaxis, np.newaxis]
    if units == "gorfman":
        q = q * a / 2 / np.pi
    else:
        q = q * a / 2 / np.pi / np.linalg.norm(Q)
    q = q.reshape(3, img_shape[0] * img_shape[1])
    theta_ref = np.arcsin(2 * np.pi * np.linalg.norm(Q) / a / k / 2)
    q = np.stack([q[0] * np.cos(theta_ref) + q[2] * np.sin(theta_ref), q[1], q[2] * np.cos(theta_ref) - q[0] * np.sin(theta_ref)])
    q_mean = np.mean(q, axis=1)
    dm = np.radians(np.mean(diffry_values) - diffry_center)
    q_mean = np.stack([q_mean[0] * np.cos(dm) - q_mean[2] * np.sin(dm), q_mean[1], q_mean[2] * np.cos(dm) + q_mean[0] * np.sin(dm)])
    if units == "gorfman":
        q_mean = lab_to_lat.transpose() @ q_mean
    ranges = tuple((c - map_range, c + map_range) for c in q_mean)
    sum_inte = np.zeros(map_shape)
    sum_freq = np.zeros(map_shape)
    for i, image in enumerate(data):
        d = np.radians(diffry_values[i] - diffry_center)
        q_rot = np.stack([q[0] * np.cos(d) - q[2] * np.sin(d), q[1], q[2] * np.cos(d) + q[0] * np.sin(d)])
        q_rot = lab_to_lat.transpose() @ q_rot
        sum_inte += np.histogramdd(q_rot.transpose(), map_shape, ranges, weights=image.flatten())[0]
        sum_freq += np.histogramdd(q_rot.transpose(), map_shape, ranges)[0]
    edges = np.histogramdd(q_rot.transpose(), map_shape, ranges)[1]
    sum_freq[sum_freq == 0] = np.nan
    arr = sum_inte / sum_freq
    if units == "poulsen":
        edges[2] = edges[2] - 1
    return arr, edges


def _darfix_pixel_angles(h, w, d, ffz, mainx_neg, rotate=False):
    """darfix compute_rsm (called by darfix with -mainx)."""
    if rotate:
        y = (np.arange(h) - h / 2) * d
        z = ffz - (w / 2 - np.arange(w)) * d
        y, z = np.meshgrid(y, z, indexing="ij")
    else:
        y = (np.arange(w) - w / 2) * d
        z = ffz - (h / 2 - np.arange(h)) * d
        z, y = np.meshgrid(z, y, indexing="ij")
    return np.degrees(np.arctan2(y, z)), np.degrees(np.arctan2(np.sqrt(y * y + z * z), mainx_neg))


@pytest.mark.parametrize("units", ["poulsen", "gorfman"])
def test_rsm_histogram_equals_darfix(units):
    rng = np.random.default_rng(3)
    h, w, nf = 24, 30, 15
    d, ffz, mainx = 0.00375 * 4, 30.0, -250.0  # mm; mainx recorded negative
    eta, tth = rsm.pixel_angles((h, w), d, ffz, mainx)
    eta_ref, tth_ref = _darfix_pixel_angles(h, w, d, ffz, -mainx)
    np.testing.assert_allclose(eta, eta_ref, rtol=1e-13)
    np.testing.assert_allclose(tth, tth_ref, rtol=1e-13)
    diffry = 10.0 + np.linspace(-0.05, 0.05, nf)
    frames = rng.random((nf, h, w)) * 100
    Q, a, E = (1.0, 1.0, 1.0), 4.05, 17.0
    normal = np.array([0.0, 0.0, 1.0])  # unit: darfix's orthogonalisation is ours
    ref, ref_edges = _darfix_rsm(frames, diffry, tth, eta, Q, a, 0.002, units, (8, 9, 10), normal, E)
    batches = [(diffry[i : i + 4], frames[i : i + 4]) for i in range(0, nf, 4)]
    got = rsm.rsm_histogram(batches, diffry.mean(), tth, eta, Q, a, 0.002, units, (8, 9, 10), normal, E)
    assert np.isfinite(ref).sum() > 20
    np.testing.assert_array_equal(np.isnan(got.intensity), np.isnan(ref))
    np.testing.assert_allclose(got.intensity[np.isfinite(ref)], ref[np.isfinite(ref)], rtol=1e-9)
    for e, r in zip(got.edges, ref_edges):
        np.testing.assert_allclose(e, r, rtol=1e-12, atol=1e-12)


def test_rotated_pixel_angles_equal_darfix():
    eta, tth = rsm.pixel_angles((10, 14), 0.05, 20.0, 300.0, rotate=True)
    e2, t2 = _darfix_pixel_angles(10, 14, 0.05, 20.0, 300.0, rotate=True)
    np.testing.assert_allclose(eta, e2)
    np.testing.assert_allclose(tth, t2)
