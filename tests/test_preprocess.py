"""Preprocessing steps against direct (loop or other-formulation) implementations; the chain."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from dfxm_online.online.preprocess import (
    PreprocessChain,
    apply_mask,
    apply_threshold,
    bin_frames,
    cornice_fit,
    crop_roi,
    divide_flatfield,
    hot_pixel_mask,
    median_filter_3x3,
    normalize_monitor,
    recon3d_dark_estimate,
    remove_hot_pixels,
    subtract_cornice,
    subtract_dark,
)


def rng_frames(shape=(3, 13, 17), seed=0, lam=50.0):
    return np.random.default_rng(seed).poisson(lam, shape).astype(np.uint16)


# --------------------------------------------------------------------------------------------
# single steps


def test_dark_keeps_negative_residuals():
    frames = rng_frames(lam=5)
    dark = np.random.default_rng(1).uniform(3, 7, frames.shape[1:])
    out = subtract_dark(frames, dark)
    assert out.dtype == np.float32 and out.shape == frames.shape
    for b in range(frames.shape[0]):
        for y in range(frames.shape[1]):
            for x in range(frames.shape[2]):
                assert out[b, y, x] == pytest.approx(float(frames[b, y, x]) - dark[y, x], abs=1e-5)
    assert (out < 0).sum() > 10


def test_recon3d_dark_estimate_skips_zero_frames():
    rng = np.random.default_rng(2)
    frames = rng.poisson(20, (8, 6, 5)).astype(np.int32)
    frames[1] = 0  # failed readouts: sum exactly 0
    frames[6] = 0
    frames[3] = rng.poisson(2, (6, 5))  # the two dimmest real frames
    frames[5] = rng.poisson(3, (6, 5))
    sums = [int(f.sum()) for f in frames]
    real = sorted((s, i) for i, s in enumerate(sums) if s != 0)
    expected = (frames[real[0][1]].astype(float) + frames[real[1][1]]) / 2
    assert {real[0][1], real[1][1]} == {3, 5}
    got = recon3d_dark_estimate(frames)
    assert got.shape == (6, 5)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_recon3d_dark_estimate_needs_two_non_zero_frames():
    frames = np.zeros((4, 3, 3))
    frames[2, 1, 1] = 5
    with pytest.raises(ValueError, match="non-zero"):
        recon3d_dark_estimate(frames)


def test_threshold_against_loop():
    frames = rng_frames(lam=30)
    for low, high in [(25, None), (None, 35), (25, 35)]:
        out = apply_threshold(frames, low, high)
        ref = np.empty(frames.shape, dtype=np.float64)
        for idx, v in np.ndenumerate(frames):
            drop = (low is not None and v < low) or (high is not None and v > high)
            ref[idx] = 0.0 if drop else float(v)
        np.testing.assert_array_equal(out, ref)
        assert 0 < (out == 0).sum() < out.size


def test_mask_against_loop():
    frames = rng_frames()
    mask = np.random.default_rng(3).random(frames.shape[1:]) > 0.3
    out = apply_mask(frames, mask)
    for (b, y, x), v in np.ndenumerate(frames):
        assert out[b, y, x] == (float(v) if mask[y, x] else 0.0)
    with pytest.raises(ValueError, match="boolean"):
        apply_mask(frames, mask.astype(np.uint8))


def test_roi_against_index_loop():
    frames = rng_frames()
    out = crop_roi(frames, 2, 9, 4, 16)
    assert out.shape == (3, 7, 12)
    for b in range(3):
        for i in range(7):
            for j in range(12):
                assert out[b, i, j] == frames[b, 2 + i, 4 + j]
    with pytest.raises(ValueError, match="not inside"):
        crop_roi(frames, 0, 14, 0, 5)


def numpy_block_sums(frames: np.ndarray, by: int, bx: int) -> np.ndarray:
    """The numpy version the compiled block sums replaced (strided slices added together),
    kept as the reference they must equal bit for bit."""
    ny, nx = frames.shape[1] // by, frames.shape[2] // bx
    crop = frames[:, : ny * by, : nx * bx]
    small_uint = crop.dtype.kind == "u" and crop.dtype.itemsize <= 2
    cols = crop[:, :, 0::bx].astype(np.uint32 if small_uint else np.float64)
    for j in range(1, bx):
        cols += crop[:, :, j::bx]
    out = cols[:, 0::by, :].copy()
    for i in range(1, by):
        out += cols[:, i::by, :]
    return out.astype(np.float64, copy=False)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.uint32, np.int32, np.float32, np.float64,
                                   np.int64])
@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_binning_equals_the_numpy_block_sums_bit_for_bit_and_each_frame_alone(mode, dtype):
    """The compiled pass (tiles of output rows on the threads) gives numpy's block sums of
    every frame type bit for bit, rounded once to float32 by `bin_frames` (mean: divided
    first), and a frame of a batch is binned as it is alone."""
    from dfxm_online.online.preprocess import BLOCK_ROWS, block_sums

    n = 5
    frames = rng_frames(shape=(n, 2 * BLOCK_ROWS * 3 + 7, 23)).astype(dtype)  # several row tiles, ragged
    if np.dtype(dtype).kind == "f":
        frames = frames + np.float32(0.1)  # not whole numbers: the order of the additions shows
    reference = numpy_block_sums(frames, 3, 4)
    np.testing.assert_array_equal(block_sums(frames, 3, 4), reference)
    out = bin_frames(frames, 3, 4, mode)
    assert out.shape == (n, 2 * BLOCK_ROWS + 2, 5) and out.dtype == np.float32
    expected = reference if mode == "sum" else reference / 12
    np.testing.assert_array_equal(out, expected.astype(np.float32))
    for b in range(n):
        np.testing.assert_array_equal(out[b], bin_frames(frames[b : b + 1], 3, 4, mode)[0])
    assert bin_frames(frames[:0], 3, 4, mode).shape == (0, 2 * BLOCK_ROWS + 2, 5)


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_binning_non_multiple_against_loop(mode):
    frames = rng_frames(shape=(2, 11, 14))  # 11 = 3*3 + 2, 14 = 4*3 + 2
    by, bx = 3, 4
    out = bin_frames(frames, by, bx, mode)
    assert out.shape == (2, 3, 3)
    for b in range(2):
        for i in range(3):
            for j in range(3):
                block = [
                    float(frames[b, i * by + u, j * bx + v]) for u in range(by) for v in range(bx)
                ]
                want = sum(block) if mode == "sum" else sum(block) / len(block)
                assert out[b, i, j] == pytest.approx(want, rel=1e-6)


def test_flatfield_against_loop():
    frames = rng_frames()
    flat = np.random.default_rng(4).uniform(0.5, 1.5, frames.shape[1:])
    flat[0, 0], flat[3, 4], flat[5, 6] = 0.0, -1.0, np.nan
    out = divide_flatfield(frames, flat)
    for (b, y, x), v in np.ndenumerate(frames):
        f = flat[y, x]
        want = float(v) / f if (np.isfinite(f) and f > 0) else 0.0
        assert out[b, y, x] == pytest.approx(want, rel=1e-6)
    assert (out[:, 0, 0] == 0).all() and (out[:, 3, 4] == 0).all() and (out[:, 5, 6] == 0).all()


def test_monitor_against_loop_and_default_reference():
    frames = rng_frames()
    monitor = np.array([200.0, 180.0, 220.0])
    out = normalize_monitor(frames, monitor, 150.0)
    for b in range(3):
        np.testing.assert_allclose(out[b], frames[b].astype(float) * 150.0 / monitor[b], rtol=1e-6)
    with pytest.raises(ValueError, match="monitor <= 0"):
        normalize_monitor(frames, np.array([200.0, 0.0, 220.0]), 150.0)

    # in a chain, the first monitor value seen is the reference, kept for later batches
    chain = PreprocessChain.from_config([{"step": "monitor"}])
    first = chain(frames, monitor)
    np.testing.assert_allclose(first[0], frames[0], rtol=1e-6)  # its own reference: unchanged
    np.testing.assert_allclose(first[1], frames[1] * 200.0 / 180.0, rtol=1e-6)
    second = chain(frames[:1], np.array([400.0]))
    np.testing.assert_allclose(second[0], frames[0] * 0.5, rtol=1e-6)
    assert chain.steps[0].reference == 200.0
    with pytest.raises(ValueError, match="monitor values"):
        chain(frames)
    explicit = PreprocessChain.from_config([{"step": "monitor", "reference": 100}])
    np.testing.assert_allclose(explicit(frames, monitor)[2], frames[2] * 100 / 220, rtol=1e-6)


def test_cornice_fit_matches_polyfit():
    frames = np.random.default_rng(5).normal(10, 3, (3, 40, 30))
    w = 4
    a, b = cornice_fit(frames, w)
    for i in range(3):
        c = [np.mean(np.r_[frames[i, y, :w], frames[i, y, -w:]]) for y in range(40)]
        slope, intercept = np.polyfit(np.arange(40), c, 1)
        assert a[i] == pytest.approx(intercept, rel=1e-10)
        assert b[i] == pytest.approx(slope, rel=1e-10)


def test_cornice_recovers_injected_linear_background():
    height, width, w = 64, 48, 10
    y = np.arange(height)[:, None]
    rng = np.random.default_rng(6)
    signal = np.zeros((height, width))
    signal[w:-w, w:-w] = rng.uniform(0, 500, (height - 2 * w, width - 2 * w))
    coeffs = [(37.5, 0.8), (-4.0, 2.25), (120.0, -1.5)]
    frames = np.stack([signal + a + b * y for a, b in coeffs])
    a, b = cornice_fit(frames, w)
    np.testing.assert_allclose(a, [c[0] for c in coeffs], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(b, [c[1] for c in coeffs], rtol=1e-9, atol=1e-9)
    out = subtract_cornice(frames, w)
    for i, (a0, b0) in enumerate(coeffs):
        recovered_background = frames[i] - out[i].astype(np.float64)
        # the float32 output carries ~1e-7 relative rounding of the frame values
        scale = np.abs(frames[i]).max()
        np.testing.assert_allclose(
            recovered_background, a0 + b0 * y + 0 * signal, atol=1e-6 * scale
        )
    np.testing.assert_allclose(out[:, :, :w], 0, atol=1e-6 * np.abs(frames).max())


# --------------------------------------------------------------------------------------------
# median filter and hot pixels


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 2, 3), (3, 5, 7), (2, 37, 41)])
def test_median_filter_equals_scipy_reflect(shape):
    rng = np.random.default_rng(7)
    for frames in (rng.integers(0, 4, shape), rng.normal(size=shape)):  # with and without ties
        ours = median_filter_3x3(frames)
        ref = ndimage.median_filter(frames.astype(np.float32), size=(1, 3, 3), mode="reflect")
        np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("level", [5, 100, 1000])
def test_hot_pixels_leave_clean_poisson_frames_untouched(level):
    frames = np.stack(
        [np.random.default_rng(seed).poisson(level, (512, 512)) for seed in (10, 11, 12)]
    ).astype(np.float32)
    hot, filtered = hot_pixel_mask(frames)
    assert hot.sum() == 0
    np.testing.assert_array_equal(remove_hot_pixels(frames), frames)
    # the frames are not trivially clean: darfix's rule (r > one standard deviation of r)
    # would replace a large fraction of them
    residual = frames - filtered
    assert (residual > residual.std()).mean() > 0.05


@pytest.mark.parametrize("level", [5, 100, 1000])
def test_hot_pixels_removed_and_nothing_else(level):
    rng = np.random.default_rng(level)
    height, width = 256, 256
    yy, xx = np.mgrid[:height, :width]
    local = level * (1 + 0.5 * np.sin(yy / 40.0) * np.cos(xx / 55.0))  # smooth structure
    frames = rng.poisson(np.broadcast_to(local, (2, height, width))).astype(np.float32)
    # isolated single pixels (4 px apart at least), one in a corner and one on an edge
    cells = rng.choice((height // 4) * (width // 4), size=40, replace=False)
    ys, xs = (cells // (width // 4)) * 4 + 1, (cells % (width // 4)) * 4 + 2
    ys, xs = np.r_[ys, 0, height - 1], np.r_[xs, 0, 77]
    injected = np.zeros((2, height, width), dtype=bool)
    injected[0, ys, xs] = True
    injected[1, ys[::2], xs[::2]] = True
    clean = frames.copy()
    frames[injected] = 50 * np.broadcast_to(local, frames.shape)[injected]

    hot, _ = hot_pixel_mask(frames)
    np.testing.assert_array_equal(hot, injected)
    out = remove_hot_pixels(frames)
    np.testing.assert_array_equal(out[~injected], frames[~injected])
    # replaced by the median of the neighbourhood: back near the clean level
    ref_median = ndimage.median_filter(frames, size=(1, 3, 3), mode="reflect")
    np.testing.assert_array_equal(out[injected], ref_median[injected])
    assert np.all(np.abs(out[injected] - clean[injected]) < 8 * np.sqrt(level) + 16)


def test_hot_pixel_rule_against_direct_implementation():
    rng = np.random.default_rng(8)
    frames = rng.poisson(3, (2, 40, 50)).astype(np.float64)
    frames[0, 10, 10] = 60
    frames[1, 20, 30] = 25  # near the floor: flagged or not by the formula only
    frames[1, 5, 5] = 200
    k = 4.0
    hot, _ = hot_pixel_mask(frames, k)
    for b in range(2):
        med = ndimage.median_filter(frames[b], size=3, mode="reflect")
        r = frames[b] - med
        mad = np.median(np.abs(r - np.median(r)))
        for (y, x), rv in np.ndenumerate(r):
            want = rv > k * 1.4826 * mad and np.sqrt(frames[b, y, x]) - np.sqrt(med[y, x]) > k / 2
            assert hot[b, y, x] == want, (b, y, x)
    assert hot[0, 10, 10] and hot[1, 5, 5]


# --------------------------------------------------------------------------------------------
# chain


def test_output_shape_roi_then_binning():
    chain = PreprocessChain.from_config(
        [
            {"step": "roi", "y0": 3, "y1": 30, "x0": 5, "x1": 40},
            {"step": "binning", "factor": [4, 3]},
        ]
    )
    assert chain.output_shape((32, 48)) == (6, 11)  # 27 // 4, 35 // 3
    assert chain.output_shape((2, 32, 48)) == (2, 6, 11)
    out = chain(rng_frames(shape=(2, 32, 48)))
    assert out.shape == (2, 6, 11) and out.dtype == np.float32
    with pytest.raises(ValueError, match="roi"):
        chain.output_shape((20, 48))


def test_chain_order_matters_and_equals_direct_composition():
    frames = rng_frames(shape=(2, 12, 12), lam=10)
    threshold = {"step": "threshold", "low": 10}
    binning = {"step": "binning", "factor": 2, "mode": "sum"}
    t_then_b = PreprocessChain.from_config([threshold, binning])(frames)
    b_then_t = PreprocessChain.from_config([binning, threshold])(frames)
    np.testing.assert_array_equal(t_then_b, bin_frames(apply_threshold(frames, low=10), 2, 2))
    np.testing.assert_array_equal(b_then_t, apply_threshold(bin_frames(frames, 2, 2), low=10))
    assert not np.array_equal(t_then_b, b_then_t)


def test_full_chain_equals_composition():
    rng = np.random.default_rng(9)
    frames = rng.poisson(40, (3, 30, 34)).astype(np.uint16)
    dark = rng.uniform(1, 3, (30, 34))
    mask = rng.random((30, 34)) > 0.05
    flat = rng.uniform(0.8, 1.2, (13, 15))  # after roi [2:28, 3:33] and 2x2 binning
    monitor = np.array([100.0, 90.0, 110.0])
    config = [
        {"step": "dark"},
        {"step": "hot_pixels", "k": 6},
        {"step": "mask", "image": "bad"},
        {"step": "roi", "y0": 2, "y1": 28, "x0": 3, "x1": 33},
        {"step": "binning", "factor": [2, 2], "mode": "mean"},
        {"step": "flatfield", "image": flat},
        {"step": "monitor", "reference": 100.0},
        {"step": "cornice", "width": 2},
        {"step": "threshold", "high": 1e6},
    ]
    chain = PreprocessChain.from_config(config, {"dark": dark, "bad": mask}, frame_shape=(30, 34))
    assert chain.names == [c["step"] for c in config]
    assert chain.needs_monitor and not chain.is_linear
    x = subtract_dark(frames, dark)
    x = remove_hot_pixels(x, 6)
    x = apply_mask(x, mask)
    x = crop_roi(x, 2, 28, 3, 33)
    x = bin_frames(x, 2, 2, "mean")
    x = divide_flatfield(x, flat)
    x = normalize_monitor(x, monitor, 100.0)
    x = subtract_cornice(x, 2)
    x = apply_threshold(x, high=1e6)
    np.testing.assert_array_equal(chain(frames, monitor), x)
    # the input is not modified
    assert frames.dtype == np.uint16


def test_is_linear_means_a_constant_before_is_a_constant_after():
    rng = np.random.default_rng(10)
    frames = rng.poisson(30, (4, 24, 28)).astype(np.float64)
    c = rng.uniform(0, 20, (24, 28))
    zero = np.zeros((1, 24, 28))
    images = {"dark": rng.uniform(0, 2, (24, 28)), "mask": rng.random((24, 28)) > 0.1}
    images["flatfield"] = rng.uniform(0.5, 1.5, (10, 12))
    linear = PreprocessChain.from_config(
        [
            {"step": "dark"},
            {"step": "mask"},
            {"step": "roi", "y0": 2, "y1": 22, "x0": 1, "x1": 25},
            {"step": "binning", "factor": 2},
            {"step": "flatfield"},
            {"step": "cornice", "width": 3},
        ],
        images,
    )
    assert linear.is_linear
    # affine with the same coefficients for every frame: chain(x - c) = chain(x) - A c
    a_c = linear(c[None]) - linear(zero)
    np.testing.assert_allclose(linear(frames - c), linear(frames) - a_c, atol=1e-3)
    for config in ([{"step": "threshold", "low": 25}], [{"step": "monitor"}]):
        chain = PreprocessChain.from_config(config)
        assert not chain.is_linear
        mon = np.array([1.0, 2.0, 3.0, 4.0])
        shifted = chain(frames - c, mon) - chain(frames, mon)
        assert not np.allclose(shifted, shifted[0], atol=1e-3)  # no common per-pixel constant
    assert not PreprocessChain.from_config([{"step": "hot_pixels"}]).is_linear
    assert PreprocessChain.from_config([]).is_linear


def test_empty_chain_is_float32_copy():
    frames = rng_frames()
    out = PreprocessChain.from_config([])(frames)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, frames)


@pytest.mark.parametrize(
    ("config", "images", "frame_shape", "message"),
    [
        ([{"step": "gaussian"}], {}, None, "unknown preprocess step 'gaussian'"),
        ([{"low": 3}], {}, None, "needs a 'step'"),
        ([{"step": "roi", "y0": 0, "y1": 5, "x0": 0}], {}, None, r"missing \['x1'\]"),
        ([{"step": "binning"}], {}, None, r"missing \['factor'\]"),
        ([{"step": "threshold", "lo": 3}], {}, None, r"unknown parameters \['lo'\]"),
        ([{"step": "threshold"}], {}, None, "needs 'low' and/or 'high'"),
        ([{"step": "threshold", "low": 5, "high": 1}], {}, None, "low 5.0 > high"),
        ([{"step": "threshold", "low": "ten"}], {}, None, "low must be a number"),
        ([{"step": "hot_pixels", "k": -1}], {}, None, "k must be > 0"),
        ([{"step": "binning", "factor": 0}], {}, None, "factor must be an integer >= 1"),
        ([{"step": "binning", "factor": [2, 2, 2]}], {}, None, "factor must be an integer or"),
        ([{"step": "binning", "factor": 2, "mode": "max"}], {}, None, "mode must be 'sum'"),
        ([{"step": "roi", "y0": 5, "y1": 2, "x0": 0, "x1": 4}], {}, None, "y0 < y1"),
        ([{"step": "roi", "y0": 0, "y1": 50, "x0": 0, "x1": 4}], {}, (20, 20), "not inside"),
        ([{"step": "binning", "factor": 30}], {}, (20, 20), "does not fit"),
        ([{"step": "cornice", "width": 11}], {}, (20, 20), "does not fit"),
        ([{"step": "dark"}], {}, None, "needs image 'dark'"),
        ([{"step": "dark", "image": "d0"}], {"dark": np.zeros((4, 4))}, None, "needs image 'd0'"),
        ([{"step": "dark"}], {"dark": np.zeros((4, 4, 2))}, None, "must be 2-D"),
        ([{"step": "dark"}], {"dark": np.zeros((4, 5))}, (5, 4), r"shape \(4, 5\)"),
        ([{"step": "mask"}], {"mask": np.ones((4, 4), np.uint8)}, None, "must be boolean"),
        (
            [{"step": "binning", "factor": 2}, {"step": "flatfield"}],
            {"flatfield": np.ones((8, 8))},
            (8, 8),
            r"reaching it have \(4, 4\)",
        ),
        ([{"step": "monitor", "reference": 0}], {}, None, "reference must be > 0"),
    ],
)
def test_from_config_errors(config, images, frame_shape, message):
    with pytest.raises(ValueError, match=message):
        PreprocessChain.from_config(config, images, frame_shape=frame_shape)


def test_wrong_shapes_at_call_time():
    chain = PreprocessChain.from_config([{"step": "dark"}], {"dark": np.zeros((4, 4))})
    with pytest.raises(ValueError, match="image has shape"):
        chain(np.zeros((2, 5, 4)))
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        chain(np.zeros((4, 4)))
    monitor_chain = PreprocessChain.from_config([{"step": "monitor"}])
    with pytest.raises(ValueError, match="2 monitor values for 3 frames"):
        monitor_chain(np.ones((3, 4, 4)), np.ones(2))
