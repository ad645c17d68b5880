"""The daemon: follow live scans, run one worker per scan, never stop serving.

Lifecycle: a listener thread follows new scans in the data store (and picks up the ones
already running when it starts); each scan gets a :class:`~.scan_worker.ScanWorker` thread
that reads its frames and positions, updates the accumulators, and has its
:class:`~.map_publisher.MapPublisher` write the maps file every `publish_period` seconds
and once more at scan end. Any error in one scan marks that scan
failed (one log line, `state=failed` and `reason` in its file and in /status) and never
stops the daemon. If the store goes away the listener logs it, retries with backoff, and
resumes where it was.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from collections import OrderedDict
from pathlib import Path

import redis
from blissdata.exceptions import NoScanAvailable
from blissdata.redis_engine.scan import ScanState
from blissdata.redis_engine.store import DataStore

from .acquisition.geometry import ScanError
from .config import ConfigError, DaemonConfig
from .images import load_images
from .kernel_loading import load_in_background
from .live_binning import SettledBinnings
from .logtext import one_line
from .offline import mean_dark
from .online.accumulators.background import RunningMean
from .online.preprocess import PreprocessChain
from .publish.announce import Announcer
from .publish.layout import PathClaims
from .publish.metrics import Metrics, serve_http
from .publish.recovery import abandon_running_files, final_process_fields
from .scan_worker import ScanStatus, ScanWorker, maps_file_of
from .workflow.job import post_scan_job
from .workflow.trigger import PostScanRecord, PostScanRunner, interrupted, record_in_file

logger = logging.getLogger(__name__)


def check_url(url: str) -> None:
    """A ConfigError (one line; `serve` exits with code 2) for a URL redis cannot use, at
    start, instead of a traceback from the listener every second."""
    try:
        redis.connection.parse_url(url)
    except ValueError as exc:
        raise ConfigError(f"--redis {redact(url)!r}: {exc}") from None


def redact(url: str) -> str:
    """`url` without its password (redis://user:secret@host -> redis://user:***@host)."""
    return re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", url)

#: finished scans kept in /status
STATUS_HISTORY = 200

class DarkRegistry:
    """Mean dark images of the dark scans seen, per session, for the scans that follow."""

    def add(self, session: str, number: int, image: RunningMean) -> None:
        with self._lock:
            self._darks.setdefault(session, []).append((number, image))
            self._darks[session].sort(key=lambda item: item[0])

    def latest_before(self, session: str, number: int) -> RunningMean | None:
        """The dark of the latest dark scan of `session` numbered below `number`, else the
        configured dark file's (if any)."""
        with self._lock:
            found = [img for n, img in self._darks.get(session, []) if n < number]
        return found[-1] if found else self.fallback

    def __init__(self, fallback: RunningMean | None = None) -> None:
        self._lock = threading.Lock()
        self._darks: dict[str, list[tuple[int, RunningMean]]] = {}
        self.fallback = fallback


class Daemon:
    """Follows the store at `redis_url` and writes maps under `output_dir`."""

    def __init__(self, redis_url: str, output_dir: str | Path, config: DaemonConfig | None = None) -> None:
        self.redis_url = redis_url
        self.shown_url = redact(redis_url)  # what logs and /status show: no password
        check_url(redis_url)
        self.output_dir = Path(output_dir)
        self.config = config or DaemonConfig()
        PreprocessChain.check(self.config.analysis.preprocess)  # parameters, before any scan
        self.images = load_images(self.config.analysis.images)  # once, not per scan
        self.metrics = Metrics(self.config.latency_budget)
        self.settled_binnings = SettledBinnings()  # where each kind of scan starts its live maps
        self.darks = DarkRegistry(mean_dark(self.config.dark) if self.config.dark else None)
        self.claims = PathClaims()  # one maps file per scan, never another scan's
        self.announcer = Announcer(redis_url)  # publish/announce.py: the viewers' stream
        # workflow/trigger.py: the scan-end workflows, in a local pool of processes or on ewoksjob
        self.post_scan = PostScanRunner(self.config.post_scan, self.metrics.registry, on_done=self._workflow_done)
        self.stop_event = threading.Event()
        self.workers: dict[str, ScanWorker] = {}
        self._status: OrderedDict[str, ScanStatus] = OrderedDict()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._http = None
        self.store: DataStore | None = None
        self.ready = threading.Event()  # set once the listener follows the store
        self._resumed = False  # the previous run's unfinished workflows (once, at the first connection)

    # -- status ----------------------------------------------------------------------------
    def register(self, status: ScanStatus) -> None:
        with self._lock:
            self._status[status.key] = status
            while len(self._status) > STATUS_HISTORY:
                oldest = next(iter(self._status))
                if self._status[oldest].state == "running":
                    break
                self._status.popitem(last=False)

    def status(self) -> dict:
        with self._lock:
            scans = {k: vars(v).copy() for k, v in self._status.items()}
        for key, record in self.post_scan.status().items():
            if key in scans:
                scans[key]["post_scan"] = record
        return {"redis_url": self.shown_url, "output_dir": str(self.output_dir),
                "store_connected": self.ready.is_set(), "scans": scans}

    def _workflow_done(self, key: str, path: Path, record: PostScanRecord) -> None:
        """A scan-end workflow has ended: its version of the maps file is announced (the
        viewers show the fits), or its failure, recorded in the daemon's version."""
        worker = self.workers.get(key)
        status = self.scan_status(key)
        if worker is None or worker.publisher is None or status is None:
            return
        worker.publisher.versions += 1
        self.announcer.announce(key, str(Path(path).resolve()), worker.publisher.versions, status.state,
                                status.frames_processed, status.frames_expected, 1)

    def scan_status(self, key: str) -> ScanStatus | None:
        with self._lock:
            return self._status.get(key)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> Daemon:
        """Run the listener in a background thread (tests, demo); see also `run`."""
        if self.config.metrics_port:
            address = self.config.metrics_address
            try:
                self._http = serve_http(self.config.metrics_port, self.metrics, self.status, address)
            except OSError as exc:  # an address not of this host, a port taken: one line, exit code 2
                raise ConfigError(f"metrics server on {address}:{self.config.metrics_port}: "
                                  f"{exc.strerror or exc}") from None
        load_in_background(self.config.analysis)  # numba's kernels, not on the first scan's frames
        self._thread = threading.Thread(target=self._listen, name="dfxm-listener", daemon=True)
        self._thread.start()
        return self

    def run(self) -> None:
        """Run in the foreground until `stop()`, Ctrl-C or SIGTERM (what systemd sends on
        stop; handled even when the daemon was started with SIGINT ignored): the running
        scans are marked aborted, "daemon stopped during the scan", and `run` returns."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._terminate)
        self.start()
        try:
            while not self.stop_event.wait(0.5):
                pass
        except KeyboardInterrupt:
            logger.info("interrupted")
        finally:
            self.stop()

    def _terminate(self, signum: int, frame) -> None:
        logger.info("%s received: stopping", signal.Signals(signum).name)
        self.stop_event.set()

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout)
        for worker in list(self.workers.values()):
            worker.join(timeout)
        self.post_scan.stop()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Wait until every started scan worker has finished (tests, demo)."""
        deadline = time.monotonic() + timeout
        for worker in list(self.workers.values()):
            worker.join(max(0.0, deadline - time.monotonic()))
        return all(not w.is_alive() for w in self.workers.values())

    def _spawn(self, key: str) -> None:
        if key in self.workers or self.stop_event.is_set():
            return
        worker = ScanWorker(self, key)
        self.workers[key] = worker
        worker.start()
        self._prune()

    def _prune(self) -> None:
        """Forget finished workers beyond STATUS_HISTORY (their scans' /status entries go
        the same way): a daemon in service must not grow with every scan it has seen."""
        finished = [k for k, w in self.workers.items() if not w.is_alive()]
        for key in finished[: max(0, len(self.workers) - STATUS_HISTORY)]:
            del self.workers[key]

    def _connect(self) -> str:
        """Connect to the store and reconcile with what is on disk; returns the cursor.

        Every scan the store holds that has no final maps file yet is processed from its
        first point: those still running, and those that ended while the daemon was down.
        A scan whose file is final (complete, aborted, failed, an inactivity timeout
        included) is not adopted again. Then every maps file still "running" whose scan the
        store no longer holds is marked aborted, with the reason."""
        self.store = DataStore(self.redis_url)
        since, keys = self.store.search_existing_scans()
        states = self.store.get_scans_state(keys) if keys else {}
        for key, state in states.items():
            if self._final_file(key):
                continue
            ended = "ended while the daemon was down" if state >= ScanState.CLOSED else "was already running"
            logger.info("scan %s %s: processing it from its first point", key, ended)
            self._spawn(key)
        abandon_running_files(self.output_dir, set(keys))
        if not self._resumed:
            self._resumed = True
            self._resume_workflows()
        return since

    def _resume_workflows(self) -> None:
        """Start again the scan-end workflows a previous run left queued, running or stopped
        (their saved states are still there): a restart loses no scan's fits."""
        from .publish.scan_state import state_attrs

        if self.config.post_scan.workflow.lower() == "none" and not self.config.post_scan.workflows:
            return
        for maps, state, record in interrupted(self.output_dir):
            try:
                attrs = state_attrs(state)
            except ScanError as exc:
                logger.warning("%s: workflow not resumed: %s", maps, one_line(exc))
                continue
            if not attrs.get("raw_file"):
                continue
            workflow = record.get("workflow") or self.config.post_scan.workflow
            logger.info("scan %s: resuming its scan-end workflow (%s)", attrs["scan_key"], record.get("state"))
            job = post_scan_job(self.config.post_scan, self.config.quicklook, filename=attrs["raw_file"],
                                scan=attrs["raw_entry"], output=str(maps), state=str(state), scan_key=attrs["scan_key"])
            record_in_file(maps, PostScanRecord(workflow, reason="resumed after a daemon restart"))
            self.post_scan.submit(attrs["scan_key"], maps, workflow, job)

    def _final_file(self, key: str) -> bool:
        """Whether the scan `key` already has its final maps file (any final state)."""
        try:
            scan = self.store.load_scan(key)
        except Exception as exc:  # a scan the store cannot load: the worker reports it
            logger.debug("scan %s not loaded for the start-up check: %s", key, exc)
            return False
        process = final_process_fields(maps_file_of(self.output_dir, scan), key)
        return process is not None

    def _listen(self) -> None:
        """Follow the store; an unreachable store (never reached yet, or gone) is logged
        once, and so is its return; the cursor is kept, so no scan is missed meanwhile."""
        backoff = 0.5
        since: str | None = None
        down = False
        last_error = ""
        while not self.stop_event.is_set():
            try:
                if since is None:
                    since = self._connect()
                    logger.info("following scans on %s (output in %s)", self.shown_url, self.output_dir)
                try:
                    since, key = self.store.get_next_scan(since=since, timeout=0.5)
                except NoScanAvailable:
                    key = None
                if not self.ready.is_set():
                    if down:
                        logger.info("data store %s reachable again", self.shown_url)
                    self.ready.set()
                    down, backoff = False, 0.5
                if key is not None:
                    self._spawn(key)
            except (redis.ConnectionError, redis.TimeoutError, redis.AuthenticationError, OSError) as exc:
                self.metrics.store_errors.inc()
                if not down:
                    logger.error("data store %s unreachable: %s; retrying", self.shown_url, one_line(exc))
                down = True
                self.ready.clear()
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            except Exception as exc:
                # the same error again (e.g. a store user without the rights it needs) is
                # logged once, not every second
                text = f"{type(exc).__name__}: {one_line(exc)}"
                if text != last_error:
                    logger.error("listener error (%s); retrying every second", text)
                    logger.debug("listener traceback", exc_info=True)
                last_error = text
                self.stop_event.wait(1.0)
                continue
            last_error = ""
