"""Mosaicity colouring against its stated convention and its key; KAM against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dfxm_online.online.orientation import kam, mosaicity_rgb, orientation_gradient

RED = (1.0, 0.0, 0.0)
YELLOW_GREEN = (0.5, 1.0, 0.0)  # hue 0.25
CYAN = (0.0, 1.0, 1.0)  # hue 0.5
VIOLET = (0.5, 0.0, 1.0)  # hue 0.75
WHITE = (1.0, 1.0, 1.0)
BLACK = (0.0, 0.0, 0.0)

# Rounding of a colour channel in [0, 1] to float32 (half an ulp below 1), plus the 1e-15 of
# the float64 closed form against matplotlib.
FLOAT32_ROUNDING = 2.0**-25 + 1e-15

# Per channel, the key colour is Lipschitz in the normalised (u, v) plane with this constant:
# 1 - s * g(hue), |dg/dhue| <= 6 per turn -> radial slope <= 1, tangential <= 6 / (2 pi).
KEY_LIPSCHITZ = np.hypot(1.0, 3.0 / np.pi)


def colours(points, **kwargs) -> np.ndarray:
    """mosaicity_rgb of a 1 x N map of (a, b) points, centred on 0 with unit scale."""
    pts = np.asarray(points, dtype=float)
    kwargs = {"centre": (0.0, 0.0), "scale": 1.0, **kwargs}
    rgb, _, _ = mosaicity_rgb(pts[None, :, 0], pts[None, :, 1], **kwargs)
    return rgb[0]


# --------------------------------------------------------------------------------------------
# mosaicity_rgb


def test_hue_convention_counter_clockwise_from_plus_a():
    got = colours([(1, 0), (0, 1), (-1, 0), (0, -1), (np.sqrt(0.5), np.sqrt(0.5))])
    np.testing.assert_allclose(got, [RED, YELLOW_GREEN, CYAN, VIOLET, (1, 0.75, 0)], atol=1e-6)


def test_zero_vector_is_white_and_nan_is_black():
    got = colours([(0, 0), (np.nan, 0.3), (0.3, np.nan), (np.nan, np.nan), (np.inf, 0)])
    np.testing.assert_array_equal(got, [WHITE, BLACK, BLACK, BLACK, BLACK])


def test_saturation_is_magnitude_clipped_at_one():
    got = colours([(0.5, 0), (0, -0.25), (1, 0), (3, 0), (2, 2), (np.sqrt(0.5), np.sqrt(0.5))])
    np.testing.assert_allclose(got[0], (1, 0.5, 0.5), atol=1e-6)  # s = 0.5, hue 0
    np.testing.assert_allclose(got[1], (0.875, 0.75, 1), atol=1e-6)  # s = 0.25, hue 0.75
    np.testing.assert_array_equal(got[3], got[2])  # beyond the key: same as the rim
    np.testing.assert_array_equal(got[4], got[5])


def test_each_axis_scaled_separately():
    got = colours([(2, 0), (0, 0.5), (1, 0.25)], scale=(2.0, 0.5))
    np.testing.assert_allclose(got[:2], [RED, YELLOW_GREEN], atol=1e-6)
    np.testing.assert_allclose(got[2], colours([(0.5, 0.5)])[0], atol=1e-6)


def test_centre_shifts_the_white_point():
    got = colours([(10, -3), (11, -3), (10, -2)], centre=(10.0, -3.0))
    np.testing.assert_allclose(got, [WHITE, RED, YELLOW_GREEN], atol=1e-6)


def test_default_centre_and_scale_are_robust_median_and_percentile():
    rng = np.random.default_rng(3)
    a = rng.normal(0.2, 0.01, (40, 50))
    b = rng.normal(-1.0, 0.3, (40, 50))
    a[0, :5] = 50.0  # outliers must not set the scale
    b[3, 3] = np.nan
    _, _, extent = mosaicity_rgb(a, b)
    fa, fb = a[np.isfinite(b)], b[np.isfinite(b)]
    ca, cb = np.median(fa), np.median(fb)  # over the pixels valid in both maps
    sa, sb = np.percentile(np.abs(fa - ca), 99), np.percentile(np.abs(fb - cb), 99)
    np.testing.assert_allclose(extent, (ca - sa, ca + sa, cb - sb, cb + sb), rtol=1e-12)
    assert sa < 0.05  # the 50.0 outliers are beyond the 99th percentile
    assert fa.size == a.size - 1


def test_default_scale_is_taken_about_the_given_centre():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(2, 30, 30))
    b[:, 0] = np.nan  # not counted in the statistics of either axis
    ok = np.isfinite(b)
    _, _, extent = mosaicity_rgb(a, b, centre=(1.0, -0.5))
    sa, sb = np.percentile(np.abs(a[ok] - 1.0), 99), np.percentile(np.abs(b[ok] + 0.5), 99)
    np.testing.assert_allclose(extent, (1 - sa, 1 + sa, -0.5 - sb, -0.5 + sb), rtol=1e-12)
    _, _, extent = mosaicity_rgb(a, b, scale=2.0)
    ca, cb = np.median(a[ok]), np.median(b[ok])
    np.testing.assert_allclose(extent, (ca - 2, ca + 2, cb - 2, cb + 2), rtol=1e-12)


def test_shapes_dtypes_and_range():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 17, 23))
    a[2, 2] = np.nan
    rgb, key, extent = mosaicity_rgb(a, b, key_size=31)
    assert rgb.shape == (17, 23, 3) and rgb.dtype == np.float32
    assert key.shape == (31, 31, 3) and key.dtype == np.float32
    assert len(extent) == 4 and extent[0] < extent[1] and extent[2] < extent[3]
    for img in (rgb, key):
        assert np.isfinite(img).all() and img.min() >= 0 and img.max() <= 1
    assert mosaicity_rgb(a, b)[1].shape == (128, 128, 3)


def test_all_nan_and_constant_maps():
    for scale in (None, 0.1):
        nan = np.full((4, 5), np.nan)
        rgb, key, extent = mosaicity_rgb(nan, nan, scale=scale)
        assert (rgb == 0).all() and np.isfinite(key).all() and np.isfinite(extent).all()
    # A constant axis carries no orientation: only the other axis colours the map.
    b = np.linspace(-1, 1, 20).reshape(4, 5)
    rgb, _, _ = mosaicity_rgb(np.full((4, 5), 7.0), b)
    assert np.isfinite(rgb).all()
    hue_side = np.sign(b - np.median(b))
    # hue 0.25 or 0.75 only: red = 1 - s / 2 with 1 - s the smallest channel.
    np.testing.assert_allclose(rgb[..., 0], 1 - 0.5 * (1 - rgb[..., 1:].min(axis=-1)), atol=1e-6)
    assert (rgb[hue_side > 0, 2] < rgb[hue_side > 0, 1]).all()  # +b side: green over blue
    assert (rgb[hue_side < 0, 2] > rgb[hue_side < 0, 1]).all()  # -b side: blue over green


def test_invalid_arguments():
    with pytest.raises(ValueError):
        mosaicity_rgb(np.zeros((3, 4)), np.zeros((4, 3)))
    with pytest.raises(ValueError):
        mosaicity_rgb(np.zeros((3, 4)), np.zeros((3, 4)), scale=0.0)


def test_compiled_pass_from_raw_maps_equals_matplotlib(monkeypatch):
    """Normalisation, black for non-finite input and float32 output all in the compiled pass,
    on many pixel tiles over the threads: the float64 reference rounded to float32."""
    from matplotlib.colors import hsv_to_rgb

    from dfxm_online.online import orientation

    rng = np.random.default_rng(21)
    a = rng.normal(3.0, 0.2, (37, 41))
    b = rng.normal(-1.0, 0.05, (37, 41))
    a[rng.random(a.shape) < 0.1] = np.nan
    b[rng.random(b.shape) < 0.05] = np.inf
    b[rng.random(b.shape) < 0.05] = -np.inf
    centre, scale = (3.1, -0.98), (0.25, 0.04)
    u, v = (a - centre[0]) / scale[0], (b - centre[1]) / scale[1]
    ok = np.isfinite(a) & np.isfinite(b)
    hue = np.mod(np.arctan2(v, u) / (2 * np.pi), 1.0)
    sat = np.minimum(np.hypot(u, v), 1.0)
    expected = hsv_to_rgb(np.stack([hue[ok], sat[ok], np.ones(ok.sum())], axis=-1))

    rgb, _, _ = mosaicity_rgb(a, b, centre=centre, scale=scale)
    assert rgb.dtype == np.float32 and rgb.shape == (37, 41, 3)
    np.testing.assert_allclose(rgb[ok], expected, rtol=0, atol=FLOAT32_ROUNDING)
    assert (rgb[~ok] == 0).all() and (~ok).sum() > 100
    monkeypatch.setattr(orientation, "COLOUR_PIXELS", 7)  # 217 ranges of 7 pixels
    np.testing.assert_array_equal(mosaicity_rgb(a, b, centre=centre, scale=scale)[0], rgb)


def test_float32_maps_are_coloured_as_their_float64_values():
    """The live snapshot's float32 COM maps are read as they are: colours, key and extent
    (default centre and scale included) are those of the same maps widened to float64."""
    rng = np.random.default_rng(22)
    a = rng.normal(3.0, 0.2, (300, 301)).astype(np.float32)
    b = rng.normal(-1.0, 0.05, (300, 301)).astype(np.float32)
    a[rng.random(a.shape) < 0.1] = np.nan
    b[rng.random(b.shape) < 0.05] = np.inf
    wide = mosaicity_rgb(a.astype(np.float64), b.astype(np.float64))
    narrow = mosaicity_rgb(a, b)
    np.testing.assert_array_equal(narrow[0], wide[0])
    np.testing.assert_array_equal(narrow[1], wide[1])
    assert narrow[2] == wide[2]
    assert (narrow[0][np.isfinite(a) & np.isfinite(b)] > 0).any(axis=-1).all()


def test_an_orientation_vector_that_overflows_is_on_the_rim():
    """(a - centre) / scale beyond the largest double: inf, coloured like any vector past
    the key, by its direction."""
    got = colours([(1e300, 0.0), (-1e300, 0.0), (3.0, 0.0)], scale=1e-10)
    np.testing.assert_allclose(got, [RED, CYAN, RED], atol=1e-6)


def test_compiled_colour_range_and_argument_checks():
    """The compiled pass writes only its pixel range, and checks its arguments as the C did."""
    from dfxm_online.online.kernels.orientation_maps import hsv_colour

    rng = np.random.default_rng(23)
    a, b = rng.normal(size=(2, 50))
    angle = np.arctan2(b[10:40], a[10:40])
    out = np.full((50, 3), -1.0, np.float32)
    hsv_colour(a, b, 0.0, 1.0, 0.0, 1.0, angle, out, 10, 40)
    assert (out[:10] == -1).all() and (out[40:] == -1).all()
    np.testing.assert_array_equal(out[10:40], colours(np.stack([a, b], axis=-1))[10:40])
    for bad, error in [
        ({"a": a.astype(np.float32)}, TypeError),  # mixed dtypes
        ({"a": a.astype(int), "b": b.astype(int)}, TypeError),
        ({"angle": angle.astype(np.float32)}, TypeError),
        ({"out": out.astype(np.float64)}, TypeError),
        ({"a": a[:49]}, ValueError),  # a, b (P,) and out (P, 3)
        ({"out": out[:, :2].copy()}, ValueError),
        ({"a": a[::-1]}, ValueError),  # not C-contiguous: not read in place
        ({"angle": angle[:29]}, ValueError),  # one angle per pixel of the range
        ({"stop": 51}, ValueError),
        ({"start": 41}, ValueError),
    ]:
        args = {"a": a, "b": b, "angle": angle, "out": out, "start": 10, "stop": 40, **bad}
        with pytest.raises(error):
            hsv_colour(args["a"], args["b"], 0.0, 1.0, 0.0, 1.0, args["angle"], args["out"],
                       args["start"], args["stop"])


@pytest.mark.parametrize("size", [(30, 41), (31, 41)])  # 1229 and 1270 valid pixels
def test_default_centre_and_scale_are_exactly_numpys(size):
    """The in-place partitions give numpy's median and percentile bit for bit."""
    rng = np.random.default_rng(size[0])
    a = rng.normal(0.2, 0.01, size)
    b = rng.standard_t(3, size)
    a[0, 0] = b[0, 0] = np.nan
    ok = np.isfinite(a) & np.isfinite(b)
    assert ok.sum() == size[0] * size[1] - 1
    ca, cb = np.median(a[ok]), np.median(b[ok])
    sa = np.percentile(np.abs(a[ok] - ca), 99)
    sb = np.percentile(np.abs(b[ok] - cb), 99)
    a_in, b_in = a.copy(), b.copy()
    _, _, extent = mosaicity_rgb(a, b)
    assert extent == (ca - sa, ca + sa, cb - sb, cb + sb)
    np.testing.assert_array_equal(a, a_in)  # the inputs are not partitioned in place
    np.testing.assert_array_equal(b, b_in)
    _, _, extent = mosaicity_rgb(a, b, scale=0.5)
    assert extent == (ca - 0.5, ca + 0.5, cb - 0.5, cb + 0.5)


def key_cell(a, b, extent, k):
    """Row (b) and column (a) of the key cell containing (a, b)."""
    amin, amax, bmin, bmax = extent
    j = np.floor((a - amin) / (amax - amin) * k).astype(int)
    i = np.floor((b - bmin) / (bmax - bmin) * k).astype(int)
    return i, j


def test_key_cell_centres_have_exactly_the_key_colour():
    k = 16
    centre, scale = (0.3, -2.0), (0.05, 0.7)
    grid = (2 * np.arange(k) + 1) / k - 1
    a = centre[0] + scale[0] * grid[None, :].repeat(k, 0)
    b = centre[1] + scale[1] * grid[:, None].repeat(k, 1)
    rgb, key, extent = mosaicity_rgb(a, b, centre=centre, scale=scale, key_size=k)
    i, j = key_cell(a, b, extent, k)
    np.testing.assert_array_equal(i, np.arange(k)[:, None].repeat(k, 1))
    np.testing.assert_array_equal(j, np.arange(k)[None, :].repeat(k, 0))
    np.testing.assert_allclose(rgb, key[i, j], atol=1e-6)
    # Drawn with origin="lower": right = +a (red), top = +b, left = -a (cyan), bottom = -b.
    assert np.argmax(key[k // 2, -1]) == 0 and np.argmin(key[k // 2, 0]) == 0
    assert np.argmax(key[-1, k // 2]) == 1 and np.argmax(key[0, k // 2]) == 2


def test_map_matches_key_on_random_data():
    rng = np.random.default_rng(7)
    k = 64
    a = rng.normal(10.0, 0.02, (60, 70))
    b = rng.normal(-4.0, 0.5, (60, 70)) + 0.01 * (a - 10.0)
    a[rng.random(a.shape) < 0.1] = np.nan
    rgb, key, extent = mosaicity_rgb(a, b, key_size=k)
    amin, amax, bmin, bmax = extent
    inside = (a >= amin) & (a < amax) & (b >= bmin) & (b < bmax)
    assert inside.sum() > 3000
    i, j = key_cell(a[inside], b[inside], extent, k)
    # Within one cell (half-diagonal sqrt(2)/k in normalised units) the colour moves at most:
    tol = KEY_LIPSCHITZ * np.sqrt(2) / k + 1e-6
    err = np.abs(rgb[inside] - key[i, j]).max()
    assert err <= tol
    # ... and the bound is tight enough to catch a key drawn the wrong way round.
    assert np.abs(rgb[inside] - key.transpose(1, 0, 2)[i, j]).max() > 10 * tol
    assert np.abs(rgb[inside] - key[::-1][i, j]).max() > 10 * tol
    assert np.abs(rgb[inside] - np.roll(key, 1, axis=1)[i, j]).max() > tol  # off by one cell
    # Outside the key: fully saturated (some channel at 0) and NaN pixels black.
    outside = np.isfinite(a) & ~inside
    assert outside.any()
    np.testing.assert_allclose(rgb[outside].min(axis=-1), 0, atol=1e-6)
    assert (rgb[np.isnan(a)] == 0).all()


# --------------------------------------------------------------------------------------------
# kam


def neighbourhood(radius: int, connectivity: str):
    for dy, dx in itertools.product(range(-radius, radius + 1), repeat=2):
        if (dy, dx) == (0, 0):
            continue
        if connectivity == "four" and abs(dy) + abs(dx) > radius:
            continue
        yield dy, dx


def brute_kam(maps, radius=1, connectivity="eight", max_distance=None):
    """Textbook double loop over pixels and neighbours, the pixel itself excluded."""
    stack = np.stack(maps)
    _, h, w = stack.shape
    out = np.full((h, w), np.nan)
    for y in range(h):
        for x in range(w):
            if not np.isfinite(stack[:, y, x]).all():
                continue
            dists = []
            for dy, dx in neighbourhood(radius, connectivity):
                qy, qx = y + dy, x + dx
                if not (0 <= qy < h and 0 <= qx < w) or not np.isfinite(stack[:, qy, qx]).all():
                    continue
                d = np.sqrt(np.sum((stack[:, y, x] - stack[:, qy, qx]) ** 2))
                if max_distance is None or d <= max_distance:
                    dists.append(d)
            if dists:
                out[y, x] = np.mean(dists)
    return out


@pytest.mark.parametrize("n_maps", [1, 2, 3])
@pytest.mark.parametrize("radius", [1, 2])
@pytest.mark.parametrize("connectivity", ["four", "eight"])
def test_kam_equals_brute_force(n_maps, radius, connectivity):
    rng = np.random.default_rng(n_maps * 10 + radius)
    maps = [rng.normal(size=(13, 11)) for _ in range(n_maps)]
    maps[0][rng.random((13, 11)) < 0.2] = np.nan
    maps[-1][4, :] = np.nan  # a masked row: neighbours across it still count for radius 2
    maps[-1][8:10, 2:4] = np.inf
    maps[0][0, 0] = 1.0
    maps[0][0, 1] = maps[0][1, 0] = maps[0][1, 1] = np.nan  # (0, 0) isolated for radius 1
    ours = kam(maps, radius=radius, connectivity=connectivity)
    ref = brute_kam(maps, radius, connectivity)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    assert np.isfinite(ref).sum() > 60 and np.isnan(ref).sum() > 10
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)


def test_kam_max_distance_equals_brute_force():
    rng = np.random.default_rng(5)
    maps = [rng.normal(size=(10, 12)), rng.normal(size=(10, 12))]
    maps[1][3, 3] = np.nan
    ours = kam(maps, max_distance=1.5)
    ref = brute_kam(maps, max_distance=1.5)
    assert np.isnan(ref).sum() > 1  # some pixels lost every neighbour to the threshold
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)


def test_kam_single_subgrain_boundary():
    h, w, edge = 9, 12, 5  # columns < 5: (0, 0); columns >= 5: (0.3, 0.4) -> distance 0.5
    mu = np.where(np.arange(w) < edge, 0.0, 0.3)[None, :].repeat(h, 0)
    chi = np.where(np.arange(w) < edge, 0.0, 0.4)[None, :].repeat(h, 0)
    got = kam([mu, chi])
    far = np.ones(w, dtype=bool)
    far[edge - 1 : edge + 1] = False
    np.testing.assert_array_equal(got[:, far], 0.0)
    # Next to the boundary: 3 of the 8 neighbours are across it; on the top/bottom rows 2 of 5.
    np.testing.assert_allclose(got[1:-1, edge - 1], 0.5 * 3 / 8, rtol=1e-14)
    np.testing.assert_allclose(got[1:-1, edge], 0.5 * 3 / 8, rtol=1e-14)
    np.testing.assert_allclose(got[[0, -1]][:, [edge - 1, edge]], 0.5 * 2 / 5, rtol=1e-14)
    # 4-connected: 1 of 4 neighbours across (1 of 3 on the top/bottom rows).
    four = kam([mu, chi], connectivity="four")
    np.testing.assert_allclose(four[1:-1, edge - 1 : edge + 1], 0.5 / 4, rtol=1e-14)
    np.testing.assert_allclose(four[[0, -1]][:, [edge - 1, edge]], 0.5 / 3, rtol=1e-14)
    # A threshold below the misorientation keeps the boundary out: KAM 0 everywhere.
    np.testing.assert_array_equal(kam([mu, chi], max_distance=0.4), 0.0)


def test_kam_constant_map_is_zero_and_nan_where_no_neighbour():
    mu = np.full((6, 7), 1.25)
    mu[2, 3] = np.nan
    mu[5, 0] = 2.0
    mu[4, 0] = mu[4, 1] = mu[5, 1] = np.nan  # (5, 0) has no valid neighbour
    got = kam([mu, np.full((6, 7), -0.5)])
    assert np.isnan(got[2, 3]) and np.isnan(got[5, 0])
    rest = np.isfinite(mu)
    rest[5, 0] = False
    np.testing.assert_array_equal(got[rest], 0.0)
    assert np.isnan(got).sum() == 5


def test_kam_excludes_the_pixel_itself():
    rng = np.random.default_rng(11)
    mu, chi = rng.normal(size=(2, 3, 3))
    dist = np.hypot(mu - mu[1, 1], chi - chi[1, 1])
    got = kam([mu, chi])
    assert got[1, 1] == pytest.approx(dist.sum() / 8, rel=1e-14)
    darfix_like = dist.sum() / 9  # self-neighbour at distance 0 included
    assert got[1, 1] == pytest.approx(darfix_like * 9 / 8, rel=1e-14)
    assert abs(got[1, 1] - darfix_like) > 0.01
    # Corner: 3 neighbours.
    corner = np.hypot(mu[:2, :2] - mu[0, 0], chi[:2, :2] - chi[0, 0]).sum() / 3
    assert got[0, 0] == pytest.approx(corner, rel=1e-14)


def test_kam_float32_input_and_invalid_arguments():
    rng = np.random.default_rng(2)
    maps = [rng.normal(size=(8, 9)).astype(np.float32) for _ in range(2)]
    got = kam(maps)
    assert got.dtype == np.float64 and got.shape == (8, 9)
    np.testing.assert_allclose(got, brute_kam([m.astype(np.float64) for m in maps]), atol=1e-12)
    with pytest.raises(ValueError):
        kam([])
    with pytest.raises(ValueError):
        kam(maps, radius=0)
    with pytest.raises(ValueError):
        kam(maps, connectivity="six")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        kam([np.zeros((3, 4)), np.zeros((4, 3))])


def test_kam_radius_larger_than_map():
    mu = np.array([[0.0, 1.0], [2.0, 4.0]])
    np.testing.assert_allclose(kam([mu], radius=5), brute_kam([mu], radius=5), atol=1e-12)
    assert np.isnan(kam([np.array([[1.0]])])).all()


def holey_maps(shape, n_maps, dtype, seed):
    """Random COM maps with NaN and inf holes (some pixels masked in one map only)."""
    rng = np.random.default_rng(seed)
    maps = [rng.normal(size=shape).astype(dtype) for _ in range(n_maps)]
    maps[0][rng.random(shape) < 0.15] = np.nan
    maps[-1][rng.random(shape) < 0.05] = np.inf
    return maps


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n_maps", [1, 2, 3, 4])
@pytest.mark.parametrize("radius", [1, 2])
@pytest.mark.parametrize("connectivity", ["four", "eight"])
def test_compiled_kam_equals_brute_force_on_all_shapes(dtype, n_maps, radius, connectivity):
    """The compiled rows pass against the per-pixel loop: both dtypes (float32 read as is),
    1-4 maps, maps narrower / shorter than the kernel, with and without max_distance."""
    for i, shape in enumerate([(1, 1), (1, 6), (5, 1), (2, 2), (3, 4), (4, 3), (9, 10)]):
        maps = holey_maps(shape, n_maps, dtype, seed=100 * n_maps + 10 * radius + i)
        wide = [m.astype(np.float64) for m in maps]  # float32 values widen exactly
        for max_distance in (None, 1.2):
            ours = kam(maps, radius=radius, connectivity=connectivity, max_distance=max_distance)
            ref = brute_kam(wide, radius, connectivity, max_distance)
            assert ours.dtype == np.float64 and ours.shape == shape
            np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
            np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)


def test_kam_row_tiles_on_threads_equal_one_pass(monkeypatch):
    """Rows spread over the tile threads (here one row per tile) give the one-pass result,
    bit for bit: each row only reads its neighbours and writes itself."""
    from dfxm_online.online import orientation
    from dfxm_online.online.kernels.orientation_maps import kam_rows

    maps = holey_maps((23, 17), 2, np.float64, seed=9)
    offsets = orientation._offsets(2, "eight")
    whole = np.empty((23, 17))
    kam_rows(maps, offsets, np.inf, whole, 0, 23)
    monkeypatch.setattr(orientation, "SNAPSHOT_PIXELS", 17)
    np.testing.assert_array_equal(kam(maps, radius=2), whole)
    np.testing.assert_allclose(whole, brute_kam(maps, 2), rtol=0, atol=1e-12)
    rows = np.full((23, 17), -1.0)
    for start, stop in [(0, 1), (1, 7), (7, 7), (7, 22), (22, 23)]:
        kam_rows(maps, offsets, np.inf, rows, start, stop)
    np.testing.assert_array_equal(rows, whole)


def test_kam_mixed_dtypes_and_compiled_argument_checks():
    from dfxm_online.online import orientation
    from dfxm_online.online.kernels.orientation_maps import MAX_MAPS, kam_rows

    a, b = holey_maps((6, 7), 2, np.float64, seed=4)
    mixed = [a.astype(np.float32), b]  # not all float32: everything read as float64
    np.testing.assert_allclose(
        kam(mixed), brute_kam([a.astype(np.float32).astype(np.float64), b]), atol=1e-12
    )
    np.testing.assert_allclose(kam([a.astype(int)]), brute_kam([a.astype(int).astype(float)]))
    offsets = np.array([[0, 1], [0, -1]], dtype=np.int64)
    out = np.empty((6, 7))
    with pytest.raises(ValueError):  # mixed dtypes
        kam_rows(mixed, offsets, np.inf, out, 0, 6)
    with pytest.raises(ValueError):  # offsets not int64
        kam_rows([a], offsets.astype(np.float64), np.inf, out, 0, 6)
    with pytest.raises(ValueError):  # offsets not (K, 2)
        kam_rows([a], offsets.reshape(1, 4), np.inf, out, 0, 6)
    with pytest.raises(ValueError):  # map and out shapes differ
        kam_rows([a[:5]], offsets, np.inf, out, 0, 6)
    with pytest.raises(ValueError):  # rows outside the map
        kam_rows([a], offsets, np.inf, out, 0, 7)
    with pytest.raises(ValueError):
        kam_rows([], offsets, np.inf, out, 0, 6)
    with pytest.raises(TypeError):  # out must be float64
        kam_rows([a], offsets, np.inf, out.astype(np.float32), 0, 6)
    with pytest.raises(ValueError):  # too many maps
        kam_rows([a] * (MAX_MAPS + 1), offsets, np.inf, out, 0, 6)
    with pytest.raises(ValueError):  # maps not 2-D
        kam_rows([a.reshape(-1)], offsets, np.inf, out, 0, 6)
    with pytest.raises(ValueError):  # integer maps are not read as floats
        kam_rows([a.astype(int)], offsets, np.inf, out, 0, 6)
    with pytest.raises(ValueError):  # strided maps are not read in place
        kam_rows([np.zeros((6, 14))[:, ::2]], offsets, np.inf, out, 0, 6)
    with pytest.raises(ValueError):  # start > stop
        kam_rows([a], offsets, np.inf, out, 4, 3)
    before = out.copy()
    kam_rows([a], offsets, np.inf, out, 3, 3)  # an empty range writes nothing
    np.testing.assert_array_equal(out, before)
    # as many maps as taken (the loop for any count of maps)
    many = holey_maps((6, 7), MAX_MAPS, np.float32, seed=5)
    kam_rows(many, orientation._offsets(1, "eight"), np.inf, out, 0, 6)
    np.testing.assert_allclose(out, brute_kam([m.astype(np.float64) for m in many]), rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------
# orientation_gradient


def test_orientation_gradient_equals_forward_differences():
    rng = np.random.default_rng(4)
    mu, chi = rng.normal(size=(2, 7, 8))
    chi[3, 3] = np.nan
    got = orientation_gradient([mu, chi])
    ref = np.full((7, 8), np.nan)
    for y in range(6):
        for x in range(7):
            d2 = sum((m[y, x + 1] - m[y, x]) ** 2 + (m[y + 1, x] - m[y, x]) ** 2 for m in (mu, chi))
            ref[y, x] = np.sqrt(d2)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_allclose(got, ref, atol=1e-12)
    assert np.isnan(got[[3, 3, 2], [3, 2, 3]]).all()  # the NaN pixel and its left/upper ones
    # A linear ramp of slope (0.1, 0.2) per pixel along x in mu and chi: |grad| = sqrt(0.05).
    x = np.arange(8.0)[None, :].repeat(7, 0)
    np.testing.assert_allclose(orientation_gradient([0.1 * x, 0.2 * x])[:-1, :-1], np.sqrt(0.05))


def test_closed_form_colour_equals_matplotlib_hsv_to_rgb():
    from matplotlib.colors import hsv_to_rgb

    from dfxm_online.online.orientation import _colour

    rng = np.random.default_rng(11)
    u, v = rng.normal(size=(2, 4000)) * 0.8
    hue = np.mod(np.arctan2(v, u) / (2 * np.pi), 1.0)
    sat = np.minimum(np.hypot(u, v), 1.0)
    expected = hsv_to_rgb(np.stack([hue, sat, np.ones_like(sat)], axis=-1))
    got = _colour(u, v)
    assert got.dtype == np.float32  # written as float32 by the compiled pass: its rounding
    np.testing.assert_allclose(got, expected, rtol=0, atol=FLOAT32_ROUNDING)
