"""The daemon's side of the scan-end workflows: start one when a scan ends, follow it to its
end, and say where it is (the maps file's /entry/process/post_scan, /status, prometheus).

Two places to run it:

- **local** (the default): a bounded pool of worker *processes* on this machine
  (`python -m dfxm_online.workflow.run`), `processes` at a time, at `nice` priority, so
  the live path keeps its cores first; a workflow past `timeout` is stopped;
- **ewoksjob**: submitted to Celery workers on `queue` (any host that sees the files).

A workflow that fails never touches the scan's maps: its record says `failed` with the
reason, and the daemon goes on. States: queued -> running -> done | failed.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..config import PostScanConfig
from ..logtext import one_line
from ..publish.atomic import atomic_h5, file_lock
from .catalog import graph_path, load_graph
from .job import Job, iso_time

logger = logging.getLogger(__name__)

#: seconds between two looks at ewoksjob jobs
POLL = 0.5


@dataclass
class PostScanRecord:
    """Where one scan's workflow is (its /entry/process/post_scan group and /status entry)."""

    workflow: str
    state: str = "queued"
    job_id: str = ""
    queue: str = "local"
    submitted: float = 0.0
    started: float = 0.0
    ended: float = 0.0
    reason: str = ""

    def fields(self) -> dict[str, str]:
        """The record as the maps file stores it (text; times ISO 8601)."""
        return {"workflow": self.workflow, "state": self.state, "job_id": self.job_id, "queue": self.queue,
                "submitted": iso_time(self.submitted), "started": iso_time(self.started), "ended": iso_time(self.ended),
                "reason": self.reason}


def record_in_file(maps_path: str | Path, record: PostScanRecord) -> None:
    """Replace the file's /entry/process/post_scan group with `record` (atomically, under
    the folder's lock that the workflow's last stage takes too)."""
    with file_lock(maps_path), atomic_h5(maps_path, mode="a") as f:
        process = f["entry/process"]
        if "post_scan" in process:
            del process["post_scan"]
        group = process.create_group("post_scan")
        group.attrs["NX_class"] = "NXcollection"
        for key, value in record.fields().items():
            group[key] = value


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.seconds = Histogram("dfxm_workflow_seconds", "Scan-end workflow run time (start to end)",
                                 registry=registry, buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600))
        self.wait_seconds = Histogram("dfxm_workflow_queue_seconds", "Scan-end workflow wait (submitted to started)",
                                      registry=registry, buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 300))
        self.finished = Counter("dfxm_workflows", "Scan-end workflows finished, by state", ["state"],
                                registry=registry)
        self.failures = Counter("dfxm_workflow_failures", "Scan-end workflows that failed", registry=registry)
        self.queued = Gauge("dfxm_workflow_queue_length", "Scan-end workflows waiting to start", registry=registry)
        self.running = Gauge("dfxm_workflows_running", "Scan-end workflows running", registry=registry)


@dataclass
class _Entry:
    key: str
    maps_path: Path
    graph: str
    job: Job
    record: PostScanRecord
    future: object = None  # an ewoksjob future


class PostScanRunner:
    """Starts and follows the scan-end workflows of a daemon."""

    def __init__(self, config: PostScanConfig, registry: CollectorRegistry,
                 on_done: Callable[[str, Path, PostScanRecord], None] | None = None) -> None:
        self.config = config
        self.metrics = _Metrics(registry)
        self.on_done = on_done  # the daemon announces the workflow's version of the file
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._queue: queue.Queue[_Entry | None] = queue.Queue()
        self._procs: dict[str, subprocess.Popen] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- status ----------------------------------------------------------------------------
    def record(self, key: str) -> PostScanRecord | None:
        with self._lock:
            entry = self._entries.get(key)
            return None if entry is None else PostScanRecord(**asdict(entry.record))

    def wait(self, key: str, timeout: float) -> PostScanRecord | None:
        """The record of `key`'s workflow once it has ended (done or failed), or as it is
        after `timeout` seconds (None: no workflow for that scan)."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.record(key)
            if record is None or record.state in ("done", "failed") or time.monotonic() > deadline:
                return record
            time.sleep(0.1)

    def status(self) -> dict[str, dict]:
        with self._lock:
            return {k: asdict(e.record) for k, e in self._entries.items()}

    # -- submitting ------------------------------------------------------------------------
    def submit(self, key: str, maps_path: Path, graph: str, job: Job) -> PostScanRecord:
        """Queue (local) or submit (ewoksjob) the workflow `graph` for the scan `key` whose
        maps file already records it as queued."""
        record = PostScanRecord(graph, submitted=time.time(), queue=self.config.queue if self.config.ewoksjob else "local")
        entry = _Entry(key, Path(maps_path), graph, job, record)
        with self._lock:
            self._entries[key] = entry
        self.metrics.queued.inc()
        if self.config.ewoksjob:
            self._submit_ewoksjob(entry)
        else:
            self._start_threads(self.config.processes, self._local_worker)
            self._queue.put(entry)
        logger.info("scan %s: workflow %s %s (%s)", key, graph, "submitted" if self.config.ewoksjob else "queued",
                    record.queue)
        return record

    def _start_threads(self, n: int, target: Callable[[], None]) -> None:
        with self._lock:
            if self._threads:
                return
            self._threads = [threading.Thread(target=target, name=f"post-scan-{i}", daemon=True) for i in range(n)]
        for thread in self._threads:
            thread.start()

    # -- local pool ------------------------------------------------------------------------
    def _local_worker(self) -> None:
        while not self._stop.is_set():
            entry = self._queue.get()
            if entry is None:
                return
            try:
                self._run_local(entry)
            except Exception as exc:  # noqa: BLE001 - e.g. no process could be started: this scan's workflow fails
                logger.debug("scan %s workflow traceback", entry.key, exc_info=True)
                self._ended(entry, one_line(f"workflow not run: {type(exc).__name__}: {exc}"))

    def _run_local(self, entry: _Entry) -> None:
        entry.record.job_id = entry.job.job_id = entry.job.job_id or f"local-{uuid.uuid4()}"
        job_file = entry.job.work_dir / "job.json"
        job_file.parent.mkdir(parents=True, exist_ok=True)
        job_file.write_text(json.dumps(entry.job.model_dump(exclude={"parts", "started"})))
        proc = subprocess.Popen(
            [sys.executable, "-m", "dfxm_online.workflow.run", str(graph_path(entry.graph)), str(job_file)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
            preexec_fn=_lower_priority(self.config.nice, self.config.idle),
        )
        with self._lock:
            self._procs[entry.key] = proc
        self._started(entry)
        try:
            _, err = proc.communicate(timeout=self.config.timeout)
            reason = "" if proc.returncode == 0 else _last_line(err, proc.returncode)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            reason = f"stopped after the timeout of {self.config.timeout:g} s"
        if self._stop.is_set() and proc.returncode != 0:
            reason = "daemon stopped during the workflow"
        with self._lock:
            self._procs.pop(entry.key, None)
        self._ended(entry, reason)

    # -- ewoksjob --------------------------------------------------------------------------
    def _submit_ewoksjob(self, entry: _Entry) -> None:
        if self.config.celery_config:
            os.environ["EWOKS_CONFIG_URI"] = self.config.celery_config
        from ewoksjob.client import submit

        inputs = entry.job.model_dump(exclude={"parts", "started"})
        inputs["ewoksjob"] = True
        try:
            entry.future = submit(args=(load_graph(entry.graph),),
                                  kwargs={"inputs": [{"name": k, "value": v} for k, v in inputs.items()]},
                                  queue=self.config.queue)
        except Exception as exc:  # noqa: BLE001 - a broker that cannot take the job fails the workflow only
            self._ended(entry, f"not submitted to ewoksjob: {one_line(exc)}")
            return
        entry.record.job_id = entry.future.uuid
        self._start_threads(1, self._follow_ewoksjob)

    def _follow_ewoksjob(self) -> None:
        while not self._stop.wait(POLL):
            with self._lock:
                entries = [e for e in self._entries.values() if e.future is not None and e.record.state in ("queued", "running")]
            for entry in entries:
                try:
                    done = entry.future.done()
                    if entry.record.state == "queued" and (done or entry.future.running()):
                        self._started(entry, write=not done)  # a finished job has written its own
                    if done:
                        try:
                            entry.future.result(timeout=0)
                            reason = ""
                        except Exception as exc:  # noqa: BLE001 - the workflow's error, as its reason
                            from .run import root_cause

                            cause = root_cause(exc)
                            reason = one_line(f"{type(cause).__name__}: {cause}")
                        self._ended(entry, reason)
                except Exception as exc:  # noqa: BLE001 - a broker hiccup: looked at again next time
                    logger.warning("scan %s: workflow state unknown: %s", entry.key, one_line(exc))

    # -- transitions -----------------------------------------------------------------------
    def _started(self, entry: _Entry, write: bool = True) -> None:
        record = entry.record
        record.state, record.started = "running", time.time()
        self.metrics.queued.dec()
        self.metrics.running.inc()
        self.metrics.wait_seconds.observe(record.started - record.submitted)
        if write:
            self._record(entry)

    def _ended(self, entry: _Entry, reason: str) -> None:
        record = entry.record
        if record.state == "queued":
            self.metrics.queued.dec()
        else:
            self.metrics.running.dec()
        record.ended = time.time()
        record.state, record.reason = ("failed", reason) if reason else ("done", "")
        self.metrics.finished.labels(record.state).inc()
        if reason:
            self.metrics.failures.inc()
            logger.error("scan %s: workflow %s failed: %s", entry.key, entry.graph, reason)
            self._record(entry)  # the workflow wrote nothing: its failure goes into the daemon's file
            shutil.rmtree(entry.job.work_dir, ignore_errors=True)  # its parts; the state stays for a rerun
        else:
            if not self.config.keep_state and entry.job.state:
                Path(entry.job.state).unlink(missing_ok=True)
            self.metrics.seconds.observe(record.ended - (record.started or record.submitted))
            logger.info("scan %s: workflow %s done in %.1f s", entry.key, entry.graph, record.ended - record.started)
        if self.on_done is not None:
            self.on_done(entry.key, entry.maps_path, PostScanRecord(**asdict(record)))

    def _record(self, entry: _Entry) -> None:
        try:
            record_in_file(entry.maps_path, entry.record)
        except (OSError, KeyError, RuntimeError) as exc:
            logger.warning("scan %s: workflow state %s not recorded in %s: %s", entry.key, entry.record.state,
                           entry.maps_path, one_line(exc))

    # -- stopping --------------------------------------------------------------------------
    def stop(self, timeout: float = 5.0) -> None:
        """Stop: local workflows running are stopped (their scans' records say why), queued
        ones are marked failed; ewoksjob jobs go on on their workers."""
        self._stop.set()
        while True:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                break
            if entry is not None:
                self._ended(entry, "daemon stopped before the workflow started")
        with self._lock:
            procs = list(self._procs.values())
        for proc in procs:
            proc.terminate()
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def _last_line(stderr: str, code: int) -> str:
    lines = [line for line in (stderr or "").splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("workflow failed: "):
            return line.removeprefix("workflow failed: ")
    return one_line(lines[-1]) if lines else f"workflow process exited with code {code}"


def interrupted(output_dir: Path) -> list[tuple[Path, Path, dict[str, str]]]:
    """Workflows a previous daemon left unfinished under `output_dir`: (maps file, its
    saved state, the record) of every state file whose maps file says its workflow is
    queued or running, or was stopped with the daemon."""
    from .stages import post_scan_record

    found = []
    for state in sorted(Path(output_dir).rglob("*.state.h5")):
        maps = state.with_name(state.name.removesuffix(".state.h5") + ".h5")
        record = post_scan_record(maps)
        if record.get("state") in ("queued", "running") or record.get("reason", "").startswith("daemon stopped"):
            found.append((maps, state, record))
    return found


def _lower_priority(nice: int, idle: bool) -> Callable[[], None] | None:
    """What a local workflow process runs before it starts: `nice`, and Linux's SCHED_IDLE
    policy with `idle` (where the platform has it)."""
    idle = idle and hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE")
    if not nice and not idle:
        return None

    def lower() -> None:
        if nice:
            os.nice(nice)
        if idle:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))

    return lower
