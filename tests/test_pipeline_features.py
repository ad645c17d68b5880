"""Preprocessing, monitor normalisation and orientation maps through `process` and `serve`."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from dfxm_online.acquisition.geometry import MotorAxis
from dfxm_online.acquisition.simulate import REFERENCE_CURRENT, SimulationSpec, simulate
from dfxm_online.config import AnalysisConfig, DaemonConfig
from dfxm_online.offline import process_scan, process_to_file
from dfxm_online.online.maps import signal_mask
from dfxm_online.online.orientation import kam, mosaicity_rgb
from dfxm_online.online.pipeline import ScanPipeline
from dfxm_online.online.preprocess import PreprocessChain
from dfxm_online.publish.nexus import read_maps_file

from . import brute
from .conftest import wait_done


def _spec(tmp_path, **kw):
    kw.setdefault("frame_shape", (32, 28))
    kw.setdefault("peak_counts", 5000.0)
    return SimulationSpec(scan_dir=tmp_path / "scans", **kw)


def test_preprocessing_chain_in_process_equals_brute_force(redis_url, tmp_path):
    """Hot pixels injected into the recorded frames, then hot-pixel removal + 2x2 binning."""
    rec = simulate(redis_url, _spec(tmp_path, kind="mosaicity", points=9, session="pp"), keep_frames=True)
    scan = f"{rec.scan_number}.1"
    with h5py.File(rec.filename, "a") as f:
        data = f[f"{scan}/instrument/pco/data"]
        stack = data[()]
        clean = stack.copy()
        stack[:, 5, 7] = 60000  # a hot pixel in every frame
        stack[3, 20, 11] = 50000  # and a transient one
        data[...] = stack
    steps = [{"step": "hot_pixels"}, {"step": "binning", "factor": 2, "mode": "sum"}]
    config = AnalysisConfig(preprocess=steps)
    maps, _, geometry, n = process_scan(rec.filename, scan, config, progress=False)
    assert maps["com_mu"].shape == (16, 14) and n == len(rec.positions)
    chain = PreprocessChain.from_config(steps)
    pre = chain(stack).astype(np.float64)
    # the hot pixels are gone: what is left differs from the clean frames by far less
    clean_pre = PreprocessChain.from_config(steps)(clean).astype(np.float64)
    assert np.abs(pre[:, 5 // 2, 7 // 2] - clean_pre[:, 5 // 2, 7 // 2]).max() < 0.05 * 60000
    assert abs(pre[3, 10, 5] - clean_pre[3, 10, 5]) < 0.05 * 50000
    axes = list(rec.model.motors)
    offset = brute.edge_baseline(pre, rec.positions, axes, 0.2)
    whole = brute.moments(pre, rec.positions, offset)
    mask = signal_mask(whole["intensity"], 0.05)
    # the one-pass moments (moment_window 0): float64 sums, exact to rounding
    one_pass, *_ = process_scan(rec.filename, scan, AnalysisConfig(preprocess=steps, moment_window=0), progress=False)
    valid = mask & (whole["var0"] > 0) & (whole["var1"] > 0)
    assert valid.sum() > 50
    np.testing.assert_allclose(one_pass["com_mu"][valid], whole["mean0"][valid], rtol=1e-9)
    np.testing.assert_allclose(one_pass["fwhm_chi"][valid], 2.3548200450309493 * np.sqrt(whole["var1"][valid]),
                               rtol=1e-9)
    # the default final moments, within each pixel's window: the windowed frames are float32
    # (one rounding of each baseline-subtracted value, ~6e-8 relative)
    ref = brute.windowed_moments(pre, rec.positions, offset, 3.0, 2, mask, axes)
    valid = mask & (ref["var0"] > 0) & (ref["var1"] > 0)
    np.testing.assert_allclose(maps["com_mu"][valid], ref["mean0"][valid], rtol=1e-6)
    np.testing.assert_allclose(maps["fwhm_chi"][valid], 2.3548200450309493 * np.sqrt(ref["var1"][valid]), rtol=1e-6)


def test_monitor_normalisation_live_and_offline(make_daemon, redis_url, tmp_path):
    """A decaying, refilled beam: normalised frames recover the truth, raw ones do not."""
    config = AnalysisConfig(preprocess=[{"step": "monitor", "reference": REFERENCE_CURRENT}], monitor="mon")
    daemon = make_daemon(DaemonConfig(publish_period=0.2, analysis=config))
    rec = simulate(redis_url, _spec(tmp_path, kind="rocking", monitor="mon", session="mon"), keep_frames=True)
    status = wait_done(daemon, rec.scan_key)
    assert status.state == "complete", status.reason
    live, _ = read_maps_file(status.path)
    with h5py.File(rec.filename) as f:
        current = f[f"{rec.scan_number}.1/measurement/mon"][()]
    assert current.min() < 0.9 * REFERENCE_CURRENT  # the beam really changed
    # the chain works in float32: the reference is its own output, checked against float64
    stack = PreprocessChain.from_config(config.preprocess)(np.stack(rec.frames), current).astype(np.float64)
    direct = np.stack(rec.frames).astype(np.float64) * (REFERENCE_CURRENT / current)[:, None, None]
    np.testing.assert_allclose(stack, direct, rtol=1e-6)
    axes = list(rec.model.motors)
    offset = brute.edge_baseline(stack, rec.positions, axes, 0.2)
    mask = signal_mask(brute.moments(stack, rec.positions, offset)["intensity"], 0.05)
    ref = brute.windowed_moments(stack, rec.positions, offset, 3.0, 2, mask, axes)  # the default final moments
    valid = mask & (ref["var0"] > 0)
    np.testing.assert_allclose(live["com_mu"][valid], ref["mean0"][valid], rtol=2e-6)
    offline, _, _, _ = process_scan(rec.filename, f"{rec.scan_number}.1", config, progress=False)
    np.testing.assert_allclose(offline["com_mu"][valid], ref["mean0"][valid], rtol=1e-6)  # float32 windowed frames
    # without normalisation the changing flux biases the maps
    model = rec.model
    inside = valid & (model.amplitude > 0.5 * model.amplitude.max())
    raw, _, _, _ = process_scan(rec.filename, f"{rec.scan_number}.1", AnalysisConfig(), progress=False)
    err_norm = np.median(np.abs(offline["com_mu"] - model.centre[0])[inside])
    err_raw = np.median(np.abs(raw["com_mu"] - model.centre[0])[inside])
    assert err_raw > 2 * err_norm


def test_mosaicity_and_kam_maps_in_the_file(redis_url, tmp_path):
    rec = simulate(redis_url, _spec(tmp_path, kind="mosaicity", points=11, session="mos"))
    out = process_to_file(rec.filename, tmp_path / "m.h5", f"{rec.scan_number}.1", progress=False)
    maps, _ = read_maps_file(out)
    rgb, key, _ = mosaicity_rgb(maps["com_mu"].astype(np.float64), maps["com_chi"].astype(np.float64))
    np.testing.assert_allclose(maps["mosaicity"], rgb, atol=2e-3)  # float32 COMs in the file
    assert maps["mosaicity"].shape == (32, 28, 3) and maps["mosaicity_key"].shape == key.shape
    np.testing.assert_allclose(
        maps["kam"], kam([maps["com_mu"].astype(np.float64), maps["com_chi"].astype(np.float64)]),
        rtol=1e-5, atol=1e-7, equal_nan=True,
    )
    # sub-grain boundaries stand out in the KAM map
    inside = np.isfinite(maps["kam"])
    assert np.nanpercentile(maps["kam"], 95) > 5 * np.nanmedian(maps["kam"][inside])
    with h5py.File(out) as f:
        group = f["entry/maps/mosaicity_key"]
        assert list(group.attrs["axes"]) == ["chi", "mu"]
        assert group["mu"].shape == (128,) and group["chi"][0] < group["chi"][-1]
        assert f["entry/maps/mosaicity/mosaicity"].attrs["interpretation"] == "rgba-image"


def test_mask_and_flatfield_images_from_files(redis_url, tmp_path):
    rec = simulate(redis_url, _spec(tmp_path, kind="rocking", points=21, session="img"), keep_frames=True)
    mask = np.zeros((32, 28), np.uint8)
    mask[:, :4] = 1  # pyFAI convention: non-zero = bad
    flat = np.full((32, 28), 2.0)
    with h5py.File(tmp_path / "images.h5", "w") as f:
        f["mask"] = mask
        f["flat"] = flat
    config = AnalysisConfig(
        preprocess=[{"step": "mask"}, {"step": "flatfield"}],
        images={"mask": f"{tmp_path / 'images.h5'}::/mask", "flatfield": f"{tmp_path / 'images.h5'}::/flat"},
    )
    maps, _, _, _ = process_scan(rec.filename, f"{rec.scan_number}.1", config, progress=False)
    assert np.isnan(maps["com_mu"][:, :4]).all()
    plain, _, _, _ = process_scan(rec.filename, f"{rec.scan_number}.1", AnalysisConfig(), progress=False)
    np.testing.assert_allclose(maps["intensity"][:, 4:], plain["intensity"][:, 4:] / 2, rtol=1e-9)
    np.testing.assert_allclose(maps["com_mu"][:, 4:], plain["com_mu"][:, 4:], rtol=1e-9, equal_nan=True)


def test_optional_accumulators_against_brute_force(redis_url, tmp_path):
    rec = simulate(redis_url, _spec(tmp_path, kind="strain", points=7, session="acc"), keep_frames=True)
    config = AnalysisConfig(
        accumulators=["projections", "median_background", "rolling_median", "minimum", "low_quantile", "sums_along"],
        median_step=4, rolling_window=5, low_quantile=0.2, sums_along_motor="ffz",
    )
    out = process_to_file(rec.filename, tmp_path / "acc.h5", f"{rec.scan_number}.1", config, progress=False)
    maps, _ = read_maps_file(out)
    stack = np.stack(rec.frames).astype(np.float64)
    n = len(stack)
    f32 = {"rtol": 1e-6}  # maps are stored as float32
    np.testing.assert_allclose(maps["sum"], stack.sum(0), **f32)
    np.testing.assert_allclose(maps["max"], stack.max(0), **f32)
    np.testing.assert_allclose(maps["sum_first_half"], stack[: n // 2].sum(0), **f32)
    np.testing.assert_allclose(maps["sum_second_half"], stack[n // 2 :].sum(0), **f32)
    np.testing.assert_allclose(maps["background_median"], np.median(stack[::4], axis=0), **f32)
    np.testing.assert_allclose(maps["minimum"], stack.min(0), **f32)
    np.testing.assert_allclose(maps["low_quantile"], np.quantile(stack, 0.2, axis=0, method="lower"), **f32)
    # the last frame's rolling median (window truncated at the scan end)
    np.testing.assert_allclose(maps["rolling_median"], np.median(stack[-3:], axis=0), **f32)
    ffz = rec.positions[:, 1]
    values = np.unique(ffz)
    sums = np.stack([stack[ffz == v].sum(0) for v in values])
    sums *= (sums.sum(axis=(1, 2)).mean() / sums.sum(axis=(1, 2)))[:, None, None]
    np.testing.assert_allclose(maps["projections_ffz"], sums, rtol=1e-5)
    with h5py.File(out) as f:
        np.testing.assert_allclose(f["entry/maps/projections_ffz/ffz"][()], values)


def test_pca_and_nmf_maps_against_scikit_learn(redis_url, tmp_path):
    from sklearn.decomposition import PCA

    rec = simulate(redis_url, _spec(tmp_path, kind="rocking", points=41, session="bss"), keep_frames=True)
    config = AnalysisConfig(accumulators=["pca", "nmf"], pca_components=3, nmf_components=2,
                            decomposition_binning=2)
    out = process_to_file(rec.filename, tmp_path / "bss.h5", f"{rec.scan_number}.1", config, progress=False)
    maps, _ = read_maps_file(out)
    stack = np.stack(rec.frames).astype(np.float64)
    binned = stack.reshape(41, 16, 2, 14, 2).sum(axis=(2, 4)).reshape(41, -1)
    full = PCA(n_components=3).fit(binned)
    np.testing.assert_allclose(maps["pca_variance"], full.explained_variance_ratio_, atol=1e-3)
    assert maps["pca_component_0"].shape == (16, 14) and maps["pca_weights"].shape == (41, 3)
    assert maps["nmf_component_1"].shape == (16, 14) and maps["nmf_weights"].shape == (41, 2)
    assert (maps["nmf_component_0"] >= 0).all() and (maps["nmf_weights"] >= 0).all()
    w = maps["nmf_weights"].astype(np.float64)
    h = np.stack([maps["nmf_component_0"], maps["nmf_component_1"]]).reshape(2, -1).astype(np.float64)
    from sklearn.decomposition import NMF

    ref = NMF(n_components=2, init="nndsvda", max_iter=1000).fit(binned)
    ref_err = np.linalg.norm(binned - ref.transform(binned) @ ref.components_) / np.linalg.norm(binned)
    ours = np.linalg.norm(binned - w @ h) / np.linalg.norm(binned)
    assert ours <= 1.1 * ref_err + 0.01
    with h5py.File(out) as f:
        assert list(f["entry/maps/pca_variance"].attrs["axes"]) == ["component"]


def test_live_lima_scan_with_accumulators_that_keep_frames(make_daemon, redis_url, tmp_path):
    """Accumulators that keep frames (medians) on a Lima scan in the daemon, in small
    batches: the maps equal brute force over the published stack, and the pipeline says it
    retains frames, so the worker does not hand the batch buffers back for later reads."""
    analysis = AnalysisConfig(accumulators=["median_background", "rolling_median"], median_step=3,
                              rolling_window=5, batch_size=4)
    daemon = make_daemon(DaemonConfig(publish_period=0.2, analysis=analysis))
    spec = _spec(tmp_path, kind="rocking", points=23, session="keep", image_mode="lima", frames_per_file=4)
    rec = simulate(redis_url, spec, keep_frames=True)
    status = wait_done(daemon, rec.scan_key)
    assert status.state == "complete", status.reason
    maps, _ = read_maps_file(status.path)
    stack = np.stack(rec.frames).astype(np.float64)
    np.testing.assert_allclose(maps["background_median"], np.median(stack[::3], axis=0), rtol=1e-6)
    np.testing.assert_allclose(maps["rolling_median"], np.median(stack[-3:], axis=0), rtol=1e-6)
    worker = daemon.workers[rec.scan_key]
    assert worker.pipeline is None  # a finished scan's accumulators are not kept
    assert ScanPipeline(worker.geometry, (32, 28), analysis).retains_frames
    for names, retains in (([], False), (["projections"], False), (["pca"], True), (["minimum"], True)):
        pipe = ScanPipeline(daemon.workers[rec.scan_key].geometry, (32, 28), AnalysisConfig(accumulators=names))
        assert pipe.retains_frames is retains, names


@pytest.mark.parametrize("motors", [["mu"], ["mu", "chi"], ["mu", "chi", "omega"]])
def test_float32_snapshot_is_the_float64_one_rounded(motors):
    """The daemon's snapshots (float32, what the file stores) hold the float64 maps' values
    rounded; KAM and mosaicity are made from the rounded COM maps."""
    from dfxm_online.acquisition.geometry import ScanGeometry
    from dfxm_online.acquisition.model import CrystalModel, scan_positions

    shape = (70, 64)
    axes = tuple(MotorAxis(name, -1.0, 1.0, 5) for name in motors)
    geometry = ScanGeometry(motors=axes, npoints=5 ** len(axes), detector="d", frame_shape=shape)
    model = CrystalModel.make(shape, axes, seed=2)
    positions = scan_positions(axes)
    rng = np.random.default_rng(2)
    pipeline = ScanPipeline(geometry, shape, AnalysisConfig(accumulators=["projections", "minimum"]))
    for start in range(0, len(positions), 32):
        chunk = positions[start : start + 32]
        frames = np.stack([model.frame(p, rng) for p in chunk])
        pipeline.update(frames, {a.name: chunk[:, i] for i, a in enumerate(axes)})
    wide, single = pipeline.snapshot(), pipeline.snapshot(np.float32)
    assert wide.keys() == single.keys() and {"kam", "sum", "background", "minimum"} <= set(single)
    coms = [single[f"com_{m}"] for m in motors]
    for name, values in single.items():
        assert values.dtype == (np.float32 if wide[name].dtype.kind == "f" else wide[name].dtype), name
        if name == "kam":
            expected = kam(coms).astype(np.float32)
        elif name in ("mosaicity", "mosaicity_key"):
            rgb, key, _ = mosaicity_rgb(coms[0], coms[1])
            expected = rgb if name == "mosaicity" else key
        else:
            expected = wide[name].astype(values.dtype)
        np.testing.assert_array_equal(values, expected, err_msg=name)
    assert np.isfinite(single["com_mu"]).any() and np.isnan(single["com_mu"]).any()
