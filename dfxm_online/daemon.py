"""The daemon: follow live scans, run one pipeline per scan, publish maps, never stop serving.

Lifecycle: a listener thread follows new scans in the data store (and picks up the ones
already running when it starts); each scan gets a :class:`ScanWorker` thread that reads its
frames and positions, updates the accumulators, rewrites the maps file every
`publish_period` seconds and once more at scan end. Any error in one scan marks that scan
failed (one log line, `state=failed` and `reason` in its file and in /status) and never
stops the daemon. If the store goes away the listener logs it, retries with backoff, and
resumes where it was.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import redis
from blissdata.exceptions import IndexNoMoreThereError, NoScanAvailable
from blissdata.redis_engine.scan import ScanState
from blissdata.redis_engine.store import DataStore

from .acquisition.frames import Batch, LiveFrameSource
from .acquisition.geometry import (
    ScanError,
    ScanGeometry,
    geometry_from_scan_info,
    select_image_stream,
)
from .config import DaemonConfig
from .images import load_images
from .live_binning import BinningController
from .offline import mean_dark
from .online.accumulators.background import RunningMean
from .online.maps import Maps, default_map
from .online.pipeline import ScanPipeline
from .online.preprocess import PreprocessChain
from .publish.layout import PathClaims, maps_path, scan_folder
from .publish.metrics import Metrics, serve_http
from .publish.nexus import ProcessInfo, file_dtype, write_maps_file
from .publish.provenance import live_provenance

logger = logging.getLogger(__name__)

#: /entry/process fields a live scan's files have besides the provenance, from the first
#: version on (live and final files share one layout): filled in as the scan goes
PROCESS_EXTRAS = {"end_reason": "", "background_rule": "", "moment_window": 0.0, "moment_window_passes": 0,
                  "moment_window_reason": ""}

#: finished scans kept in /status
STATUS_HISTORY = 200
#: /entry/process fields a live scan's files have besides the provenance, from the first
#: version on (live and final files share one layout): filled in as the scan goes
PROCESS_EXTRAS = {"end_reason": "", "background_rule": "", "moment_window": 0.0, "moment_window_passes": 0,
                  "moment_window_reason": ""}


@dataclass
class ScanStatus:
    """What /status says about one scan."""

    key: str
    session: str
    name: str
    number: int
    path: str
    state: str = "running"
    reason: str = ""
    frames_processed: int = 0
    frames_expected: int = 0
    dark: bool = False
    started: float = field(default_factory=time.time)
    map_binning: int = 1  # the live maps' binning now (live_binning.py)


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


class ScanWorker(threading.Thread):
    """Processes one scan from its first frame to its final maps file."""

    def __init__(self, daemon: Daemon, key: str) -> None:
        super().__init__(name=f"scan-{key[-8:]}", daemon=True)
        self.d = daemon
        self.key = key
        self.status: ScanStatus | None = None
        self.pipeline: ScanPipeline | None = None
        self.dark_mean: RunningMean | None = None
        self.dark_shape: tuple[int, ...] = ()
        self.geometry: ScanGeometry | None = None
        self._last_publish = 0.0
        self._snapshot_cost = 0.0  # the worker's own time in the last publish
        self._oldest_unpublished: float | None = None
        self._writer: threading.Thread | None = None  # the background write in flight
        self.path: Path | None = None  # the scan's maps file, set with the status
        #: what the maps come from (/entry/process fields: scan file, dataset, motors...)
        self.provenance: dict[str, object] = {}
        #: the scan's frames read again from its start, for the final windowed moments
        self._reread: Callable[[], Iterable[Batch]] | None = None
        self._binning_control: BinningController | None = None  # made with the pipeline
        self.metrics = daemon.metrics

    # -- helpers ---------------------------------------------------------------------------
    def _stop_requested(self) -> bool:
        return self.d.stop_event.is_set()

    def _maps(self, binning: int, final: bool = False) -> dict[str, np.ndarray]:
        """The maps to publish, the pipeline's over blocks of `binning` x `binning` pixels;
        `final`: the scan's final maps, the moments within each pixel's window from the
        scan's frames read again (`_reread`), when that is configured and possible."""
        if self.pipeline is not None and self.pipeline.frames_processed:
            session = self.status.session if self.status else ""
            if self.pipeline.dark is None and self.pipeline.takes_snapshot_dark:
                # a dark scan that finished after this scan started is still used
                dark = self.d.darks.latest_before(session, self.status.number if self.status else 0)
                raw = self.pipeline.raw_shape
                if dark is not None and dark.total.size == raw[0] * raw[1]:
                    self.pipeline.set_dark(dark)
            self.provenance["background_rule"] = self.pipeline.background()[1]
            if final and self._reread is not None:
                # the window from float64 maps: the one-pass maps rounded to float32 would
                # move window edges by their rounding (offline `process` uses float64 too)
                maps = self._windowed(self.pipeline.snapshot(np.float64, binning))
                return Maps({k: v.astype(file_dtype(v.dtype), copy=False) for k, v in maps.items()}, axes=maps.axes)
            # float32: what the file stores
            return self.pipeline.snapshot(file_dtype(np.float64), binning)
        if self.dark_mean is not None and self.dark_mean.count:
            return {"dark": self.dark_mean.snapshot().reshape(self.dark_shape)}
        return {}

    def _windowed(self, maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`maps` with windowed moments (`ScanPipeline.windowed_maps`), or as they are, with
        the reason in the file, when the frames cannot be read again (a store that trimmed
        a plain array stream, a Lima file gone)."""
        config = self.d.config.analysis
        t0 = time.perf_counter()
        try:
            maps = self.pipeline.windowed_maps(maps, self._reread)
        except (ScanError, IndexNoMoreThereError, OSError, redis.RedisError) as exc:
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())
            logger.warning("scan %s: final moments over the whole scan, not windowed: %s", self.key, reason)
            self.provenance.update(moment_window=0.0, moment_window_passes=0,
                                   moment_window_reason=f"not applied: {reason}")
            return maps
        if self._stop_requested():
            raise ScanError("daemon stopped while the final maps were made")
        self.provenance.update(moment_window=config.moment_window, moment_window_passes=config.moment_window_passes)
        logger.info("scan %s: windowed moments (%g sigma, %d passes over the frames) in %.2f s", self.key,
                    config.moment_window, config.moment_window_passes, time.perf_counter() - t0)
        return maps

    def _binning(self, live: bool) -> int:
        """The binning of a version's maps: the controller's while the scan runs (the
        latency budget), 1 for the final maps."""
        if not live or self.pipeline is None:
            return 1
        if self._binning_control is None or self._binning_control.frame_shape != self.pipeline.frame_shape:
            config = self.d.config
            forced = None if config.live_binning == "auto" else int(config.live_binning)
            self._binning_control = BinningController(self.pipeline.frame_shape, len(self.pipeline.geometry.motors),
                                                      config.latency_budget, forced)
        return self._binning_control.current

    def _publish_interval(self, behind: bool) -> float:
        """`publish_period`; when frames are waiting (the worker is behind), stretched so
        that snapshots take at most a quarter of the worker's time: on full frames a
        snapshot costs a few tenths of a second, and taking one every period would starve
        the accumulators. Only the snapshot counts, not the file write, which runs on the
        writer thread while the worker accumulates (with the write counted, a 2048^2 scan
        at 10 frames/s waited 3.5 s between publishes after its first, cold one). When the
        worker keeps up, maps go out every period (latency)."""
        if not behind:
            return self.d.config.publish_period
        return max(self.d.config.publish_period, 3.0 * self._snapshot_cost)

    def _writing(self) -> bool:
        return self._writer is not None and self._writer.is_alive()

    def publish(self, state: str = "running", reason: str = "", background: bool = False,
                behind: bool = True) -> None:
        """Rewrite this scan's maps file; a failed write is logged and retried next period.

        The snapshot is always taken here, on the worker's thread (the accumulators must
        not change under it). With `background` the file is written on a writer thread
        while the worker goes on reading and accumulating: h5py releases the GIL while it
        writes, and at 2048^2 the write (~0.1-0.6 s on this VM) costs as much as the
        snapshot. At most one write is in flight. A background publish due meanwhile is
        skipped when frames are waiting (`behind`: the worker's time goes to them), else
        it waits for the write: skipped, the frames just processed would stay unpublished
        until the next frame arrives, which a slow or paused scan (a beam refill) may not
        send for minutes. Any other publish waits for it, so the final file is always last.
        """
        st = self.status
        assert st is not None
        if background and behind and self._writing():
            return
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        t0 = time.perf_counter()
        # the period runs from start to start: with a publish costing about a period,
        # counting from its end would halve the cadence
        self._last_publish = time.monotonic()
        binning = st.map_binning = self._binning(state == "running")
        try:
            final = state in ("complete", "aborted")
            maps = self._maps(binning, final) if state != "failed" or self.pipeline is not None else {}
        except ScanError as exc:
            maps, state, reason = {}, "failed", str(exc)
        except Exception as exc:  # snapshot problems must not lose the scan's status
            maps, state, reason = {}, "failed", f"maps could not be computed: {exc}"
        self._snapshot_cost = time.perf_counter() - t0
        frames = self.pipeline.frames_processed if self.pipeline else (self.dark_mean.count if self.dark_mean else 0)
        info = ProcessInfo(
            state=state, reason=reason, frames_processed=frames,
            frames_expected=st.frames_expected, scan_key=self.key, config=self.d.config.to_json(),
            extra={"map_binning": binning, **self.provenance},
        )
        oldest, self._oldest_unpublished = self._oldest_unpublished, None
        job = (maps, info, maps.axes if isinstance(maps, Maps) else {}, oldest, t0)
        if background and state == "running":
            self._writer = threading.Thread(target=self._write, args=job, name=f"write-{self.key[-8:]}",
                                            daemon=True)
            self._writer.start()
        else:
            self._write(*job)

    def _write(self, maps: dict[str, np.ndarray], info: ProcessInfo, axes: dict, oldest: float | None,
               t0: float) -> None:
        """Write one version of the maps file (worker or writer thread)."""
        st = self.status
        default = default_map(self.geometry.motor_names) if self.geometry else ("dark" if st.dark else None)
        t_write = time.perf_counter()
        try:
            # a complete new file renamed over the path: a reader never sees a torn one; the
            # final version is fsync'ed first (it must survive a power cut), the live ones not
            write_maps_file(self.path, maps, info, default, self.geometry.title if self.geometry else "", axes,
                            durable=info.state != "running")
            logger.debug("scan %s: %s version, %d frames: snapshot %.3f s, write %.3f s", self.key, info.state,
                         info.frames_processed, t_write - t0, time.perf_counter() - t_write)
        except OSError as exc:
            self.metrics.publish_errors.inc()
            logger.error("scan %s: cannot write %s: %s", self.key, st.path, exc)
            if info.state != "running":
                st.reason = f"maps file could not be written: {exc}"
                st.state = "failed"
            return
        finally:
            self.metrics.publish_seconds.observe(time.perf_counter() - t0)
        if oldest is not None:
            latency = time.monotonic() - oldest
            self.metrics.latency_seconds.observe(latency)
            if info.state == "running" and self._binning_control is not None:
                st.map_binning = self._binning_control.observe(latency)
        st.state, st.reason = info.state, info.reason
        if info.state != "running":  # while running, the worker's own count is ahead of this one
            st.frames_processed = info.frames_processed

    # -- the scan --------------------------------------------------------------------------
    def run(self) -> None:
        self.metrics.active.inc()
        try:
            self._run()
        finally:
            # the daemon keeps its workers (their status, their key against a second
            # worker for the scan), not their accumulators: ~0.4-0.8 GB per 2048^2 scan
            self.pipeline = None
            self.dark_mean = None
            self.metrics.active.dec()
            if self.status is not None:
                self.metrics.scans.labels(self.status.state).inc()

    def _run(self) -> None:
        try:
            scan = self.d.store.load_scan(self.key)
        except Exception as exc:
            logger.error("scan %s cannot be loaded: %s", self.key, exc)
            return
        session = getattr(scan, "session", None) or "no_session"
        folder = scan_folder(
            self.d.output_dir, session, getattr(scan, "path", None) or scan.info.get("filename"),
            getattr(scan, "proposal", None), getattr(scan, "collection", None), getattr(scan, "dataset", None),
        )
        self.path = path = self.d.claims.claim(maps_path(folder, scan.name, scan.number), self.key)
        self.status = ScanStatus(self.key, session, scan.name, int(scan.number), str(path))
        self.d.register(self.status)
        try:
            self._process(scan)
        except ScanError as exc:
            self._fail(str(exc))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self.metrics.store_errors.inc()
            self._fail(f"data store unreachable: {exc}")
        except Exception as exc:
            logger.debug("scan %s traceback", self.key, exc_info=True)
            self._fail(f"{type(exc).__name__}: {exc}")

    def _fail(self, reason: str) -> None:
        reason = " ".join(reason.split())  # one line
        logger.error("scan %s (%s #%s) failed: %s", self.key, self.status.name, self.status.number, reason)
        self.publish("failed", reason)
        self.status.state, self.status.reason = "failed", reason

    def _wait_prepared(self, scan, timeout: float = 5.0):
        """The scan once PREPARED, with its streams.

        blissdata's `Scan._load` reads the scan's JSON model before its state: a prepare()
        landing between the two reads gives a PREPARED scan whose model has no streams, and
        `update()` never reads the model again. Such a scan is loaded again (for at most
        `timeout` seconds) until its streams are there."""
        while scan.state < ScanState.PREPARED:
            if self._stop_requested():
                raise ScanError("daemon stopped before the scan was prepared")
            scan.update(timeout=1.0)
        deadline = time.monotonic() + timeout
        while not scan.streams and time.monotonic() < deadline and not self._stop_requested():
            time.sleep(0.05)
            scan = self.d.store.load_scan(self.key)
        return scan

    def _process(self, scan) -> None:
        scan = self._wait_prepared(scan)
        info = scan.info
        st = self.status
        st.frames_expected = int(info.get("npoints") or 0)
        streams = {
            name: (tuple(stream.shape) if getattr(stream, "kind", None) == "array" else None)
            for name, stream in scan.streams.items()
        }
        config = self.d.config
        label = f"{info.get('title', '')} {scan.name}"
        if re.search(config.dark_pattern, label, re.IGNORECASE):
            st.dark = True
            image = select_image_stream(streams, config.analysis.detector)
            geometry = ScanGeometry(
                motors=(), npoints=st.frames_expected, detector=image.split(":")[0],
                scan_type=str(info.get("type", "")), title=str(info.get("title", "")),
                image_stream=image, frame_shape=streams[image],
            )
        else:
            geometry = geometry_from_scan_info(
                info, streams, config.analysis.detector, config.analysis.motors, config.analysis.monitor
            )
            self.geometry = geometry
        logger.info(
            "scan %s (%s #%s, %s): detector %s, motors %s, %d points%s",
            self.key, scan.name, scan.number, geometry.title, geometry.detector,
            geometry.motor_names, st.frames_expected, " [dark]" if st.dark else "",
        )
        self.provenance = {**live_provenance(scan, geometry), **PROCESS_EXTRAS}
        image_dtype = getattr(scan.streams[geometry.image_stream], "dtype", None)
        batch_size = config.analysis.frames_per_batch(geometry.frame_shape, image_dtype)
        source = LiveFrameSource(scan, geometry, batch_size, config.read_timeout, config.analysis.batch_delay)
        if not st.dark and geometry.frame_shape and all(s > 0 for s in geometry.frame_shape):
            # built now, before the first frame: its memory is faulted in meanwhile
            try:
                self.pipeline = self._new_pipeline(geometry, tuple(geometry.frame_shape))
            except ScanError as exc:  # e.g. a "dark" step whose dark scan is still finishing
                logger.debug("scan %s: pipeline built at the first frames instead: %s", self.key, exc)
        self.publish("running")
        t_read = time.perf_counter()
        for batch in source.batches(self._stop_requested):
            t0 = time.perf_counter()
            self.metrics.read_seconds.observe(t0 - t_read)
            if self._oldest_unpublished is None:
                self._oldest_unpublished = time.monotonic()
            if st.dark:
                if self.dark_mean is None:
                    self.dark_shape = tuple(batch.frames.shape[1:])
                    self.dark_mean = RunningMean(batch.frames[0].size)
                self.dark_mean.update(batch.frames)
            else:
                shape = tuple(batch.frames.shape[1:])
                if self.pipeline is None or (not self.pipeline.frames_processed and self.pipeline.raw_shape != shape):
                    self.pipeline = self._new_pipeline(geometry, shape)  # the announced shape was not the frames'
                self.pipeline.update(batch.frames, batch.positions, batch.monitor)
            self.metrics.frames.inc(batch.frames.shape[0])
            self.metrics.batch_seconds.observe(time.perf_counter() - t0)
            st.frames_processed += batch.frames.shape[0]
            if self.pipeline is None or not self.pipeline.retains_frames:
                source.recycle(batch.frames)  # the next read reuses the memory
            del batch  # its frames are free before the snapshot and the next read
            if time.monotonic() - self._last_publish >= self._publish_interval(source.behind):
                self.publish("running", background=True, behind=source.behind)
            t_read = time.perf_counter()
        if self._stop_requested():
            self.publish("aborted", "daemon stopped during the scan")
            return
        if self._oldest_unpublished is not None and self._binning(True) > 1:
            # the final maps are full resolution: a snapshot and a file several times the
            # live ones' (at 2048^2, ~1 s on a VM whose pool holds the binned sizes), so the
            # last frames go out binned first, as every other frame did
            self.publish("running")
        end_reason = self._end_reason(scan)
        self.provenance.update(end_time=str(scan.info.get("end_time", "")), end_reason=end_reason)
        if self.pipeline is not None:
            self.pipeline.finish()
            if geometry.motors and config.analysis.moment_window > 0:
                def reread() -> Iterator[Batch]:
                    again = LiveFrameSource(scan, geometry, batch_size, config.read_timeout, 0.0)
                    return again.batches(self._stop_requested)

                self._reread = reread
        if st.dark and self.dark_mean is not None and self.dark_mean.count:
            self.d.darks.add(st.session, st.number, self.dark_mean)
        processed = st.frames_processed
        if processed == 0:
            raise ScanError(f"scan ended ({end_reason}) without any complete point")
        if end_reason == "SUCCESS" and (st.frames_expected in (0, processed)):
            self.publish("complete")
        else:
            self.publish("aborted", f"scan ended with {end_reason} after {processed} of {st.frames_expected} points")
        logger.info("scan %s done: %s, %d frames", self.key, self.status.state, processed)

    def _new_pipeline(self, geometry: ScanGeometry, shape: tuple[int, ...]) -> ScanPipeline:
        """The scan's pipeline for raw frames of `shape`, with the session's latest dark."""
        st = self.status
        dark = self.d.darks.latest_before(st.session, st.number)
        if dark is not None and dark.total.size != shape[0] * shape[1]:
            logger.warning("scan %s: the session's dark has another frame size; not used", self.key)
            dark = None
        return ScanPipeline(geometry, shape, self.d.config.analysis, dark, self.d.images,
                            has_monitor=bool(geometry.monitor_stream))

    def _end_reason(self, scan, timeout: float = 5.0) -> str:
        """The scan's end_reason (set at CLOSED, shortly after its streams are sealed)."""
        deadline = time.monotonic() + timeout
        while scan.state < ScanState.CLOSED and time.monotonic() < deadline:
            scan.update(timeout=0.5)
        return str(scan.info.get("end_reason", "UNKNOWN" if scan.state < ScanState.CLOSED else "SUCCESS"))


class Daemon:
    """Follows the store at `redis_url` and writes maps under `output_dir`."""

    def __init__(self, redis_url: str, output_dir: str | Path, config: DaemonConfig | None = None) -> None:
        self.redis_url = redis_url
        self.output_dir = Path(output_dir)
        self.config = config or DaemonConfig()
        PreprocessChain.check(self.config.analysis.preprocess)  # parameters, before any scan
        self.images = load_images(self.config.analysis.images)  # once, not per scan
        self.metrics = Metrics(self.config.latency_budget)
        self.darks = DarkRegistry(mean_dark(self.config.dark) if self.config.dark else None)
        self.claims = PathClaims()  # one maps file per scan, never another scan's
        self.stop_event = threading.Event()
        self.workers: dict[str, ScanWorker] = {}
        self._status: OrderedDict[str, ScanStatus] = OrderedDict()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._http = None
        self.store: DataStore | None = None
        self.ready = threading.Event()  # set once the listener follows the store

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
        return {"redis_url": self.redis_url, "output_dir": str(self.output_dir),
                "store_connected": self.ready.is_set(), "scans": scans}

    def scan_status(self, key: str) -> ScanStatus | None:
        with self._lock:
            return self._status.get(key)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> Daemon:
        """Run the listener in a background thread (tests, demo); see also `run`."""
        if self.config.metrics_port:
            self._http = serve_http(self.config.metrics_port, self.metrics, self.status)
        self._thread = threading.Thread(target=self._listen, name="dfxm-listener", daemon=True)
        self._thread.start()
        return self

    def run(self) -> None:
        """Run in the foreground until `stop()` (or KeyboardInterrupt)."""
        self.start()
        try:
            while not self.stop_event.wait(0.5):
                pass
        except KeyboardInterrupt:
            logger.info("interrupted")
        finally:
            self.stop()

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout)
        for worker in list(self.workers.values()):
            worker.join(timeout)
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

    def _connect(self) -> str:
        """Connect to the store and start the scans already running; returns the cursor."""
        self.store = DataStore(self.redis_url)
        since, keys = self.store.search_existing_scans()
        states = self.store.get_scans_state(keys) if keys else {}
        running = [k for k, s in states.items() if s < ScanState.CLOSED]
        for key in running:
            logger.info("scan %s was already running: processing it from its first point", key)
            self._spawn(key)
        return since

    def _listen(self) -> None:
        backoff = 0.5
        since: str | None = None
        while not self.stop_event.is_set():
            try:
                if since is None:
                    since = self._connect()
                    logger.info("following scans on %s (output in %s)", self.redis_url, self.output_dir)
                try:
                    since, key = self.store.get_next_scan(since=since, timeout=0.5)
                except NoScanAvailable:
                    key = None
                if not self.ready.is_set():
                    self.ready.set()
                    backoff = 0.5
                if key is not None:
                    self._spawn(key)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                self.metrics.store_errors.inc()
                if self.ready.is_set():
                    logger.error("data store %s unreachable: %s; retrying", self.redis_url, exc)
                self.ready.clear()
                # keep the same cursor: no scan is missed once the store is back
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            except Exception:
                logger.exception("listener error; continuing")
                self.stop_event.wait(1.0)
