"""Fixtures: a real embedded blissdata store (valkey + RedisJSON + RediSearch) and daemons."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from dfxm_online.config import DaemonConfig
from dfxm_online.daemon import Daemon, ScanStatus
from dfxm_online.store import EmbeddedStore


@pytest.fixture(autouse=True)
def _no_scan_end_workflow(monkeypatch):
    """Daemons of the tests start no scan-end workflow unless a test configures one
    ([post_scan] workflow): most tests are about the live path, and a workflow process per
    scan would multiply their time (tests/test_workflows.py covers the workflows)."""
    import dfxm_online.config

    monkeypatch.setattr(dfxm_online.config, "DEFAULT_POST_SCAN_WORKFLOW", "none")


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Iterator[EmbeddedStore]:
    """One store for the whole test session, started by the project itself, stopped after."""
    s = EmbeddedStore(tmp_path_factory.mktemp("store"))
    s.start()
    yield s
    s.stop()


@pytest.fixture()
def redis_url(store: EmbeddedStore) -> str:
    """The store, emptied: a daemon adopts every scan the store holds without a final maps
    file in its output folder (a restart's reconciliation), so each test starts from an
    empty store, as a beamline's daemon starts from its own history."""
    import redis
    from blissdata.redis_engine.store import DataStore

    redis.Redis.from_url(store.url).flushdb()  # database 0: the ewoksjob tests keep their broker in 1 and 2
    DataStore(store.url, init_db=True)
    return store.url


@pytest.fixture()
def make_daemon(redis_url, tmp_path):
    """Start daemons on the test store; all are stopped at the end of the test."""
    started: list[Daemon] = []

    def make(config: DaemonConfig | None = None, output_dir=None) -> Daemon:
        daemon = Daemon(redis_url, output_dir or tmp_path / "maps", config or DaemonConfig(publish_period=0.2))
        daemon.start()
        assert daemon.ready.wait(10), "daemon did not connect to the store"
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        daemon.stop()


def wait_done(daemon: Daemon, key: str, timeout: float = 60.0) -> ScanStatus:
    """Wait until the daemon has finished the scan `key` (any final state)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = daemon.scan_status(key)
        worker = daemon.workers.get(key)
        if status is not None and worker is not None and not worker.is_alive():
            return status
        time.sleep(0.05)
    raise AssertionError(f"scan {key} not finished within {timeout} s: {daemon.scan_status(key)}")


def pytest_report_header(config) -> str:
    """The kernels' code path of the test process (test_kernel_paths.py runs the others)."""
    from dfxm_online.online import kernels

    return f"kernels: {kernels.code_path()}"


def pytest_terminal_summary(terminalreporter) -> None:
    """Name the kernel code paths the session checked (tests/test_kernel_paths.py)."""
    from tests import kernel_checks

    if kernel_checks.EXERCISED:
        terminalreporter.section("kernel code paths checked")
        for path in kernel_checks.EXERCISED:
            terminalreporter.write_line(path)
