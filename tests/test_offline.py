"""Offline `process` (CLI and ewoks workflow), the store CLI and the configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dfxm_online.acquisition.simulate import SimulationSpec, simulate
from dfxm_online.config import ConfigError, load_config
from dfxm_online.publish.nexus import read_maps_file
from dfxm_online.store import EmbeddedStore

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "dfxm_online.cli"]


@pytest.fixture()
def recorded(redis_url, tmp_path):
    spec = SimulationSpec(kind="mosaicity", points=9, frame_shape=(24, 20), scan_dir=tmp_path / "scans",
                          dark_frames=8, session="off", peak_counts=5000.0, zigzag=True)
    return simulate(redis_url, spec, keep_frames=True)


def test_process_cli_and_ewoks_workflow_agree(recorded, tmp_path):
    out = tmp_path / "cli.h5"
    scan = f"{recorded.scan_number}.1"
    dark = f"{recorded.filename}::{recorded.dark_number}.1"
    run = subprocess.run([*CLI, "process", str(recorded.filename), "--scan", scan, "--dark", dark,
                          "-o", str(out), "--no-progress"], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    maps, process = read_maps_file(out)
    assert process["state"] == "complete" and process["frames_processed"] == len(recorded.positions)
    assert "cov_mu_chi" in maps and np.isfinite(maps["com_chi"]).sum() > 100

    from ewoks import execute_graph

    result = execute_graph(
        str(ROOT / "workflows" / "offline_moments.json"),
        inputs=[
            {"id": "moments", "name": "filename", "value": str(recorded.filename)},
            {"id": "moments", "name": "scan", "value": scan},
            {"id": "moments", "name": "dark", "value": dark},
            {"id": "moments", "name": "output", "value": str(tmp_path / "ewoks.h5")},
        ],
    )
    assert result["frames_processed"] == len(recorded.positions)
    wf_maps, _ = read_maps_file(result["output"])
    for name in maps:
        np.testing.assert_array_equal(wf_maps[name], maps[name])


def test_process_reports_bad_input_clearly(recorded, tmp_path):
    run = subprocess.run([*CLI, "process", str(recorded.filename), "--scan", "9.1", "-o", str(tmp_path / "x.h5")],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "has no scan 9.1" in run.stderr
    run = subprocess.run([*CLI, "process", str(recorded.filename), "--scan", f"{recorded.scan_number}.1",
                          "--motors", "nope", "-o", str(tmp_path / "x.h5")], capture_output=True, text=True)
    assert run.returncode == 2 and "motor nope not recorded" in run.stderr
    assert not (tmp_path / "x.h5").exists()


def test_store_cli_start_status_stop_and_stale_pid(tmp_path):
    state = tmp_path / "state"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = subprocess.run([*CLI, "store", "start", "--state-dir", str(state)], capture_output=True, text=True, env=env)
    assert start.returncode == 0, start.stderr
    url = start.stdout.strip().splitlines()[-1]
    assert url.startswith("redis://127.0.0.1:")
    status = subprocess.run([*CLI, "store", "status", "--state-dir", str(state)], capture_output=True, text=True)
    info = json.loads(status.stdout)
    assert info["running"] and info["url"] == url
    from blissdata.redis_engine.store import DataStore

    assert DataStore(url).search_existing_scans()[1] == []  # blissdata database initialised
    pid = info["pid"]
    stop = subprocess.run([*CLI, "store", "stop", "--state-dir", str(state)], capture_output=True, text=True)
    assert stop.returncode == 0 and "stopped" in stop.stdout
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    # a stale pid file (process gone) is detected and removed
    state.mkdir(exist_ok=True)
    (state / "store.json").write_text(json.dumps({"pid": 999999, "port": 1, "host": "127.0.0.1"}))
    store = EmbeddedStore(state)
    assert store.info() is None and not (state / "store.json").exists()
    status = subprocess.run([*CLI, "store", "status", "--state-dir", str(state)], capture_output=True, text=True)
    assert status.returncode == 1 and json.loads(status.stdout)["running"] is False


def test_config_file_flags_and_errors(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('publish_period = 2\n[analysis]\nmotors = ["mu", "chi"]\nbackground = "edges"\n')
    config = load_config(cfg, batch_size=8)
    assert config.publish_period == 2.0 and config.analysis.motors == ["mu", "chi"]
    assert config.analysis.background == "edges" and config.analysis.batch_size == 8
    cfg.write_text("[analysis]\nbackgrund = 'dark'\n")
    with pytest.raises(ConfigError, match="unknown key analysis.'backgrund'"):
        load_config(cfg)
    with pytest.raises(ConfigError, match="background='bright'"):
        load_config(None, background="bright")
    with pytest.raises(ConfigError, match="expected float"):
        load_config(None, publish_period="fast")


@pytest.mark.parametrize(("shape", "dtype", "batch_mb", "expected"), [
    ((2048, 2048), np.uint16, 256, 32),  # 8 MiB frames: 32 fit in 256 MiB
    ((2048, 2048), np.float32, 256, 16),
    ((512, 512), np.uint16, 256, 64),  # batch_size is the bound
    ((2048, 2048), np.uint16, 0, 64),  # 0: no bound
    ((2048, 2048), np.uint16, 4, 1),  # at least one frame
    (None, np.uint16, 256, 64),  # unknown shape or dtype: batch_size
    ((-1, -1), np.uint16, 256, 64),
    ((2048, 2048), None, 256, 64),
])
def test_frames_per_batch_bounds_a_batch_in_bytes(shape, dtype, batch_mb, expected):
    config = load_config(None, batch_mb=batch_mb)
    assert config.analysis.frames_per_batch(shape, dtype) == expected


def test_process_batches_large_frames_within_batch_mb(redis_url, tmp_path, monkeypatch):
    """`process` reads 1 MiB frames 2 at a time with batch_mb = 2 (the window then by bands
    of rows within two frames' bytes), and gets the maps of unbounded batches."""
    from dfxm_online import offline
    from dfxm_online.config import AnalysisConfig
    from dfxm_online.offline import process_scan
    from dfxm_online.online import pipeline, window_bands

    spec = SimulationSpec(kind="rocking", points=9, frame_shape=(1024, 512), scan_dir=tmp_path / "scans",
                          session="big", peak_counts=5000.0)
    rec = simulate(redis_url, spec)
    asked: list[int] = []
    batches = offline.read_ahead  # how process reads a scan's frames, in batches

    def recording(rec, batch_size, reuse=True):
        asked.append(batch_size)
        return batches(rec, batch_size, reuse)

    monkeypatch.setattr(offline, "read_ahead", recording)
    bands: list[tuple[int, int]] = []
    windowed = window_bands.windowed_moment_maps

    def recording_bands(*args, **kwargs):
        out = windowed(*args, **kwargs)
        bands.append(window_bands.band_rows(9, (1024, 512), 2, args[10] // 2))
        return out

    monkeypatch.setattr(pipeline, "windowed_moment_maps", recording_bands)
    scan = f"{rec.scan_number}.1"
    bounded, _, _, n = process_scan(rec.filename, scan, AnalysisConfig(batch_mb=2), progress=False)
    whole, _, _, _ = process_scan(rec.filename, scan, AnalysisConfig(batch_mb=0), progress=False)
    assert asked == [2, 64] and n == 9  # the moments' batches; the window's bands:
    assert len(bands[0]) == 10 and max(b - a for a, b in bands[0]) * 9 * 512 * 2 <= 1 << 20
    assert bands[1] == [(0, 1024)]  # 64 frames' bytes hold the 9 frames
    for name, values in whole.items():
        np.testing.assert_allclose(bounded[name], values, rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=name)


def test_batch_mb_is_a_flag_and_must_not_be_negative():
    assert load_config(None, batch_mb=16).analysis.batch_mb == 16
    with pytest.raises(ConfigError, match="batch_mb"):
        load_config(None, batch_mb=-1)


def test_shipped_service_config_is_valid():
    config = load_config(ROOT / "services" / "dfxm-online.toml")
    assert config.metrics_port == 9108 and config.analysis.background == "auto"


def test_process_cli_preprocessing_and_accumulator_flags(recorded, tmp_path):
    out = tmp_path / "flags.h5"
    run = subprocess.run(
        [*CLI, "process", str(recorded.filename), "--scan", f"{recorded.scan_number}.1", "-o", str(out),
         "--no-progress", "--preprocess", '[{"step": "hot_pixels"}, {"step": "binning", "factor": 2}]',
         "--accumulators", "projections", "minimum", "--batch-mb", "7"],
        capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stderr
    maps, process = read_maps_file(out)
    assert maps["com_mu"].shape == (12, 10) and maps["minimum"].shape == (12, 10)
    config = json.loads(process["config"])
    assert config["preprocess"][1] == {"step": "binning", "factor": 2} and config["batch_mb"] == 7
    bad = subprocess.run([*CLI, "process", str(recorded.filename), "-o", str(out), "--preprocess",
                          '[{"step": "blur"}]'], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown preprocess step 'blur'" in bad.stderr


def test_read_ahead_gives_the_scans_batches(redis_url, tmp_path):
    """The read-ahead batches (reused buffers or fresh arrays) are the recorded scan's batches:
    same starts, frames, positions; each batch's frames intact until the next is asked for."""
    from dfxm_online.acquisition.blissfile import open_scan
    from dfxm_online.offline import read_ahead

    spec = SimulationSpec(kind="rocking", points=7, frame_shape=(32, 24), scan_dir=tmp_path / "scans",
                          session="ahead", peak_counts=500.0)
    rec = simulate(redis_url, spec)
    with open_scan(rec.filename, f"{rec.scan_number}.1") as scan:
        expected = list(scan.batches(3))
        for reuse in (True, False):
            got = []
            for batch in read_ahead(scan, 3, reuse):
                got.append((batch.start, batch.frames.copy(), batch.positions))
            assert [g[0] for g in got] == [b.start for b in expected] == [0, 3, 6]
            for (_, frames, positions), want in zip(got, expected):
                assert np.array_equal(frames, want.frames)
                assert positions.keys() == want.positions.keys()
                for name, values in positions.items():
                    assert np.array_equal(values, want.positions[name])


@pytest.mark.parametrize("module, absent", [
    ("dfxm_online.offline", ("sklearn", "blissdata", "scipy.optimize")),
    ("dfxm_online.daemon", ("sklearn", "scipy.optimize")),
])
def test_a_process_start_does_not_import_what_only_some_analyses_use(module, absent):
    """scikit-learn (PCA, domains) and scipy.optimize (NMF) load when an analysis needs
    them, blissdata only for live scans: together 1.5-2 s of every `process`, daemon and
    workflow start (measured), for analyses most runs do not make."""
    code = f"import sys, {module}; print(' '.join(m for m in {absent!r} if m in sys.modules))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert run.stdout.strip() == ""
