"""The daemon as a service: SIGTERM stops it cleanly, passwords stay out of logs and /status."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

from dfxm_online.acquisition.simulate import SimulationSpec, simulate
from dfxm_online.daemon import redact
from dfxm_online.publish.nexus import read_maps_file


def test_sigterm_stops_the_daemon_and_marks_the_running_scan_aborted(redis_url, tmp_path):
    """systemd stops a service with SIGTERM; a daemon started with SIGINT ignored (from a
    script run in the background) must stop on it too, with its scan marked aborted."""
    out = tmp_path / "maps"
    daemon = subprocess.Popen(
        [sys.executable, "-m", "dfxm_online.cli", "serve", "--redis", redis_url, "--output-dir", str(out),
         "--publish-period", "0.1"],
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN), stderr=subprocess.PIPE, text=True,
    )
    try:
        spec = SimulationSpec(kind="rocking", points=400, frame_shape=(16, 12), frame_rate=40,
                              scan_dir=tmp_path / "scans", session="term", peak_counts=3000.0)
        publisher = threading.Thread(target=simulate, args=(redis_url, spec), daemon=True)
        publisher.start()
        path = out / "term" / "sample_0001" / "ascan_1.h5"
        deadline = time.monotonic() + 60
        frames = 0
        while frames < 20 and time.monotonic() < deadline:
            time.sleep(0.1)
            try:
                frames = read_maps_file(path)[1]["frames_processed"]
            except (OSError, KeyError):
                pass
        assert frames >= 20, "the daemon never published the running scan"
        t0 = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(15)
        assert code == 0 and time.monotonic() - t0 < 10.5
        _, process = read_maps_file(path)
        assert process["state"] == "aborted" and process["reason"] == "daemon stopped during the scan"
        assert "SIGTERM received: stopping" in daemon.stderr.read()
        assert not list(path.parent.glob(".*.tmp"))
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()


def test_passwords_are_redacted(make_daemon, redis_url):
    assert redact("redis://user:secret@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact("rediss://:pw@host:1") == "rediss://:***@host:1"
    assert redact("redis://host:6379") == "redis://host:6379"
    daemon = make_daemon()
    assert daemon.status()["redis_url"] == redact(redis_url)
