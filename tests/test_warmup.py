"""The start-up rehearsal (`[warmup]`): its synthetic scan, and a daemon whose first real
scan starts on the rehearsal's files; cut short by a real scan; failing harmlessly."""

from __future__ import annotations

import logging
import re
import time

import numpy as np
import pytest

from dfxm_online.acquisition.simulate import simulate
from dfxm_online.config import ConfigError, DaemonConfig, WarmupConfig, load_config
from dfxm_online.daemon import REHEARSAL_FOLDER
from dfxm_online.maps import signal_mask
from dfxm_online.publish.nexus import read_maps_file
from dfxm_online.warmup import (
    OFFSET,
    PEAK,
    rehearsal_batches,
    rehearsal_geometry,
    rehearsal_positions,
)

from .conftest import wait_done
from .test_live import SHAPE, assert_maps_match, reference_maps, spec_for


# -- the synthetic scan ---------------------------------------------------------------------
@pytest.mark.parametrize("motors", [["mu"], ["mu", "chi"], ["mu", "chi", "omega"]])
def test_rehearsal_mesh_covers_every_motor_first_motor_fastest(motors):
    geometry = rehearsal_geometry((10, 12), motors, 30)
    per_motor = geometry.motors[0].npoints
    assert per_motor ** len(motors) == geometry.npoints >= 30 and per_motor >= 3
    positions = rehearsal_positions(geometry)
    assert positions.shape == (geometry.npoints, len(motors))
    grid = np.linspace(-1, 1, per_motor)
    for i in range(len(motors)):  # motor i changes every per_motor**i points
        expected = np.repeat(np.tile(grid, per_motor ** (len(motors) - 1 - i)), per_motor**i)
        np.testing.assert_array_equal(positions[:, i], expected)


def test_rehearsal_frames_are_the_separable_peak_on_the_offset():
    geometry = rehearsal_geometry((20, 30), ["mu", "chi"], 16)
    positions = rehearsal_positions(geometry)
    y = np.linspace(-1, 1, 20)[:, None]
    x = np.linspace(-1, 1, 30)[None, :]
    starts = []
    for batch in rehearsal_batches(geometry, 5):  # checked before the next batch overwrites it
        starts.append(batch.start)
        for k, frame in enumerate(batch.frames):
            mu, chi = positions[batch.start + k]
            expected = OFFSET + PEAK * (x * x + y * y < 0.8) * np.exp(
                -0.5 * ((mu - 0.5 * x) / 0.4) ** 2 - 0.5 * ((chi - 0.5 * y) / 0.4) ** 2)
            assert frame.dtype == np.uint16
            np.testing.assert_allclose(frame, np.trunc(expected), atol=1)
        np.testing.assert_array_equal(batch.positions["chi"], positions[batch.start : batch.start + len(batch.frames), 1])
        assert batch.monitor is None
    assert starts == list(range(0, geometry.npoints, 5))


def test_rehearsal_stops_between_frames():
    geometry = rehearsal_geometry((8, 8), ["mu"], 100)
    calls = []
    batches = list(rehearsal_batches(geometry, 64, lambda: calls.append(1) or len(calls) > 10))
    assert batches == []  # stopped inside the first batch, none handed out


# -- configuration --------------------------------------------------------------------------
def test_warmup_table_and_flags(tmp_path):
    path = tmp_path / "d.toml"
    path.write_text('[analysis]\nmotors = ["mu", "chi"]\n[warmup]\nframe_shape = [2048, 2048]\npoints = 100\n')
    config = load_config(path)
    assert config.warmup.enabled() and config.warmup.motor_names(config.analysis) == ["mu", "chi"]
    config = load_config(path, warmup={"motors": ["phi"]})
    assert config.warmup.frame_shape == [2048, 2048] and config.warmup.motor_names(config.analysis) == ["phi"]
    assert not load_config(None).warmup.enabled()


@pytest.mark.parametrize("table, message", [
    ("frame_shape = [2048]", "warmup.frame_shape"),
    ("frame_shape = [2048, 0]", "warmup.frame_shape"),
    ("frame_shape = [2048, 2048]", "warmup.motors (or analysis.motors)"),
    ("frame_shape = [64, 64]\nmotors = ['a', 'b', 'c', 'd']", "1 to 3 motors"),
    ("frame_shape = [64, 64]\nmotors = ['mu']\npoints = -1", "warmup.points"),
    ("frame_shape = [64, 64]\nmotor = ['mu']", "unknown key warmup.'motor'"),
])
def test_warmup_errors_name_the_key(tmp_path, table, message):
    path = tmp_path / "d.toml"
    path.write_text("[warmup]\n" + table + "\n")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path)


# -- the daemon -----------------------------------------------------------------------------
def warmed_config(**warmup) -> DaemonConfig:
    return DaemonConfig(publish_period=0.05, warmup=WarmupConfig(**warmup))


def test_first_scan_of_a_warmed_up_daemon_rewrites_the_rehearsals_files(make_daemon, redis_url, tmp_path):
    daemon = make_daemon(warmed_config(frame_shape=list(SHAPE), motors=["mu", "chi"]))
    assert daemon.wait_warmup(60)
    warmup = daemon.status()["warmup"]
    assert warmup["state"] == "done" and warmup["seconds"] > 0, warmup
    output = tmp_path / "maps"
    spares = sorted((output / ".dfxm-online-spares").glob("*.h5"))
    assert len(spares) == 2  # the rehearsal's generations, kept for the first scan
    assert not (output / REHEARSAL_FOLDER).exists()
    # its frames and files are not the daemon's
    assert daemon.metrics.registry.get_sample_value("dfxm_frames_processed_total") == 0
    assert daemon.metrics.registry.get_sample_value("dfxm_publish_seconds_count") == 0
    assert daemon.status()["scans"] == {}

    spec = spec_for(tmp_path, kind="mosaicity", frame_rate=150, seed=4, session="warm")
    result = simulate(redis_url, spec, keep_frames=True)
    status = wait_done(daemon, result.scan_key)
    assert status.state == "complete", status.reason
    # every version with maps went into a file the rehearsal wrote: none was written anew
    assert daemon.spares.taken >= 2
    maps, process = read_maps_file(status.path)
    assert process["frames_processed"] == len(result.positions)
    ref = reference_maps(result)
    assert_maps_match(maps, ref, signal_mask(ref["intensity"], 0.05) & (ref["fwhm_mu"] > 0) & (ref["fwhm_chi"] > 0))
    assert daemon.metrics.registry.get_sample_value("dfxm_frames_processed_total") == len(result.positions)


def test_a_scan_that_starts_cuts_the_rehearsal_short(make_daemon, redis_url, tmp_path):
    # a rehearsal far longer than the test: only the scan can end it
    daemon = make_daemon(warmed_config(frame_shape=list(SHAPE), motors=["mu"], points=10_000_000))
    deadline = time.monotonic() + 30
    while daemon.rehearsal.pipeline is None or not daemon.rehearsal.pipeline.frames_processed:
        assert time.monotonic() < deadline, daemon.status()["warmup"]
        time.sleep(0.01)
    spec = spec_for(tmp_path, kind="rocking", points=31, seed=6, session="cut")
    result = simulate(redis_url, spec, keep_frames=True)
    status = wait_done(daemon, result.scan_key)
    assert status.state == "complete", status.reason
    assert daemon.status()["warmup"]["state"] == "cut short"
    assert not (tmp_path / "maps" / REHEARSAL_FOLDER).exists()
    maps, _ = read_maps_file(status.path)
    ref = reference_maps(result)
    assert_maps_match(maps, ref, signal_mask(ref["intensity"], 0.05) & (ref["fwhm_mu"] > 0))


def test_a_failed_rehearsal_logs_one_line_and_the_daemon_serves(make_daemon, redis_url, tmp_path, caplog):
    # the ROI fits the scans' frames, not the rehearsal's (a wrong warm-up frame shape)
    config = warmed_config(frame_shape=[8, 8], motors=["mu"])
    config.analysis.preprocess = [{"step": "roi", "y0": 2, "y1": 30, "x0": 4, "x1": 30}]
    with caplog.at_level(logging.WARNING, logger="dfxm_online.daemon"):
        daemon = make_daemon(config)
        assert daemon.wait_warmup(60)
    warmup = daemon.status()["warmup"]
    assert warmup["state"] == "failed" and "roi" in warmup["reason"], warmup
    lines = [r.getMessage() for r in caplog.records if "warm-up failed" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0] and "the first scan starts cold" in lines[0]
    assert not (tmp_path / "maps" / REHEARSAL_FOLDER).exists()
    spec = spec_for(tmp_path, kind="rocking", points=21, seed=7, session="failed")
    result = simulate(redis_url, spec)
    status = wait_done(daemon, result.scan_key)
    assert status.state == "complete", status.reason
    maps, _ = read_maps_file(status.path)
    assert maps["intensity"].shape == (28, 26)  # the ROI, applied to the real scan
