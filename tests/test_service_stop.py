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
    lines: list[str] = []
    following = threading.Event()

    def read_log() -> None:  # drains the daemon's stderr so that it never blocks on a full pipe
        for line in daemon.stderr:
            lines.append(line)
            if "following scans on" in line:
                following.set()

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    publisher = None
    try:
        # The scan starts once the daemon follows the store, and lasts 10 s: a daemon slow to
        # start (a cold machine) could otherwise catch up with a short scan that had already ended.
        assert following.wait(60), "".join(lines)
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
        reader.join(10)
        assert any("SIGTERM received: stopping" in line for line in lines), "".join(lines)
        assert not list(path.parent.glob(".*.tmp"))
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        if publisher is not None:
            publisher.join(30)  # the scan's publisher ends before the next test empties the store


def test_passwords_are_redacted(make_daemon, redis_url):
    assert redact("redis://user:secret@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact("rediss://:pw@host:1") == "rediss://:***@host:1"
    assert redact("redis://host:6379") == "redis://host:6379"
    daemon = make_daemon()
    assert daemon.status()["redis_url"] == redact(redis_url)


def test_a_malformed_store_url_is_one_line_and_exit_code_2(tmp_path):
    run = subprocess.run([sys.executable, "-m", "dfxm_online.cli", "serve", "--redis", "http://user:pw@host",
                          "--output-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Redis URL must specify one of the following schemes" in lines[0]
    assert "pw" not in run.stderr and "***" in run.stderr


def test_an_unreachable_store_is_logged_once_and_its_return_once(tmp_path, caplog):
    import logging

    from dfxm_online.daemon import Daemon
    from dfxm_online.store import EmbeddedStore, free_port

    port = free_port()
    daemon = Daemon(f"redis://127.0.0.1:{port}", tmp_path / "maps")
    with caplog.at_level(logging.INFO, logger="dfxm_online.daemon"):
        daemon.start()
        try:
            time.sleep(3.0)  # several retries
            store = EmbeddedStore(tmp_path / "store")
            store.start(port=port)
            try:
                assert daemon.ready.wait(30)
            finally:
                daemon.stop()
                store.stop()
        finally:
            daemon.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("data store") and "unreachable:" in m for m in messages) == 1, messages
    assert sum("reachable again" in m for m in messages) == 1, messages


def test_control_characters_from_outside_stay_on_one_line():
    from dfxm_online.logtext import one_line

    assert one_line("ascan mu 0 1\nFAKE ERROR scan x failed") == "ascan mu 0 1 FAKE ERROR scan x failed"
    assert one_line("red\x1b[31m") == "red\\x1b[31m"
    assert len(one_line("x" * 10000)) == 500
