"""The daemon survives a store that goes away and maps that cannot be written."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

from dfxm_online.acquisition.simulate import SimulationSpec, simulate
from dfxm_online.config import DaemonConfig
from dfxm_online.daemon import Daemon
from dfxm_online.publish.nexus import read_maps_file
from dfxm_online.store import EmbeddedStore

from .conftest import wait_done


def spec(tmp_path, **kw):
    kw.setdefault("frame_shape", (16, 16))
    return SimulationSpec(kind="rocking", scan_dir=tmp_path / "scans", **kw)


def test_store_goes_away_and_comes_back(tmp_path, caplog):
    store = EmbeddedStore(tmp_path / "store")
    url = store.start()
    port = int(url.rsplit(":", 1)[1])
    daemon = Daemon(url, tmp_path / "maps", DaemonConfig(publish_period=0.2)).start()
    try:
        assert daemon.ready.wait(10)
        # the beamline side runs in its own process, killed with the store (blissdata's
        # publisher would otherwise keep retrying into the restarted store)
        publisher = subprocess.Popen(
            [sys.executable, "-m", "dfxm_online.cli", "simulate", "--redis", url, "--kind", "rocking",
             "--shape", "16", "16", "--rate", "20", "--session", "cut", "--scan-dir", str(tmp_path / "scans")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        with caplog.at_level(logging.INFO, logger="dfxm_online"):
            deadline = time.monotonic() + 20
            while not daemon.workers and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)  # a few points in
            store.stop()
            publisher.kill()
            publisher.wait()
            key = next(iter(daemon.workers))
            status = wait_done(daemon, key, timeout=30)
            assert status.state == "failed" and "data store unreachable" in status.reason
            _, process = read_maps_file(status.path)
            assert process["state"] == "failed" and process["frames_processed"] > 0
            deadline = time.monotonic() + 10
            while daemon.ready.is_set() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not daemon.ready.is_set(), "the daemon did not notice the store went away"
            store.start(port=port)
            assert daemon.ready.wait(30), "the daemon did not reconnect"
            result = simulate(url, spec(tmp_path / "after", session="after", points=11))
            assert wait_done(daemon, result.scan_key).state == "complete"
        assert any("unreachable" in r.getMessage() for r in caplog.records)
    finally:
        daemon.stop()
        store.stop()


def test_unwritable_output_is_reported_and_other_scans_go_on(make_daemon, redis_url, tmp_path, caplog):
    out = tmp_path / "maps"
    out.mkdir()
    (out / "blocked").write_text("a file where the session folder should be")
    daemon = make_daemon(output_dir=out)
    with caplog.at_level(logging.ERROR, logger="dfxm_online"):
        bad = simulate(redis_url, spec(tmp_path / "b", session="blocked", points=11))
        status = wait_done(daemon, bad.scan_key)
    assert status.state == "failed" and "could not be written" in status.reason
    assert any("cannot write" in r.getMessage() for r in caplog.records)
    assert daemon.metrics.publish_errors._value.get() >= 1
    good = simulate(redis_url, spec(tmp_path / "g", session="fine", points=11))
    assert wait_done(daemon, good.scan_key).state == "complete"
    assert not list(out.rglob("*.tmp"))
