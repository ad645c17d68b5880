"""One maps file per scan of each dataset, provenance, and any recorded scan replays / processes."""

from __future__ import annotations

import logging
import subprocess
import sys

import h5py
import numpy as np

from dfxm_online.acquisition.simulate import SimulationSpec, simulate
from dfxm_online.config import DaemonConfig
from dfxm_online.publish.layout import PathClaims, maps_path, sanitise, scan_folder, scan_key_of
from dfxm_online.publish.nexus import ProcessInfo, read_maps_file, write_maps_file

from .conftest import wait_done

CLI = [sys.executable, "-m", "dfxm_online.cli"]


def small(tmp_path, **kw) -> SimulationSpec:
    kw.setdefault("kind", "rocking")
    kw.setdefault("points", 9)
    return SimulationSpec(frame_shape=(12, 10), scan_dir=tmp_path / "scans", peak_counts=3000.0, **kw)


def test_sanitise_keeps_distinct_names_distinct_and_bounded():
    assert sanitise("sample_0001") == "sample_0001"  # safe names stay as they are
    names = ["a b", "a_b", "a/b", "a:b", "x" * 300, "x" * 301, "", "..", "é"]
    cleaned = [sanitise(n) for n in names]
    assert len(set(cleaned)) == len(names)
    assert all(len(c) <= 80 and c and "/" not in c and not c.startswith(".") for c in cleaned)


def test_layout_with_and_without_the_data_policy(tmp_path):
    assert scan_folder(tmp_path, "s", "/x/y/sample_0002.h5", "ma1234", "coll", "0002") == tmp_path / "ma1234/coll/0002"
    assert scan_folder(tmp_path, "s", "/x/y/sample_0002.h5") == tmp_path / "s" / "sample_0002"
    assert scan_folder(tmp_path, None, None) == tmp_path / "no_session" / "no_file"
    assert maps_path(tmp_path, "amesh", 3) == tmp_path / "amesh_3.h5"


def test_a_file_of_another_scan_is_never_replaced(tmp_path):
    path = tmp_path / "ascan_1.h5"
    write_maps_file(path, {"intensity": np.ones((2, 2))}, ProcessInfo(state="complete", scan_key="scan:A"))
    claims = PathClaims()
    assert claims.claim(path, "scan:A") == path  # its own file: the same path (a restart)
    assert claims.claim(path, "scan:B") == tmp_path / "ascan_1_2.h5"
    assert claims.claim(path, "scan:C") == tmp_path / "ascan_1_3.h5"  # claimed, not written yet
    assert claims.claim(path, "scan:B") == tmp_path / "ascan_1_2.h5"
    assert scan_key_of(path) == "scan:A"


def test_scan_1_of_two_datasets_gets_two_files_with_provenance(make_daemon, redis_url, tmp_path):
    daemon = make_daemon(DaemonConfig(publish_period=0.2))
    first = simulate(redis_url, small(tmp_path, dataset="sample_0001", number=1, session="same"))
    second = simulate(redis_url, small(tmp_path, dataset="sample_0002", number=1, session="same", seed=3))
    a, b = wait_done(daemon, first.scan_key), wait_done(daemon, second.scan_key)
    assert a.state == b.state == "complete"
    assert a.path == str(tmp_path / "maps" / "same" / "sample_0001" / "ascan_1.h5")
    assert b.path == str(tmp_path / "maps" / "same" / "sample_0002" / "ascan_1.h5")
    _, pa = read_maps_file(a.path)
    _, pb = read_maps_file(b.path)
    assert pa["scan_key"] == first.scan_key and pb["scan_key"] == second.scan_key
    assert pa["raw_file"] == str(first.filename) and pa["raw_entry"] == "1.1"
    assert pa["detector"] == "pco" and pa["motors"] == "mu" and pa["background_rule"] == "edges"
    assert pa["start_time"] == "" or pa["start_time"]  # a field in every file
    assert pa["end_reason"] == "SUCCESS" and pa["moment_window"] == 3.0


def test_data_policy_layout_and_a_rerun_beside_the_first_file(make_daemon, redis_url, tmp_path, caplog):
    daemon = make_daemon(DaemonConfig(publish_period=0.2))
    spec = small(tmp_path, dataset="0007", proposal="ma1234", collection="grainA", session="esrf", number=4)
    first = simulate(redis_url, spec)
    status = wait_done(daemon, first.scan_key)
    assert status.path == str(tmp_path / "maps" / "ma1234" / "grainA" / "0007" / "ascan_4.h5")
    _, process = read_maps_file(status.path)
    assert (process["proposal"], process["collection"], process["dataset"]) == ("ma1234", "grainA", "0007")
    # the same identity again (a scan file rewritten, a crashed rerun): kept beside, never over it
    spec.scan_dir = tmp_path / "rerun"
    with caplog.at_level(logging.WARNING, logger="dfxm_online"):
        again = simulate(redis_url, spec)
        rerun = wait_done(daemon, again.scan_key)
    assert rerun.path == str(tmp_path / "maps" / "ma1234" / "grainA" / "0007" / "ascan_4_2.h5")
    assert read_maps_file(status.path)[1]["scan_key"] == first.scan_key
    assert any("belongs to scan" in r.getMessage() for r in caplog.records)


def test_process_takes_the_first_scan_with_motors_and_logs_one_summary(redis_url, tmp_path):
    rec = simulate(redis_url, small(tmp_path, dark_frames=6, session="sum"))  # 1.1 is the dark scan
    out = tmp_path / "p.h5"
    run = subprocess.run([*CLI, "process", str(rec.filename), "-o", str(out), "--no-progress"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "processing 2.1 (the first with moving motors)" in run.stderr
    summary = [line for line in run.stderr.splitlines() if "background" in line and "motors mu" in line]
    assert len(summary) == 1 and "detector pco 12x10" in summary[0] and "9 points" in summary[0]
    _, process = read_maps_file(out)
    assert process["raw_entry"] == "2.1" and process["frames_processed"] == 9
    short = tmp_path / "q.h5"  # `--scan 2` is scan 2.1
    run = subprocess.run([*CLI, "process", str(rec.filename), "--scan", "2", "-o", str(short), "--no-progress",
                          "--dark", "1"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    np.testing.assert_array_equal(read_maps_file(short)[0]["com_mu"], read_maps_file(out)[0]["com_mu"])


def test_a_recorded_session_replays_dark_scan_included(make_daemon, redis_url, tmp_path):
    from dfxm_online.acquisition.replay import replay

    rec = simulate(redis_url, small(tmp_path, dark_frames=6, session="orig"))
    daemon = make_daemon(DaemonConfig(publish_period=0.2))
    dark_key = replay(redis_url, rec.filename, rec.dark_number, scan_dir=tmp_path / "replayed")
    scan_key = replay(redis_url, rec.filename, f"{rec.scan_number}.1", scan_dir=tmp_path / "replayed")
    dark = wait_done(daemon, dark_key)
    assert dark.state == "complete" and dark.dark
    dark_maps, _ = read_maps_file(dark.path)
    with h5py.File(rec.filename) as f:
        frames = f[f"{rec.dark_number}.1/measurement/pco"][()]
        replayed_title = f[f"{rec.dark_number}.1/title"][()].decode()
    np.testing.assert_allclose(dark_maps["dark"], frames.mean(axis=0), rtol=1e-6)
    with h5py.File(tmp_path / "replayed" / f"{rec.filename.stem}_replay.h5") as f:
        assert f["1.1/title"][()].decode() == replayed_title and "2.1/instrument/positioners/mu" in f
    assert wait_done(daemon, scan_key).state == "complete"
