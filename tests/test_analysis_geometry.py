"""Strain, pixel size / sample axes and the optical gradient correction against darfix's
formulas (transcribed from darfix 7.0.2 `_processing/strain.py`, `magnification.py`,
`gradient_correction.py`) on the same arrays, and against Bragg's law."""

import numpy as np
import pytest

from dfxm_online.analysis import sample_axes, strain


def _com(seed=0, centre=10.5, spread=0.01, shape=(30, 40)):
    rng = np.random.default_rng(seed)
    com = centre + spread * rng.standard_normal(shape)
    com[0, :3] = np.nan
    return com


def test_strain_two_theta_is_darfix_obpitch_formula_and_bragg_law():
    com = _com(centre=20.2)
    ref = 20.19
    # darfix strain_obpitch_scan
    expected = -(np.deg2rad(com) - np.deg2rad(ref)) / (2 * np.tan(np.deg2rad(ref) / 2))
    np.testing.assert_allclose(strain.strain_two_theta(com, ref), expected, rtol=1e-12)
    # Bragg's law: d = λ / (2 sin θ); small strain -> -Δθ cot θ to first order
    d = 1 / np.sin(np.deg2rad(com) / 2)
    d0 = 1 / np.sin(np.deg2rad(ref) / 2)
    np.testing.assert_allclose(strain.strain_two_theta(com, ref), d / d0 - 1, rtol=5e-3, atol=1e-9)


def test_strain_monochromator_is_darfix_ccmth_formula_and_median_reference():
    com = _com(centre=8.3)
    ref = np.nanmedian(com)
    expected = (np.deg2rad(com) - np.deg2rad(ref)) / np.tan(np.deg2rad(ref))
    np.testing.assert_allclose(strain.strain_monochromator(com), expected, rtol=1e-12)
    out = strain.strain_maps({"ccmth": com, "mu": com, "obpitch": com + 12}, {"obpitch": 20.0})
    assert set(out) == {"ccmth", "obpitch"}
    assert out["ccmth"][1] == pytest.approx(ref) and out["obpitch"][1] == 20.0
    assert np.isnan(out["ccmth"][0][0, 0])


def _darfix_magnification(h, w, optical, obx, obpitch, mainx_neg, topo=None, center=True):
    pix_arr = list(np.meshgrid(np.arange(h), np.arange(w)))
    m = mainx_neg / obx - 1
    s = abs(optical / m)
    if center:
        pix_arr[0] = (pix_arr[0] - h / 2) * s
        pix_arr[1] = (w / 2 - pix_arr[1]) * s
    else:
        pix_arr[0] = pix_arr[0] * s
        pix_arr[1] = (w - 1 - pix_arr[1]) * s
    if topo is not None:
        pix_arr[topo] /= abs(np.sin(np.radians(obpitch)))
    return pix_arr[0], pix_arr[1]


@pytest.mark.parametrize("topo", [None, 0, 1])
@pytest.mark.parametrize("center", [True, False])
def test_sample_axes_equal_darfix_magnification_grids(topo, center):
    n, optical, obx, mainx, obpitch = 64, 3.25, 270.0, -4800.0, 20.5  # mainx recorded negative
    px = sample_axes.sample_pixel_size(optical, mainx, obx)
    assert px == pytest.approx(optical / (4800.0 / 270.0 - 1))
    axes = sample_axes.sample_axes((n, n), px, centre=center, topography_orientation=topo, obpitch=obpitch)
    x, y = _darfix_magnification(n, n, optical, obx, obpitch, -mainx, topo, center)
    # darfix's x varies along the columns, its y along the rows (square frame)
    np.testing.assert_allclose(np.broadcast_to(axes.x[None, :], (n, n)), x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.broadcast_to(axes.y[:, None], (n, n)), y, rtol=1e-12, atol=1e-12)
    assert axes.pixel_x == pytest.approx(abs(x[0, 1] - x[0, 0]))
    assert axes.pixel_y == pytest.approx(abs(y[1, 0] - y[0, 0]))


def test_detector_presets():
    assert sample_axes.optical_pixel_size("PCO_EDGE_2X") == 3.25
    assert sample_axes.optical_pixel_size("pco_edge_10x") == 0.65
    assert sample_axes.optical_pixel_size("Basler") == 51.0
    assert sample_axes.optical_pixel_size(1.5) == 1.5
    with pytest.raises(ValueError, match="known"):
        sample_axes.optical_pixel_size("frelon")


def test_chi_gradient_correction_is_darfix_formula():
    com = _com(centre=0.3, shape=(20, 33))
    obpitch, obx_m, pixel_m = 20.4, 0.27, 0.2e-6
    # darfix chi_com_correction
    y_s = (np.arange(33) - 16.0)[None, :] * pixel_m
    xi = np.cos(np.deg2rad(obpitch)) / obx_m
    expected = com - np.rad2deg(xi * y_s / (2 * np.sin(np.deg2rad(obpitch) / 2)))
    np.testing.assert_allclose(sample_axes.chi_gradient_correction(com, obpitch, obx_m, pixel_m), expected, rtol=1e-13)
    # a pure optical gradient is removed: the corrected map is flat
    gradient = np.broadcast_to(np.rad2deg(xi * y_s / (2 * np.sin(np.deg2rad(obpitch) / 2))), (20, 33))
    flat = sample_axes.chi_gradient_correction(gradient, obpitch, obx_m, pixel_m)
    np.testing.assert_allclose(flat, 0.0, atol=1e-15)


def test_two_theta_gradient_correction_is_darfix_formula():
    com = _com(centre=20.4, shape=(25, 12))
    ffz_m, mainx_m, obx_m, pixel_m = 1.7, 4.8, 0.27, 0.2e-6
    tt0 = np.arctan(ffz_m / mainx_m)
    z_s = (np.arange(25) - 12.0)[:, None] * pixel_m * np.sin(tt0)
    expected = np.rad2deg(np.deg2rad(com) + np.cos(tt0) / obx_m * z_s)
    for mainx in (mainx_m, -mainx_m):  # recorded sign does not matter (see module)
        got = sample_axes.two_theta_gradient_correction(com, ffz_m, mainx, obx_m, pixel_m)
        np.testing.assert_allclose(got, expected, rtol=1e-13)
