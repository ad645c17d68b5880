"""End to end on the real store: simulator -> blissdata -> daemon -> NeXus maps."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import silx.io

from dfxm_online.acquisition.geometry import MotorAxis
from dfxm_online.acquisition.simulate import SimulationSpec, simulate
from dfxm_online.config import AnalysisConfig, DaemonConfig
from dfxm_online.online.maps import signal_mask
from dfxm_online.publish.nexus import read_maps_file

from . import brute
from .conftest import wait_done

SHAPE = (40, 36)


def spec_for(tmp_path, **kw) -> SimulationSpec:
    kw.setdefault("frame_shape", SHAPE)
    kw.setdefault("scan_dir", tmp_path / "scans")
    kw.setdefault("peak_counts", 5000.0)
    return SimulationSpec(**kw)


def reference_maps(result, window: float = 3.0, passes: int = 2, offset=None) -> dict[str, np.ndarray]:
    """Brute force over the whole published stack, with the daemon's default background (or
    `offset`) and final moments within the default window (`window` 0: over the whole scan)."""
    stack = np.stack(result.frames)
    axes = list(result.model.motors)
    if offset is None:
        offset = brute.edge_baseline(stack, result.positions, axes, 0.2)
    ref = brute.moments(stack, result.positions, offset)
    intensity = ref["intensity"]
    if window:
        mask = signal_mask(intensity, 0.05)
        ref = brute.windowed_moments(stack, result.positions, offset, window, passes, mask, axes)
        for key in list(ref):
            if key != "intensity":
                ref[key] = np.where(mask, ref[key], np.nan)
    maps = {"intensity": intensity}
    for i, ax in enumerate(axes):
        maps[f"com_{ax.name}"] = ref[f"mean{i}"]
        maps[f"fwhm_{ax.name}"] = 2.3548200450309493 * np.sqrt(ref[f"var{i}"])
        maps[f"skewness_{ax.name}"] = ref[f"skew{i}"]
        maps[f"kurtosis_{ax.name}"] = ref[f"kurt{i}"]
    for a in range(len(axes)):
        for b in range(a + 1, len(axes)):
            maps[f"cov_{axes[a].name}_{axes[b].name}"] = ref[f"cov{a}{b}"]
    return maps


def assert_maps_match(maps, ref, valid):
    assert set(ref) <= set(maps), f"missing maps: {set(ref) - set(maps)}"
    for name, expected in ref.items():
        ours = maps[name].astype(np.float64)
        scale = np.nanmax(np.abs(expected[valid])) or 1.0
        np.testing.assert_allclose(ours[valid], expected[valid], rtol=2e-5, atol=2e-6 * scale, err_msg=name)
        if name != "intensity":
            assert np.isnan(ours[~valid]).all(), f"{name}: pixels without signal must be NaN"


def assert_near_truth(maps, model):
    inside = (model.amplitude > 0.5 * model.amplitude.max()) & np.isfinite(maps[f"com_{model.motors[0].name}"])
    assert inside.sum() > 0.3 * model.amplitude.size
    for i, ax in enumerate(model.motors):
        com_err = (maps[f"com_{ax.name}"] - model.centre[i])[inside] / ax.scale
        fwhm_rel = (maps[f"fwhm_{ax.name}"] / model.fwhm[i] - 1)[inside]
        assert abs(np.median(com_err)) < 0.02, ax.name
        assert np.median(np.abs(com_err)) < 0.1, ax.name
        assert abs(np.nanmedian(fwhm_rel)) < 0.02, ax.name
        assert np.nanmedian(np.abs(fwhm_rel)) < 0.06, ax.name


@pytest.mark.parametrize("image_mode", ["array", "lima"])
@pytest.mark.parametrize("kind", ["rocking", "mosaicity"])
def test_serve_matches_brute_force_and_truth(make_daemon, redis_url, tmp_path, kind, image_mode):
    daemon = make_daemon()
    result = simulate(redis_url, spec_for(tmp_path, kind=kind, image_mode=image_mode, seed=4), keep_frames=True)
    status = wait_done(daemon, result.scan_key)
    assert status.state == "complete", status.reason
    maps, process = read_maps_file(status.path)
    assert process["state"] == "complete"
    assert process["frames_processed"] == process["frames_expected"] == len(result.positions)
    assert process["scan_key"] == result.scan_key
    ref = reference_maps(result)
    valid = signal_mask(ref["intensity"], 0.05) & (np.stack([ref[k] for k in ref if k.startswith("fwhm")]) > 0).all(0)
    assert_maps_match(maps, ref, valid)
    assert_near_truth(maps, result.model)
    with h5py.File(status.path) as f:  # NeXus structure a silx viewer relies on
        assert f["entry"].attrs["NX_class"] == "NXentry"
        assert f["entry"].attrs["default"] == "maps"
        assert f["entry/maps"].attrs["default"] == "com_mu"
        assert f["entry/maps/com_mu"].attrs["signal"] == "com_mu"
        assert f["entry/process"].attrs["NX_class"] == "NXprocess"


def test_zigzag_mesh_and_dark_scan(make_daemon, redis_url, tmp_path):
    daemon = make_daemon()
    spec = spec_for(tmp_path, kind="mosaicity", zigzag=True, dark_frames=12, seed=9, session="zz")
    result = simulate(redis_url, spec, keep_frames=True)
    dark_status = wait_done(daemon, result.dark_key)
    assert dark_status.state == "complete" and dark_status.dark
    dark_maps, _ = read_maps_file(dark_status.path)
    status = wait_done(daemon, result.scan_key)
    assert status.state == "complete", status.reason
    # the zigzag really reversed the fast motor on odd lines
    assert result.positions[21, 0] == pytest.approx(0.4) and result.positions[20, 0] == pytest.approx(0.4)
    with h5py.File(result.filename) as f:
        dark_stack = f[f"{result.dark_number}.1/measurement/pco"][()]
    np.testing.assert_allclose(dark_maps["dark"], dark_stack.mean(axis=0), rtol=1e-6)
    maps, _ = read_maps_file(status.path)
    ref = reference_maps(result)
    valid = signal_mask(ref["intensity"], 0.05) & (ref["fwhm_chi"] > 0) & (ref["fwhm_mu"] > 0)
    assert_maps_match(maps, ref, valid)
    assert_near_truth(maps, result.model)


def test_replay_gives_the_same_maps_as_process(make_daemon, redis_url, tmp_path):
    from dfxm_online.acquisition.replay import replay
    from dfxm_online.offline import process_to_file

    recorded = simulate(redis_url, spec_for(tmp_path, kind="strain", seed=2, session="rec"))
    # the moments only: the daemon runs no scan-end analyses (the ewoks workflow will)
    offline = process_to_file(recorded.filename, tmp_path / "offline.h5", f"{recorded.scan_number}.1", progress=False,
                              fit=None, scan_end=None)
    daemon = make_daemon()
    key = replay(redis_url, recorded.filename, f"{recorded.scan_number}.1", scan_dir=tmp_path / "replayed")
    status = wait_done(daemon, key)
    assert status.state == "complete", status.reason
    live, _ = read_maps_file(status.path)
    ref, process = read_maps_file(offline)
    assert process["state"] == "complete"
    assert set(live) == set(ref) and "cov_mu_ffz" in live
    for name in ref:
        np.testing.assert_allclose(live[name], ref[name], rtol=1e-6, atol=1e-7, equal_nan=True, err_msg=name)


def test_two_scans_at_once_and_a_scan_started_before_the_daemon(make_daemon, redis_url, tmp_path):
    results = {}

    def run(name, **kw):
        results[name] = simulate(redis_url, spec_for(tmp_path / name, session=name, **kw), keep_frames=True)

    early = threading.Thread(target=run, args=("early",), kwargs={"kind": "rocking", "frame_rate": 40, "seed": 1})
    early.start()
    time.sleep(0.6)  # the first scan is running before the daemon starts
    daemon = make_daemon()
    other = threading.Thread(target=run, args=("other",), kwargs={"kind": "rocking", "frame_rate": 60, "seed": 2, "points": 31})
    other.start()
    early.join()
    other.join()
    for name, result in results.items():
        status = wait_done(daemon, result.scan_key)
        assert status.state == "complete", (name, status.reason)
        maps, process = read_maps_file(status.path)
        assert process["frames_processed"] == len(result.positions)
        ref = reference_maps(result)
        valid = signal_mask(ref["intensity"], 0.05) & (ref["fwhm_mu"] > 0)
        assert_maps_match(maps, ref, valid)
    assert results["early"].scan_key != results["other"].scan_key


def test_maps_file_is_readable_while_being_rewritten(make_daemon, redis_url, tmp_path):
    daemon = make_daemon(DaemonConfig(publish_period=0.02))
    errors, reads = [], []
    stop = threading.Event()
    spec = spec_for(tmp_path, kind="rocking", frame_rate=60, points=61, session="reader")
    path = tmp_path / "maps" / "reader" / spec.dataset / "ascan_1.h5"

    def reader():
        while not stop.is_set():
            if not path.exists():
                time.sleep(0.005)
                continue
            try:
                with h5py.File(path, "r") as f:
                    state = f["entry/process/state"][()]
                    _ = [f[f"entry/maps/{m}/{m}"][()] for m in f["entry/maps"]]
                with silx.io.open(str(path)) as f:
                    _ = f["entry/process/frames_processed"][()]
                reads.append(state)
            except Exception as exc:  # any error is a torn file
                errors.append(repr(exc))

    thread = threading.Thread(target=reader)
    thread.start()
    result = simulate(redis_url, spec)
    status = wait_done(daemon, result.scan_key)
    stop.set()
    thread.join()
    assert status.state == "complete"
    assert errors == []
    assert len(reads) > 20 and reads[0] == b"running"
    assert read_maps_file(path)[1]["state"] == "complete"
    assert not list(path.parent.glob(".*.tmp")), "temporary files left behind"
    assert not path.is_symlink()


def test_frames_are_published_while_the_scan_pauses_after_a_write_in_flight(make_daemon, redis_url, tmp_path,
                                                                             monkeypatch):
    """A publish due while the previous version is still being written, with no frame
    waiting, waits for that write instead of being skipped: otherwise the frames just
    processed would stay unpublished until the next frame arrives (here: never, the scan
    pauses). Writes are slowed down so that the second frame lands during the first one."""
    from blissdata.redis_engine.store import DataStore

    from dfxm_online.acquisition.publisher import ScanDescription, ScanPublisher
    from dfxm_online.publish.version_template import VersionWriter

    writing = threading.Event()
    original = VersionWriter.write

    def slow_write(self, path, maps, info, *args, **kwargs):
        if info.frames_processed and info.state == "running":
            writing.set()
            time.sleep(1.0)
        return original(self, path, maps, info, *args, **kwargs)

    monkeypatch.setattr(VersionWriter, "write", slow_write)
    daemon = make_daemon(DaemonConfig(publish_period=0.01))
    desc = ScanDescription(
        session="pause", number=1, name="ascan", title="ascan mu -1 1 3 0.1", filename=tmp_path / "scans" / "p.h5",
        detector="pco", frame_shape=SHAPE, npoints=4, motors=[("mu", -1.0, 1.0, 4)],
    )
    pub = ScanPublisher(DataStore(redis_url), desc, "array")
    pub.start()
    frame = np.full(SHAPE, 100, dtype=np.uint16)
    pub.publish({"mu": -1.0}, frame)
    assert writing.wait(30), "the first frame's maps were never written"
    pub.publish({"mu": -1.0 / 3}, frame)  # processed while the first version is written
    path = tmp_path / "maps" / "pause" / "p" / "ascan_1.h5"
    deadline = time.monotonic() + 30
    shown = 0
    while time.monotonic() < deadline and shown < 2:
        time.sleep(0.05)
        try:
            _, process = read_maps_file(path)
            shown = process["frames_processed"]
        except (OSError, KeyError):
            pass
    assert shown == 2, f"the paused scan's maps show {shown} of its 2 frames"
    assert daemon.scan_status(pub.scan.key).state == "running"
    for mu in (1.0 / 3, 1.0):
        pub.publish({"mu": mu}, frame)
    pub.finish()
    status = wait_done(daemon, pub.scan.key)
    assert status.state == "complete" and status.frames_processed == 4


@pytest.mark.parametrize(
    "fault, expected",
    [
        ({"image_mode": None}, "no 2D image stream"),
        ({"omit_motor_streams": ["chi"]}, "motor stream axis:chi missing"),
        ({"wrong_shape_at": 30}, "frame 30 has shape (41, 36), expected (40, 36)"),
    ],
)
def test_bad_scans_are_reported_and_the_daemon_keeps_serving(make_daemon, redis_url, tmp_path, caplog, fault, expected):
    daemon = make_daemon()
    with caplog.at_level(logging.ERROR, logger="dfxm_online"):
        bad = simulate(redis_url, spec_for(tmp_path / "bad", kind="mosaicity", points=6, session="bad", **fault))
        status = wait_done(daemon, bad.scan_key)
    assert status.state == "failed"
    assert expected in status.reason
    _, process = read_maps_file(status.path)
    assert process["state"] == "failed" and expected in process["reason"]
    lines = [r.getMessage() for r in caplog.records if bad.scan_key in r.getMessage()]
    assert len(lines) == 1 and "failed" in lines[0] and "\n" not in lines[0]
    good = simulate(redis_url, spec_for(tmp_path / "good", kind="rocking", points=11, session="good"))
    assert wait_done(daemon, good.scan_key).state == "complete"


def test_aborted_scan_keeps_its_partial_maps(make_daemon, redis_url, tmp_path):
    daemon = make_daemon()
    result = simulate(redis_url, spec_for(tmp_path, kind="rocking", stop_after=25, end_reason="USER_ABORT", session="ab"))
    status = wait_done(daemon, result.scan_key)
    assert status.state == "aborted" and "USER_ABORT" in status.reason
    maps, process = read_maps_file(status.path)
    assert process["frames_processed"] == 25 and process["frames_expected"] == 41
    assert np.isfinite(maps["com_mu"]).any()


def test_metrics_and_status_endpoints(make_daemon, redis_url, tmp_path):
    import json
    import urllib.request

    from dfxm_online.store import free_port

    port = free_port()
    daemon = make_daemon(DaemonConfig(publish_period=0.2, metrics_port=port))
    result = simulate(redis_url, spec_for(tmp_path, kind="rocking", points=11, session="met"))
    wait_done(daemon, result.scan_key)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    assert "dfxm_frames_processed_total 11.0" in text
    assert 'dfxm_scans_total{state="complete"} 1.0' in text
    status = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/status").read())
    assert status["scans"][result.scan_key]["state"] == "complete"
    assert status["store_connected"] is True


def test_model_axes_are_what_the_simulator_published(tmp_path):
    spec = spec_for(tmp_path, kind="strain", points=5)
    assert [m[0] for m in spec.motor_specs()] == ["mu", "ffz"]
    assert all(isinstance(MotorAxis(*m), MotorAxis) for m in spec.motor_specs())


def test_configured_dark_file_is_used_without_a_dark_scan(make_daemon, redis_url, tmp_path):
    darks = simulate(redis_url, spec_for(tmp_path / "d", kind="rocking", points=5, dark_frames=10, session="darkfile"))
    dark_url = f"{darks.filename}::{darks.dark_number}.1"
    # background "dark": the dark alone (with "auto" the edge frames give the baseline)
    config = DaemonConfig(publish_period=0.2, dark=dark_url, analysis=AnalysisConfig(background="dark"))
    daemon = make_daemon(config)
    result = simulate(redis_url, spec_for(tmp_path / "s", kind="rocking", session="nodark", seed=3), keep_frames=True)
    status = wait_done(daemon, result.scan_key)
    assert status.state == "complete"
    maps, process = read_maps_file(status.path)
    assert process["background_rule"] == "dark"
    with h5py.File(darks.filename) as f:
        dark_stack = f[f"{darks.dark_number}.1/measurement/pco"][()]
    ref = reference_maps(result, offset=dark_stack.mean(axis=0))
    valid = signal_mask(ref["intensity"], 0.05) & (ref["fwhm_mu"] > 0)
    assert_maps_match(maps, ref, valid)


def test_consecutive_scans_each_get_their_own_final_file(make_daemon, redis_url, tmp_path):
    daemon = make_daemon(DaemonConfig(publish_period=0.05))
    finals = []
    for n, seed in enumerate((3, 4)):
        spec = spec_for(tmp_path / f"s{n}", kind="rocking", frame_rate=40, points=41, seed=seed, session="seq",
                        number=n + 1)
        result = simulate(redis_url, spec, keep_frames=True)
        status = wait_done(daemon, result.scan_key)
        assert status.state == "complete", status.reason
        finals.append((status.path, result))
    assert all(w.pipeline is None for w in daemon.workers.values())  # accumulators released
    for path, result in finals:  # each final file holds its own scan's maps
        maps, process = read_maps_file(path)
        assert process["frames_processed"] == len(result.positions) and process["scan_key"] == result.scan_key
        ref = reference_maps(result)
        valid = signal_mask(ref["intensity"], 0.05) & (ref["fwhm_mu"] > 0)
        assert_maps_match(maps, ref, valid)
        assert not list(Path(path).parent.glob(".*.tmp")), "temporary files left behind"


def test_large_frames_are_batched_within_batch_mb(make_daemon, redis_url, tmp_path, monkeypatch):
    """The daemon's batches hold at most `batch_mb` MiB of frames: 1 MiB frames, 3 MiB -> 3
    frames per batch (batch_size 64), and the maps are still the whole stack's.

    The moments are checked against brute force with the daemon's own background: on
    integer (Poisson) frames of this size some pixels' edge groups sit exactly on the 3-sigma
    rejection threshold, where rounding decides (brute.edge_baseline, two-pass, and the
    compiled one-pass statistics then differ by one group at ~0.07 % of the pixels)."""
    import dfxm_online.scan_worker as worker_module
    from dfxm_online.acquisition.frames import LiveFrameSource
    from dfxm_online.config import AnalysisConfig

    sizes: list[int] = []

    class Recording(LiveFrameSource):
        def _pop(self, count):
            batch = super()._pop(count)
            sizes.append(len(batch.frames))
            return batch

    monkeypatch.setattr(worker_module, "LiveFrameSource", Recording)
    # moment_window 0: one read of the scan (the windowed final moments read it again)
    daemon = make_daemon(DaemonConfig(publish_period=0.2, analysis=AnalysisConfig(batch_mb=3, moment_window=0)))
    spec = spec_for(tmp_path, kind="rocking", image_mode="lima", frame_shape=(1024, 512), points=21, seed=12)
    result = simulate(redis_url, spec, keep_frames=True)
    status = wait_done(daemon, result.scan_key)
    assert status.state == "complete", status.reason
    assert sum(sizes) == len(result.positions) and max(sizes) == 3, sizes
    maps, _ = read_maps_file(status.path)
    ref = brute.moments(np.stack(result.frames), result.positions, maps["background"].astype(np.float64))
    valid = signal_mask(ref["intensity"], 0.05) & (ref["var0"] > 0)
    assert valid.sum() > 0.2 * valid.size
    expected = {"intensity": ref["intensity"], "com_mu": ref["mean0"],
                "fwhm_mu": 2.3548200450309493 * np.sqrt(ref["var0"]), "skewness_mu": ref["skew0"],
                "kurtosis_mu": ref["kurt0"]}
    assert_maps_match(maps, expected, valid)


def test_live_binning_publishes_binned_maps_and_full_resolution_final_ones(make_daemon, redis_url, tmp_path,
                                                                           caplog, monkeypatch):
    """`live_binning` 2: while the scan runs, the maps file holds the maps of the frames
    binned 2x2 (sum), their own edge baseline included (the live preview is a pipeline of
    the binned frames); the last frames go out binned before the final maps (periodic
    publishes are held back for the second half, so only that can publish them); the final
    file is full resolution and equals brute force."""
    from blissdata.redis_engine.store import DataStore

    from dfxm_online.acquisition.model import CrystalModel, scan_positions
    from dfxm_online.acquisition.publisher import ScanDescription, ScanPublisher
    from dfxm_online.map_publisher import MapPublisher

    held_back = threading.Event()
    monkeypatch.setattr(MapPublisher, "interval", lambda self, behind: 1e9 if held_back.is_set() else 0.01)

    caplog.set_level(logging.DEBUG, logger="dfxm_online.map_publisher")
    axes = [MotorAxis("mu", -0.4, 0.4, 7), MotorAxis("chi", -1.0, 1.0, 5)]
    model = CrystalModel.make(SHAPE, axes, seed=4)
    positions = scan_positions(axes)
    rng = np.random.default_rng(4)
    stack = np.stack([model.frame(p, rng) for p in positions])
    daemon = make_daemon(DaemonConfig(publish_period=0.01, live_binning=2))
    desc = ScanDescription(
        session="lb", number=1, name="amesh", title="amesh mu -0.4 0.4 6 chi -1 1 4 0.1",
        filename=tmp_path / "scans" / "lb.h5", detector="pco", frame_shape=SHAPE, npoints=len(positions),
        motors=[("mu", -0.4, 0.4, 7), ("chi", -1.0, 1.0, 5)],
    )
    pub = ScanPublisher(DataStore(redis_url), desc, "array")
    pub.start()
    half = 21  # three lines of the mesh
    for p, frame in zip(positions[:half], stack[:half]):
        pub.publish({"mu": p[0], "chi": p[1]}, frame)
    path = tmp_path / "maps" / "lb" / "lb" / "amesh_1.h5"
    deadline = time.monotonic() + 30
    process: dict = {}
    while time.monotonic() < deadline and process.get("frames_processed") != half:
        time.sleep(0.05)
        try:
            live, process = read_maps_file(path)
        except (OSError, KeyError):
            pass
    assert process.get("frames_processed") == half and process["state"] == "running"
    assert process["map_binning"] == 2 and live["com_mu"].shape == (20, 18)
    binned = stack[:half].astype(np.float64).reshape(half, 20, 2, 18, 2).sum(axis=(2, 4))
    offset = brute.edge_baseline(binned, positions[:half], axes, 0.2)
    ref = brute.moments(binned, positions[:half], offset)
    np.testing.assert_allclose(live["background"], offset, rtol=1e-6)
    valid = signal_mask(ref["intensity"], 0.05) & (ref["var0"] > 0) & (ref["var1"] > 0)
    assert valid.sum() > 0.2 * valid.size
    np.testing.assert_allclose(live["intensity"], ref["intensity"], rtol=2e-5, atol=1e-3)
    np.testing.assert_allclose(live["com_mu"][valid], ref["mean0"][valid], rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(live["com_chi"][valid], ref["mean1"][valid], rtol=2e-5, atol=1e-6)
    assert live["mosaicity"].shape == (20, 18, 3) and live["kam"].shape == (20, 18)
    held_back.set()
    for p, frame in zip(positions[half:], stack[half:]):
        pub.publish({"mu": p[0], "chi": p[1]}, frame)
    pub.finish()
    status = wait_done(daemon, pub.scan.key)
    assert status.state == "complete", status.reason
    final, process = read_maps_file(status.path)
    assert process["map_binning"] == 1 and final["com_mu"].shape == SHAPE
    offset = brute.edge_baseline(stack, positions, axes, 0.2)
    whole = brute.moments(stack, positions, offset)
    valid = signal_mask(whole["intensity"], 0.05)
    full = brute.windowed_moments(stack, positions, offset, 3.0, 2, valid, axes)  # defaults
    valid &= (full["var0"] > 0) & (full["var1"] > 0)
    np.testing.assert_allclose(final["com_mu"][valid], full["mean0"][valid], rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(final["fwhm_chi"][valid], 2.3548200450309493 * np.sqrt(full["var1"][valid]),
                               rtol=2e-5)
    last = f"running version, {len(positions)} frames"
    assert any(last in r.getMessage() for r in caplog.records), "the last frames were not published binned first"


def test_final_maps_are_right_when_the_full_resolution_updates_fall_behind(make_daemon, redis_url, tmp_path,
                                                                            monkeypatch):
    """With a live preview the full-resolution updates run behind the frame reads. When
    they fall several batches behind, the frame source must not put new frames where frames
    still waiting for them are (it reused a buffer from its start as soon as one of its
    batches was done): the final one-pass maps equal brute force of every frame. The live
    batches are gathered into fewer full-resolution updates (`GatheredBatches`)."""
    from blissdata.redis_engine.store import DataStore

    from dfxm_online.acquisition.model import CrystalModel, scan_positions
    from dfxm_online.acquisition.publisher import ScanDescription, ScanPublisher
    from dfxm_online.scan_worker import ScanWorker

    add = ScanWorker._add_full_resolution
    updated: list[int] = []  # frames per full-resolution update

    def behind(self, pipeline, frames, *args):  # a busy machine: each update takes a while
        time.sleep(0.04)
        updated.append(frames.shape[0])
        add(self, pipeline, frames, *args)

    monkeypatch.setattr(ScanWorker, "_add_full_resolution", behind)
    axes = [MotorAxis("mu", -0.4, 0.4, 40)]
    model = CrystalModel.make(SHAPE, axes, seed=8)
    positions = scan_positions(axes)
    stack = np.stack([model.frame(p, np.random.default_rng(8 + i)) for i, p in enumerate(positions)])
    daemon = make_daemon(DaemonConfig(publish_period=0.01, live_binning=2,
                                      analysis=AnalysisConfig(moment_window=0, batch_size=8, batch_delay=0.0)))
    desc = ScanDescription(
        session="lag", number=1, name="ascan", title="ascan mu -0.4 0.4 39 0.1",
        filename=tmp_path / "scans" / "lag.h5", detector="pco", frame_shape=SHAPE, npoints=len(positions),
        motors=[("mu", -0.4, 0.4, 40)],
    )
    pub = ScanPublisher(DataStore(redis_url), desc, "array")
    pub.start()
    for p, frame in zip(positions, stack):  # one point at a time, faster than the updates
        pub.publish({"mu": p[0]}, frame)
        time.sleep(0.01)
    pub.finish()
    status = wait_done(daemon, pub.scan.key)
    assert status.state == "complete", status.reason
    # the live batches were gathered into fewer full-resolution updates, every frame once
    assert sum(updated) == len(positions) and max(updated) > 1 and len(updated) < len(positions) / 2, updated
    final, process = read_maps_file(status.path)
    assert process["map_binning"] == 1 and final["intensity"].shape == SHAPE
    offset = brute.edge_baseline(stack, positions, axes, 0.2)
    ref = brute.moments(stack, positions, offset)
    np.testing.assert_allclose(final["sum"], stack.astype(np.float64).sum(axis=0), rtol=1e-6)
    np.testing.assert_allclose(final["intensity"], ref["intensity"], rtol=2e-5, atol=1e-3)
    valid = signal_mask(ref["intensity"], 0.05) & (ref["var0"] > 0)
    np.testing.assert_allclose(final["com_mu"][valid], ref["mean0"][valid], rtol=2e-5, atol=1e-6)
