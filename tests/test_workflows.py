"""The scan-end ewoks workflows, run for real: `ewoks execute` of the shipped graphs on a
simulated recorded scan, the daemon's hand-off (saved state -> post_scan.json in a local
process), a failing workflow; files read back with h5py and compared with `process`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from dfxm_online.acquisition.blissfile import open_scan
from dfxm_online.acquisition.geometry import ScanError
from dfxm_online.acquisition.simulate import SimulationSpec, simulate
from dfxm_online.config import AnalysisConfig, DaemonConfig, PostScanConfig
from dfxm_online.offline import accumulate
from dfxm_online.publish.nexus import read_group, read_maps_file
from dfxm_online.publish.scan_state import load_state, save_state, state_path
from dfxm_online.workflow.catalog import graph_names, graph_path
from tests.conftest import wait_done

ROOT = Path(__file__).resolve().parents[1]
EWOKS = [str(Path(sys.executable).with_name("ewoks")), "execute"]
CLI = [sys.executable, "-m", "dfxm_online.cli"]
#: fields that differ between two runs by nature (times, hosts, ids)
VOLATILE = ("updated", "fit_seconds", "post_scan/")


def datasets(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return {k: v for k, v in out.items() if not any(tag in k for tag in VOLATILE)}


def assert_same_file(a: Path, b: Path, rtol: float = 0.0) -> None:
    """Every dataset of `a` in `b` and equal (`rtol`: floating maps within it)."""
    da, db = datasets(a), datasets(b)
    assert set(da) == set(db), (sorted(set(da) ^ set(db)))
    for name, value in da.items():
        other = db[name]
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            np.testing.assert_allclose(other, value, rtol=rtol, atol=0, equal_nan=True, err_msg=name)
        elif isinstance(value, np.ndarray):
            np.testing.assert_array_equal(other, value, err_msg=name)
        else:
            assert other == value, name


@pytest.fixture()
def recorded(redis_url, tmp_path):
    """A mosaicity mesh with a dark scan before it, recorded through Lima files."""
    spec = SimulationSpec(kind="mosaicity", frame_shape=(24, 20), scan_dir=tmp_path / "scans", dark_frames=8,
                          session="wf", peak_counts=3000.0, background=5.0, image_mode="lima", zigzag=True)
    return simulate(redis_url, spec)


def test_shipped_graphs_are_listed_and_are_the_repository_files():
    run = subprocess.run([*CLI, "workflows", "--list"], capture_output=True, text=True, check=True)
    listed = [Path(line) for line in run.stdout.split()]
    assert {p.name for p in listed} >= {"post_scan.json", "offline.json", "offline_moments.json", "fit_band.json"}
    for path in listed:
        graph = json.loads(path.read_text())
        assert graph["nodes"], path
        assert all(link.get("required") is True for link in graph["links"]), path
        assert (ROOT / "workflows" / path.name).read_text() == path.read_text()
    assert graph_path("post_scan") in listed
    assert set(graph_names()) == {p.stem for p in listed}


def test_offline_graph_gives_the_maps_of_process(recorded, tmp_path):
    """`ewoks execute workflows/offline.json -p filename=FILE -p scan=2.1 -p output=OUT.h5`
    as typed (the scan as a number), against `dfxm-online process` of the same scan."""
    dark = f"{recorded.filename}::{recorded.dark_number}.1"
    scan = f"{recorded.scan_number}.1"
    out = tmp_path / "graph" / "maps.h5"
    out.parent.mkdir()
    run = subprocess.run([*EWOKS, str(ROOT / "workflows" / "offline.json"), "-p", f"filename={recorded.filename}",
                          "-p", f"scan={scan}", "-p", f"output={out}", "-p", f"dark={dark}"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    ref = tmp_path / "process.h5"
    run = subprocess.run([*CLI, "process", str(recorded.filename), "--scan", scan, "-o", str(ref), "--dark", dark,
                          "--no-progress"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert_same_file(ref, out)
    assert read_group(out, "fit")["peak_mu"].shape == (24, 20)
    with h5py.File(out, "r") as f:
        assert f["entry/process/post_scan/state"][()].decode() == "done"
        assert "entry/drift" in f and "entry/bss" in f
    assert out.with_suffix(".png").is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["maps.h5", "maps.png"]  # no parts left behind


def test_bad_parameter_is_refused_with_its_name(recorded, tmp_path):
    out = tmp_path / "maps.h5"
    run = subprocess.run([*EWOKS, str(ROOT / "workflows" / "offline.json"), "-p", f"filename={recorded.filename}",
                          "-p", "scan=2", "-p", f"output={out}", "-p", "fit_shards=0"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode != 0
    assert "workflow parameter fit_shards" in run.stdout + run.stderr
    assert not out.exists()


def test_state_file_round_trip_and_merge(recorded, tmp_path):
    """The saved state rebuilds a pipeline whose maps are the original's; the states of
    two halves of a scan, loaded and merged, give the whole scan's maps."""
    config = AnalysisConfig(accumulators=["projections"])
    with open_scan(recorded.filename, f"{recorded.scan_number}.1") as rec:
        whole = accumulate(rec, config, progress=False)
        geometry = whole.geometry
        halves = []
        for part in (slice(0, rec.npoints // 2), slice(rec.npoints // 2, rec.npoints)):
            from dfxm_online.online.pipeline import ScanPipeline

            p = ScanPipeline(geometry, rec.frame_shape, config, first_index=part.start, has_monitor=False)
            p.update(np.asarray(rec.frames[part]), {k: v[part] for k, v in rec.positions.items()})
            halves.append(save_state(tmp_path / f"half{part.start}.h5", p))
    path = save_state(tmp_path / "whole.h5", whole, "key-1", raw_file="x.h5")
    loaded, attrs = load_state(path)
    assert attrs["scan_key"] == "key-1" and attrs["raw_file"] == "x.h5"
    assert loaded.geometry == geometry and loaded.frames_processed == whole.frames_processed
    ref, got = whole.snapshot(), loaded.snapshot()
    for name in ref:
        np.testing.assert_array_equal(got[name], ref[name], err_msg=name)
    first, second = (load_state(p)[0] for p in halves)
    first.merge(second)
    merged = first.snapshot()
    for name in ("intensity", "com_mu", "com_chi", "fwhm_mu", "sum_first_half", "sum_second_half"):
        np.testing.assert_allclose(merged[name], ref[name], rtol=1e-9, atol=1e-9, equal_nan=True, err_msg=name)
    with h5py.File(path, "a") as f:
        f.attrs["version"] = 99
    with pytest.raises(ScanError, match="version 99"):
        load_state(path)
    assert state_path(tmp_path / "scan_3.h5") == tmp_path / "scan_3.state.h5"


def wait_workflow(daemon, key: str, timeout: float = 180.0) -> dict:
    record = daemon.post_scan.wait(key, timeout)
    assert record is not None and record.state in ("done", "failed"), f"workflow of {key} not finished: {record}"
    return vars(record)


def test_daemon_runs_post_scan_and_its_maps_are_the_offline_graph_s(make_daemon, redis_url, tmp_path,
                                                                     monkeypatch):
    """The daemon saves the state at scan end, once its final maps are on disk, and starts
    post_scan.json in a local process: the final file gets the fits and the record `done`,
    its maps equal `ewoks execute` of offline.json on the scan file the simulator wrote."""
    import dfxm_online.scan_worker as scan_worker

    save = scan_worker.save_state
    maps_state_at_save: list[str] = []

    def save_after_maps(path, *args, **kwargs):
        maps_file = Path(path).with_name(Path(path).name.replace(".state.h5", ".h5"))  # state_path's inverse
        maps_state_at_save.append(read_maps_file(maps_file)[1]["state"])
        return save(path, *args, **kwargs)

    monkeypatch.setattr(scan_worker, "save_state", save_after_maps)
    daemon = make_daemon(DaemonConfig(publish_period=0.2, post_scan=PostScanConfig(workflow="post_scan")))
    spec = SimulationSpec(kind="mosaicity", frame_shape=(24, 20), scan_dir=tmp_path / "scans", dark_frames=8,
                          session="wf", peak_counts=3000.0, background=5.0, image_mode="lima", zigzag=True)
    result = simulate(redis_url, spec)
    status = wait_done(daemon, result.scan_key)
    assert status.state == "complete", status.reason
    record = wait_workflow(daemon, result.scan_key)
    assert record["state"] == "done", record["reason"]
    assert maps_state_at_save == ["complete"]  # the final maps first, then the state
    assert record["job_id"] and record["started"] >= record["submitted"] > 0
    path = Path(status.path)
    assert daemon.status()["scans"][result.scan_key]["post_scan"]["state"] == "done"
    maps, process = read_maps_file(path)
    assert process["state"] == "complete" and process["scan_key"] == result.scan_key
    with h5py.File(path, "r") as f:
        post = {k: v[()].decode() for k, v in f["entry/process/post_scan"].items()}
        assert post["state"] == "done" and post["job_id"] == record["job_id"]
        assert "entry/fit/peak_mu" in f and "entry/drift" in f
    assert not state_path(path).exists()  # keep_state false: removed once the workflow is done
    # the viewer opens the workflow's version, fits and record included
    from dfxm_online.viewer import read_version

    shown, shown_process, _ = read_version(path)
    assert shown_process["post_scan/state"] == "done" and "fit/peak_mu" in shown
    out = tmp_path / "offline" / "maps.h5"
    out.parent.mkdir()
    run = subprocess.run([*EWOKS, str(ROOT / "workflows" / "offline.json"), "-p", f"filename={result.filename}",
                          "-p", f"scan={result.scan_number}.1", "-p", f"output={out}",
                          "-p", f"dark={result.filename}::{result.dark_number}.1"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    offline, _ = read_maps_file(out)
    for name in ("intensity", "com_mu", "com_chi", "fwhm_mu", "fwhm_chi", "skewness_mu", "kurtosis_chi"):
        np.testing.assert_allclose(maps[name], offline[name], rtol=1e-5, atol=1e-6, equal_nan=True, err_msg=name)
    fit, fit_offline = read_group(path, "fit"), read_group(out, "fit")
    for name in ("peak_mu", "peak_chi", "fwhm_mu", "amplitude"):
        np.testing.assert_allclose(fit[name], fit_offline[name], rtol=1e-4, atol=1e-5, equal_nan=True, err_msg=name)


def test_failing_workflow_is_reported_and_the_daemon_goes_on(make_daemon, redis_url, tmp_path):
    """A workflow that raises (an unknown scan-end option) is `failed` with the reason in
    the record, /status and the file; the scan's maps stay; the next scan is processed."""
    daemon = make_daemon(DaemonConfig(publish_period=0.2, post_scan=PostScanConfig(
        workflow="post_scan", fit=False, scan_end_options={"no_such_option": 1})))
    spec = SimulationSpec(kind="rocking", frame_shape=(16, 16), scan_dir=tmp_path / "scans", session="bad",
                          image_mode="array")
    first = simulate(redis_url, spec)
    status = wait_done(daemon, first.scan_key)
    record = wait_workflow(daemon, first.scan_key)
    assert record["state"] == "failed"
    assert "no_such_option" in record["reason"] and "\n" not in record["reason"]
    maps, process = read_maps_file(status.path)
    assert process["state"] == "complete" and np.isfinite(maps["com_mu"]).any()
    with h5py.File(status.path, "r") as f:
        assert f["entry/process/post_scan/state"][()].decode() == "failed"
        assert "no_such_option" in f["entry/process/post_scan/reason"][()].decode()
    assert state_path(status.path).exists()  # kept to run it again
    assert not any(p.name.endswith(".workflow") for p in Path(status.path).parent.iterdir())
    second = simulate(redis_url, spec)
    assert wait_done(daemon, second.scan_key).state == "complete"
    metrics = daemon.metrics.text().decode()
    assert 'dfxm_workflows_total{state="failed"}' in metrics


def test_a_state_that_cannot_be_saved_is_reported_and_no_workflow_runs(make_daemon, redis_url, tmp_path,
                                                                         monkeypatch):
    """The state is saved once the final maps are written: when the save fails (a full
    disk), the final file says so (`post_scan/state` failed, the reason), no workflow is
    queued, and the next scan is processed."""
    import dfxm_online.scan_worker as scan_worker

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(scan_worker, "save_state", full_disk)
    daemon = make_daemon(DaemonConfig(publish_period=0.2, post_scan=PostScanConfig(workflow="post_scan", fit=False)))
    spec = SimulationSpec(kind="rocking", frame_shape=(16, 16), scan_dir=tmp_path / "scans", session="full",
                          image_mode="array")
    first = simulate(redis_url, spec)
    status = wait_done(daemon, first.scan_key)
    # the final maps go out before the state is saved, so the failure may follow them by a moment
    deadline = time.monotonic() + 30
    while True:
        with h5py.File(status.path, "r") as f:
            post = {k: v[()].decode() for k, v in f["entry/process/post_scan"].items()}
            window = f["entry/process/moment_window_reason"][()].decode()
        if post["state"] != "queued" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert post["state"] == "failed"
    assert "accumulator state not saved" in post["reason"] and "No space left on device" in post["reason"]
    assert "applied by the scan-end workflow" not in window
    maps, process = read_maps_file(status.path)
    assert process["state"] == "complete" and np.isfinite(maps["com_mu"]).any()
    assert daemon.post_scan.wait(first.scan_key, 1.0) is None  # nothing was queued
    assert not state_path(status.path).exists()
    second = simulate(redis_url, spec)
    assert wait_done(daemon, second.scan_key).state == "complete"


def test_a_workflow_stopped_with_the_daemon_is_resumed_by_the_next(make_daemon, redis_url, tmp_path):
    """Stopped while its scan's workflow runs, the daemon records it `failed` ("daemon stopped
    during the workflow") and keeps the state; the next daemon on the same folder runs it
    again from that state, to `done`."""
    config = DaemonConfig(publish_period=0.2, post_scan=PostScanConfig(workflow="post_scan", fit=False))
    first = make_daemon(config, output_dir=tmp_path / "maps")
    spec = SimulationSpec(kind="rocking", frame_shape=(16, 16), scan_dir=tmp_path / "scans", session="stop",
                          image_mode="array")
    result = simulate(redis_url, spec)
    status = wait_done(first, result.scan_key)
    first.stop()  # the workflow process needs seconds to start: it is still running
    with h5py.File(status.path, "r") as f:
        assert f["entry/process/post_scan/reason"][()].decode() == "daemon stopped during the workflow"
    assert state_path(status.path).exists()
    second = make_daemon(config, output_dir=tmp_path / "maps")
    record = wait_workflow(second, result.scan_key)
    assert record["state"] == "done", record["reason"]
    with h5py.File(status.path, "r") as f:
        assert f["entry/process/post_scan/state"][()].decode() == "done"
        assert f["entry/process/state"][()].decode() == "complete"
        assert "entry/drift" in f


def test_the_workflow_is_chosen_per_scan_type_and_bad_keys_are_named(tmp_path):
    from dfxm_online.config import ConfigError, load_config

    path = tmp_path / "d.toml"
    path.write_text('[post_scan]\nworkflow = "post_scan"\nworkflows = {ascan = "none", dscan = "my.json"}\n')
    post = load_config(path).post_scan
    assert post.workflow_for("amesh") == "post_scan"
    assert post.workflow_for("ascan") is None and post.workflow_for("dscan") == "my.json"
    path.write_text("[post_scan]\nprocesses = 0\n")
    with pytest.raises(ConfigError, match="post_scan.processes"):
        load_config(path)
    with pytest.raises(ValueError, match="no workflow 'nope'"):
        graph_path("nope")


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling policies")
def test_local_workflow_processes_run_niced_and_idle():
    """The local pool's processes start at `nice` and, with `idle`, under SCHED_IDLE (the live
    path keeps its cores); without either they are left as they are."""
    from dfxm_online.workflow.trigger import _lower_priority

    probe = [sys.executable, "-c", "import os; print(os.nice(0), os.sched_getscheduler(0))"]

    def child(nice: int, idle: bool) -> tuple[int, int]:
        out = subprocess.run(probe, capture_output=True, text=True, check=True,
                             preexec_fn=_lower_priority(nice, idle)).stdout.split()
        return int(out[0]), int(out[1])

    base = os.nice(0)
    assert child(10, True) == (min(19, base + 10), os.SCHED_IDLE)
    assert child(5, False) == (min(19, base + 5), os.sched_getscheduler(0))
    assert _lower_priority(0, False) is None
