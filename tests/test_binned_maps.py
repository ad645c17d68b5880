"""Live maps at a coarser binning from the full-resolution accumulators (`live_binning`):
block sums against numpy, and the binned snapshot against a pipeline fed binned frames."""

from __future__ import annotations

import numpy as np
import pytest

from dfxm_online.acquisition.geometry import ScanGeometry
from dfxm_online.config import AnalysisConfig, ConfigError, load_config
from dfxm_online.online.accumulators.moments import PowerSums
from dfxm_online.online.binned_maps import block_sums
from dfxm_online.online.pipeline import ScanPipeline

from .test_moments import as_dict, make_stack


def numpy_block_sums(images: np.ndarray, factor: int) -> np.ndarray:
    """(..., H, W) -> (..., H // f, W // f): partial blocks dropped, summed in float64."""
    h, w = images.shape[-2] // factor, images.shape[-1] // factor
    crop = images[..., : h * factor, : w * factor].astype(np.float64)
    return crop.reshape(*images.shape[:-2], h, factor, w, factor).sum(axis=(-3, -1))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape, factor", [((24, 20), 2), ((41, 37), 2), ((41, 37), 3), ((300, 7), 7)])
def test_block_sums_equal_numpy_for_images_stacks_and_flat_rows(dtype, shape, factor):
    rng = np.random.default_rng(3)
    images = rng.normal(100.0, 30.0, size=(5, *shape)).astype(dtype)
    expected = numpy_block_sums(images, factor)
    tol = 1e-12 if dtype == np.float64 else 1e-6
    stack = block_sums(images, shape, factor)
    assert stack.dtype == dtype and stack.shape == expected.shape
    np.testing.assert_allclose(stack, expected, rtol=tol)
    flat = block_sums(images.reshape(5, -1), shape, factor)  # (R, P) rows in, rows out
    np.testing.assert_array_equal(flat, stack.reshape(5, -1))
    one = block_sums(images[2], shape, factor)
    np.testing.assert_array_equal(one, stack[2])
    np.testing.assert_allclose(block_sums(images[2], shape, factor, mean=True), expected[2] / factor**2, rtol=tol)
    # integers are summed as float64
    counts = rng.integers(0, 4000, size=shape, dtype=np.uint16)
    np.testing.assert_array_equal(block_sums(counts, shape, factor), numpy_block_sums(counts, factor))


def test_block_sums_reject_maps_of_another_frame_and_blocks_that_do_not_fit():
    with pytest.raises(ValueError, match="not over 10x12 frames"):
        block_sums(np.zeros((3, 11, 12)), (10, 12), 2)
    with pytest.raises(ValueError, match="does not fit"):
        block_sums(np.zeros((10, 12)), (10, 12), 11)


@pytest.mark.parametrize("n_motors", [1, 2, 3])
def test_binned_power_sums_are_the_sums_of_binned_frames(n_motors):
    axes, _, pos, stack = make_stack(n_motors, shape=(25, 22))
    full = PowerSums(axes, 25 * 22)
    full.update(stack, as_dict(axes, pos))
    binned_frames = numpy_block_sums(stack, 2)
    direct = PowerSums(axes, binned_frames[0].size)
    direct.update(binned_frames, as_dict(axes, pos))
    ours = full.binned((25, 22), 2)
    np.testing.assert_allclose(ours.sums, direct.sums, rtol=1e-12, atol=1e-9 * np.abs(direct.sums).max())
    np.testing.assert_array_equal(ours.weights, direct.weights)
    assert ours.count == direct.count == len(stack) and ours.n_pixels == 12 * 11
    assert full.sums.shape == (len(full.exponents), 25 * 22)  # the full accumulator is only read


def _pipelines(config: AnalysisConfig, shape, n_motors=2, dark=None):
    """The full-resolution pipeline and one whose chain bins the frames 2x2 (sum), fed the
    same scan."""
    axes, _, pos, stack = make_stack(n_motors, shape=shape)
    geometry = ScanGeometry(tuple(axes), len(pos), "det")
    full = ScanPipeline(geometry, shape, config, dark=dark)
    steps = [*config.preprocess, {"step": "binning", "factor": 2, "mode": "sum"}]
    binned_config = AnalysisConfig(**{**vars(config), "preprocess": steps})
    binned = ScanPipeline(geometry, shape, binned_config, dark=dark)
    for part in np.array_split(np.arange(len(pos)), 4):
        full.update(stack[part], as_dict(axes, pos[part]))
        binned.update(stack[part], as_dict(axes, pos[part]))
    return full, binned, stack


def _assert_maps_close(ours, theirs, names, valid):
    for name in names:
        a, b = ours[name].astype(np.float64), theirs[name].astype(np.float64)
        assert a.shape == b.shape, name
        scale = np.nanmax(np.abs(b[valid])) or 1.0
        np.testing.assert_allclose(a[valid], b[valid], rtol=1e-8, atol=1e-10 * scale, err_msg=name)


@pytest.mark.parametrize("background", ["none", "dark"])
@pytest.mark.parametrize("shape", [(24, 20), (25, 23)])
def test_binned_snapshot_equals_the_maps_of_binned_frames(background, shape):
    """With a background linear in the frames (none, a dark image), the live maps binned 2x2
    are those of a scan whose frames were binned before the accumulators: every moment map,
    the background and the projections, on the same pixels, NaN where those are NaN."""
    # whole counts: the binning step's float32 frames (and dark) are then exact
    dark = np.random.default_rng(5).normal(90.0, 3.0, size=shape).round() if background == "dark" else None
    config = AnalysisConfig(background=background, accumulators=["projections"])
    full, binned, _ = _pipelines(config, shape, dark=dark)
    ours = full.snapshot(binning=2)
    theirs = binned.snapshot()
    valid = np.isfinite(theirs["com_mu"])
    assert valid.sum() > 0.3 * valid.size
    np.testing.assert_array_equal(np.isfinite(ours["com_mu"]), valid)
    moment_names = [n for n in theirs if n.startswith(("intensity", "com_", "fwhm_", "skewness_", "kurtosis_", "cov_"))]
    assert len(moment_names) == 10
    _assert_maps_close(ours, theirs, moment_names, valid)
    everywhere = np.ones(valid.shape, dtype=bool)
    _assert_maps_close(ours, theirs, ["sum", "sum_first_half", "sum_second_half", "kam"], everywhere)
    np.testing.assert_allclose(ours["mosaicity"], theirs["mosaicity"], atol=1e-5)
    if background == "dark":
        _assert_maps_close(ours, theirs, ["background"], everywhere)
    # the full-resolution maps are still there, unchanged by the binned snapshot
    assert full.snapshot()["com_mu"].shape == shape


def test_binned_snapshot_with_the_edge_baseline_bins_the_full_resolution_one():
    """The edge baseline is not linear in the frames (groups are kept or rejected pixel by
    pixel): the live maps subtract the block sums of the full-resolution baseline, which
    the final maps subtract, from the block sums of the power sums. Intensity and background
    are then exactly the block sums of the full-resolution maps; the per-frame statistics
    (max) are block sums of the per-pixel ones, and per-frame curves are left as they are."""
    shape = (24, 20)
    config = AnalysisConfig(accumulators=["projections", "pca"], pca_components=2, decomposition_binning=1)
    full, _, _ = _pipelines(config, shape)
    whole = full.snapshot()
    live = full.snapshot(binning=2)
    everywhere = np.ones((12, 10), dtype=bool)
    for name in ("intensity", "background", "sum", "max"):
        expected = numpy_block_sums(whole[name], 2)
        _assert_maps_close(live, {name: expected}, [name], everywhere)
    np.testing.assert_array_equal(live["pca_weights"], whole["pca_weights"])
    np.testing.assert_array_equal(live["pca_variance"], whole["pca_variance"])
    assert live["pca_component_0"].shape == (12, 10) and whole["pca_component_0"].shape == shape
    assert live["mosaicity"].shape == (12, 10, 3) and live["kam"].shape == (12, 10)


def test_live_binning_is_validated_and_read_from_the_command_line_names(tmp_path):
    assert load_config().live_binning == "auto"
    assert load_config(live_binning=2).live_binning == 2
    path = tmp_path / "c.toml"
    path.write_text("live_binning = 4\n")
    assert load_config(path).live_binning == 4
    with pytest.raises(ConfigError, match="live_binning=0"):
        load_config(live_binning=0)


def test_live_binning_applies_to_running_versions_of_maps_at_least_one_block_wide():
    from types import SimpleNamespace

    from dfxm_online.config import DaemonConfig
    from dfxm_online.map_publisher import MapPublisher

    publisher = MapPublisher("scan", SimpleNamespace(), None, DaemonConfig(live_binning=4), None)
    assert publisher.binning(None, 1, True) == 1  # no frame shape yet (a dark scan, or before the first frame)
    assert publisher.binning((2048, 2048), 1, True) == 4
    assert publisher.binning((2048, 2048), 1, False) == 1  # the final maps: full resolution
    assert publisher.binning((3, 2048), 1, True) == 1  # a narrow ROI: not one block high


def _fed(config: AnalysisConfig, shape, factor, n_motors=2, dark=None):
    """A scan's full-resolution pipeline and its live preview binned `factor` x `factor`,
    fed as the daemon feeds them: each batch prepared once, the preview first."""
    axes, _, pos, stack = make_stack(n_motors, shape=shape)
    geometry = ScanGeometry(tuple(axes), len(pos), "det")
    full = ScanPipeline(geometry, shape, config, dark=dark)
    preview = full.preview(factor)
    for part in np.array_split(np.arange(len(pos)), 5):
        frames, positions = full.prepared(stack[part], as_dict(axes, pos[part]))
        preview.update(frames, positions)
        full.add(frames, positions)
    return axes, pos, stack, full, preview


@pytest.mark.parametrize("n_motors, shape, factor", [(1, (24, 20), 2), (2, (25, 23), 3), (2, (24, 20), 2)])
def test_the_live_preview_equals_brute_force_of_the_binned_frames(n_motors, shape, factor):
    """The preview's maps are those of the frames binned factor x factor (sum), their own
    edge baseline subtracted (the live maps "are a preview": the brute force of binned
    frames); the full-resolution pipeline fed the same prepared batches equals one fed by
    `update` (the final maps do not change)."""
    import tests.brute as brute
    from dfxm_online.online.maps import signal_mask

    config = AnalysisConfig(accumulators=["projections"])
    axes, pos, stack, full, preview = _fed(config, shape, factor, n_motors)
    binned = numpy_block_sums(stack, factor)
    offset = brute.edge_baseline(binned, pos, axes, config.edge_fraction)
    ref = brute.moments(binned, pos, offset)
    maps = preview.snapshot()
    assert maps["com_mu"].shape == binned.shape[1:] and preview.frames_processed == len(pos)
    np.testing.assert_allclose(maps["background"], offset, rtol=1e-9)
    np.testing.assert_allclose(maps["intensity"], ref["intensity"], rtol=1e-9, atol=1e-9 * np.abs(ref["intensity"]).max())
    valid = signal_mask(ref["intensity"], config.min_intensity_fraction)
    for a in range(n_motors):
        valid &= ref[f"var{a}"] > 0
    assert valid.sum() > 0.2 * valid.size
    for a, axis in enumerate(axes):
        np.testing.assert_allclose(maps[f"com_{axis.name}"][valid], ref[f"mean{a}"][valid], rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(maps[f"fwhm_{axis.name}"][valid], 2.3548200450309493 * np.sqrt(ref[f"var{a}"][valid]),
                                   rtol=1e-7)
    np.testing.assert_allclose(maps["sum"], binned.sum(axis=0), rtol=1e-12)
    np.testing.assert_array_equal(maps["max"], binned.max(axis=0))
    # the full-resolution pipeline: the same as one fed by update, bit for bit
    whole = ScanPipeline(full.geometry, shape, config)
    for part in np.array_split(np.arange(len(pos)), 5):
        whole.update(stack[part], as_dict(axes, pos[part]))
    for name, values in whole.snapshot().items():
        np.testing.assert_array_equal(full.snapshot()[name], values, err_msg=name)


def test_the_preview_takes_the_scans_dark_binned_and_knows_a_dark_subtracted_per_frame():
    """A dark subtracted at snapshot time is the full pipeline's, binned; with a "dark"
    step in the chain the preview's frames come with the dark already off, so it neither
    subtracts one again nor names another background rule."""
    shape = (24, 20)
    dark = np.random.default_rng(5).normal(90.0, 3.0, size=shape).round()
    config = AnalysisConfig(background="dark", accumulators=[])
    _, _, _, full, preview = _fed(config, shape, 2, dark=dark)
    np.testing.assert_allclose(preview.dark, numpy_block_sums(dark, 2).reshape(-1), rtol=1e-12)
    assert preview.background()[1] == full.background()[1] == "dark"
    in_chain = AnalysisConfig(preprocess=[{"step": "dark"}], accumulators=[])
    _, _, stack, full, preview = _fed(in_chain, shape, 2, dark=dark)
    assert full.dark is None and preview.dark is None and preview.dark_in_chain
    assert preview.background()[1] == full.background()[1] == "dark (per frame) + edges"
    assert preview.config.moment_window == 0 and full.config.moment_window > 0  # the window is the final maps'
