"""The scan-end workflows on real ewoksjob (Celery) workers: two `ewoksjob worker` processes
started here, the embedded store as broker and result backend (databases 1 and 2), the
daemon submitting post_scan.json, a fit sharded over the workers, a worker killed mid-band."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

from dfxm_online.acquisition.simulate import SimulationSpec, simulate
from dfxm_online.config import DaemonConfig, PostScanConfig
from dfxm_online.workflow import stages
from dfxm_online.workflow.job import Job
from dfxm_online.workflow.parts import read_part
from dfxm_online.workflow.run import execute
from dfxm_online.workflow.sharding import fit_sharded
from tests.conftest import wait_done
from tests.test_workflows import wait_workflow

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Workers:
    queue: str
    config: Path
    procs: list[subprocess.Popen]
    logs: list[Path]


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


@pytest.fixture(scope="module")
def workers(store, tmp_path_factory):
    """Two ewoksjob workers (one process slot each) on a queue of their own."""
    tmp = tmp_path_factory.mktemp("ewoksjob")
    config = tmp / "celeryconfig.py"
    shutil.copy(ROOT / "services" / "celeryconfig.py", config)
    queue = f"dfxm-test-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "EWOKS_CONFIG_URI": str(config), "DFXM_CELERY_REDIS": store.url}
    procs, logs = [], []
    for i in (1, 2):
        log = tmp / f"worker{i}.log"
        procs.append(subprocess.Popen(
            [str(Path(sys.executable).with_name("ewoksjob")), "worker", "-Q", queue, "--concurrency", "1",
             "-n", f"w{i}-{queue}@%h", "--loglevel", "INFO", "--without-gossip", "--without-mingle"],
            env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=tmp))
        logs.append(log)
    deadline = time.monotonic() + 120
    while not all("ready." in log.read_text() for log in logs):
        assert time.monotonic() < deadline, "ewoksjob workers did not start: " + logs[0].read_text()[-2000:]
        assert all(p.poll() is None for p in procs), logs[0].read_text()[-2000:]
        time.sleep(0.2)
    previous = {k: os.environ.get(k) for k in ("EWOKS_CONFIG_URI", "DFXM_CELERY_REDIS")}
    os.environ.update(EWOKS_CONFIG_URI=str(config), DFXM_CELERY_REDIS=store.url)  # this process is a client
    yield Workers(queue, config, procs, logs)
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _spec(tmp_path: Path) -> SimulationSpec:
    return SimulationSpec(kind="mosaicity", frame_shape=(24, 20), scan_dir=tmp_path / "scans", dark_frames=8,
                          session="job", peak_counts=3000.0, background=5.0, image_mode="lima", zigzag=True)


def _entry_datasets(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f["entry"].visititems(lambda name, obj: out.__setitem__(name, obj[()])
                              if isinstance(obj, h5py.Dataset) and not name.startswith("process") else None)
    return out


def close_to_scale(got: np.ndarray, ref: np.ndarray, rel: float, name: str) -> None:
    """`got` equals `ref` within `rel` of `ref`'s largest magnitude (NaN where it is NaN)."""
    scale = float(np.nanmax(np.abs(ref))) if np.isfinite(ref).any() else 0.0
    np.testing.assert_allclose(got, ref, rtol=rel, atol=rel * scale, equal_nan=True, err_msg=name)


def assert_same_fit(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> None:
    """The fit maps of a sharded fit against the one-process fit: integer maps (iterations,
    converged) identical, floating ones to rounding: fresh-clone runs saw a few of 480 pixels
    differ in the last bits (1.9e-16 relative; a background of 0.0018 by 1.1e-14). Each pixel's fit is independent; its place in
    the kernel's block of pixels moves with its band, the likely cause."""
    assert set(got) == set(ref)
    for name, values in ref.items():
        if values.dtype.kind == "f":
            # to 1e-9 of the map's scale: a background near 0 moved by 1e-14 (6e-12 of itself)
            close_to_scale(got[name], values, 1e-9, name)
        else:
            np.testing.assert_array_equal(got[name], values, err_msg=name)


def test_daemon_submits_post_scan_to_an_ewoksjob_worker(workers, make_daemon, redis_url, tmp_path):
    """The job id is Celery's, the record reaches `done`, and the maps equal the same graph
    run in this process from the same saved state. The fit is sharded in two bands from
    inside the worker's task (the other band goes to the other worker)."""
    daemon = make_daemon(DaemonConfig(publish_period=0.2, post_scan=PostScanConfig(
        workflow="post_scan", ewoksjob=True, celery_config=str(workers.config), queue=workers.queue,
        keep_state=True, fit_shards=2)))
    result = simulate(redis_url, _spec(tmp_path))
    status = wait_done(daemon, result.scan_key)
    record = wait_workflow(daemon, result.scan_key)
    assert record["state"] == "done", record["reason"]
    assert record["queue"] == workers.queue and len(record["job_id"]) == 36
    path = Path(status.path)
    with h5py.File(path, "r") as f:
        assert f["entry/process/post_scan/job_id"][()].decode() == record["job_id"]
        assert f["entry/process/post_scan/state"][()].decode() == "done"
        assert "entry/fit/peak_mu" in f
        assert f["entry/process/fit_shards"][()] == 2
    assert any(record["job_id"] in log.read_text() for log in workers.logs)
    # the same graph, in this process, from the state the daemon saved
    local = tmp_path / "local" / "maps.h5"
    local.parent.mkdir()
    execute("post_scan", {"filename": str(result.filename), "scan": f"{result.scan_number}.1",
                          "output": str(local), "state": str(path.with_name(f"{path.stem}.state.h5")),
                          "scan_key": result.scan_key})
    ref, got = _entry_datasets(local), _entry_datasets(path)
    assert set(ref) == set(got)
    for name, value in ref.items():
        if name.startswith("fit/") and value.dtype.kind == "f":  # sharded against one band (assert_same_fit), stored as float32
            close_to_scale(got[name], value, 1e-6, name)
        else:
            np.testing.assert_array_equal(got[name], value, err_msg=name)


def _prepared_job(redis_url, tmp_path) -> Job:
    result = simulate(redis_url, _spec(tmp_path))
    job = Job(filename=str(result.filename), scan=f"{result.scan_number}.1", output=str(tmp_path / "out" / "maps.h5"),
              dark=f"{result.filename}::{result.dark_number}.1")
    return stages.moments(stages.read_scan(job))


def test_sharded_fit_over_two_workers_equals_the_one_process_fit(workers, redis_url, tmp_path):
    job = _prepared_job(redis_url, tmp_path)
    one = read_part(stages.fit_band(job).parts[-1]).groups["fit"]
    sharded = fit_sharded(job.model_copy(update={"fit_shards": 3, "ewoksjob": True, "queue": workers.queue}))
    part = read_part(sharded.parts[-1])
    assert part.process["fit_shards"] == 3
    assert_same_fit(part.groups["fit"], one)
    logs = "".join(log.read_text() for log in workers.logs)
    assert logs.count("Task ewoksjob.apps.ewoks.execute_graph") >= 2  # the bands ran on the workers


def test_a_worker_killed_mid_band_gets_its_band_fitted_again(workers, redis_url, tmp_path, caplog):
    """Both workers' process slots are frozen (SIGSTOP) before the bands are submitted, so
    that each worker holds one band it cannot finish; one slot is killed (SIGKILL) and the
    other thawed. The killed worker's band is fitted again: Celery hands it to the new
    process slot, or, had the slot accepted it, it fails with WorkerLostError and the fit
    stage submits it again. The assembled fit is still the one-process fit."""
    job = _prepared_job(redis_url, tmp_path)
    one = read_part(stages.fit_band(job).parts[-1]).groups["fit"]
    slots = [_children(p.pid) for p in workers.procs]
    assert all(len(s) == 1 for s in slots), slots
    before = [log.read_text().count(" received") for log in workers.logs]
    for (pid,) in slots:
        os.kill(pid, signal.SIGSTOP)
    out: dict[str, Job] = {}
    caplog.set_level("INFO", logger="dfxm_online.workflow.sharding")
    thread = threading.Thread(target=lambda: out.setdefault("job", fit_sharded(job.model_copy(update={
        "fit_shards": 3, "ewoksjob": True, "queue": workers.queue}))))
    thread.start()
    deadline = time.monotonic() + 60
    while not all(log.read_text().count(" received") > n for log, n in zip(workers.logs, before, strict=True)):
        assert time.monotonic() < deadline, "the bands did not reach both workers"
        time.sleep(0.05)
    os.kill(slots[1][0], signal.SIGKILL)
    os.kill(slots[0][0], signal.SIGCONT)
    thread.join(180)
    assert not thread.is_alive() and "job" in out
    deadline = time.monotonic() + 20
    while "signal 9" not in workers.logs[1].read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = workers.logs[1].read_text()
    assert "exited with 'signal 9 (SIGKILL)'" in log
    retried = "submitted again" in caplog.text
    redispatched = log.count(" succeeded in ") > log[: log.index("signal 9")].count(" succeeded in ")
    assert retried or redispatched
    assert _children(workers.procs[1].pid) not in ([], slots[1])  # Celery started a new process slot
    assert_same_fit(read_part(out["job"].parts[-1]).groups["fit"], one)
