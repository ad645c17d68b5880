"""One scan's maps file: when a version goes out, at which binning, on which thread.

The scan worker accumulates; this decides when its maps are published (`due`), takes the
snapshot on the worker's thread through the callable it is given (the accumulators must not
change under it), and writes the file on a writer thread while the worker goes on, as a
complete new file renamed over the path (a reader never sees a torn one). It measures each
version's frame-to-map latency for the metrics and for the live binning
(live_binning.py), and records the scan's state and reason in its /status entry.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .acquisition.geometry import ScanError, ScanGeometry
from .config import DaemonConfig
from .live_binning import BinningController, SettledBinnings
from .logtext import one_line
from .online.maps import Maps, default_map
from .publish.announce import Announcer
from .publish.metrics import Metrics
from .publish.nexus import ProcessInfo
from .publish.quicklook import quicklook_path, write_quicklook
from .publish.version_template import VersionWriter

logger = logging.getLogger(__name__)

#: /entry/process fields a live scan's files have besides the provenance, from the first
#: version on (live and final files share one layout): filled in as the scan goes
PROCESS_EXTRAS = {"end_reason": "", "background_rule": "", "moment_window": 0.0, "moment_window_passes": 0,
                  "moment_window_reason": "", "points_dropped": 0}

#: the maps of a version: (binning, final) -> maps (a `Maps` carries its axes)
MapsOf = Callable[[int, bool], dict[str, np.ndarray]]


def file_value(value: object) -> object:
    """A /entry/process field or title as HDF5 can store it, whatever the scan sent: NUL
    characters (which HDF5's strings cannot hold) and text that is not UTF-8 escaped, an
    integer beyond 64 bits (a declared `npoints` of 10**30) as 0, unknown. Otherwise every
    version of such a scan's file failed to be written."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    if isinstance(value, int) and not isinstance(value, bool) and not -2**63 <= value < 2**63:
        return 0
    return value


def write_error_text(exc: Exception) -> str:
    """Why a maps file was not written, for a person: the OS's words for an OSError (a full
    disk, a folder that cannot be made), else the exception's own text, on one line (HDF5's
    error stacks are several)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        text = exc.strerror or os.strerror(exc.errno)
        return one_line(text[:1].lower() + text[1:] + (f" ({exc.filename})" if exc.filename else ""))
    return one_line(exc)


class MapPublisher:
    """Publishes the versions of one scan's maps file (see the module docstring)."""

    def __init__(self, key: str, status, path: Path, config: DaemonConfig, metrics: Metrics,
                 announcer: Announcer | None = None, settled: SettledBinnings | None = None) -> None:
        self.key = key
        #: the daemon's memory of the binning each kind of scan settled on: this scan starts
        #: there and leaves its own (live_binning.py)
        self.settled = settled
        self.announcer = announcer  # each version written is announced on the store's stream
        #: the scan-end workflow draws the final quick-look (with the fits), in its own process:
        #: drawing a 2048^2 scan's here costs ~6 s of CPU, mostly holding the GIL, during the
        #: next scan's first seconds (measured in service)
        self.quicklook_by_workflow = False
        self.versions = 0
        self.status = status  # the scan's /status entry (daemon.ScanStatus)
        self.path = path
        self.config = config
        self.metrics = metrics
        self.geometry: ScanGeometry | None = None  # the maps' title and default plot
        #: what the maps come from (/entry/process fields: scan file, dataset, motors...)
        self.provenance: dict[str, object] = {}
        self.last = 0.0  # when the last version started (the period runs start to start)
        self._snapshot_cost = 0.0  # the worker's own time in the last publish
        self._oldest: float | None = None  # arrival of the oldest frame not yet published
        self._writer: threading.Thread | None = None  # the background write in flight
        #: writes the versions, a live one from the previous one's file when their layout is the same
        self.files = VersionWriter()
        self._binning: BinningController | None = None  # made with the first frame shape
        #: writes failed in a row (a full disk): the first is logged, the rest counted until
        #: one succeeds, which is logged too (one line each way, not one per period)
        self.write_failures = 0
        self._lock = threading.Lock()  # _oldest: set by the worker, given back by a failed write

    def frames_arrived(self) -> None:
        """Frames just arrived: the latency of the next version counts from the first."""
        with self._lock:
            if self._oldest is None:
                self._oldest = time.monotonic()

    def _not_published(self, oldest: float | None) -> None:
        """A version was not written: its frames are still waiting, from `oldest` on."""
        if oldest is None:
            return
        with self._lock:
            self._oldest = oldest if self._oldest is None else min(self._oldest, oldest)

    @property
    def unpublished(self) -> bool:
        return self._oldest is not None

    def interval(self, behind: bool) -> float:
        """`publish_period`; when frames are waiting (the worker is behind), stretched so
        that snapshots take at most a quarter of the worker's time: on full frames a
        snapshot costs a few tenths of a second, and taking one every period would starve
        the accumulators. Only the snapshot counts, not the file write, which runs on the
        writer thread while the worker accumulates. When the worker keeps up, maps go out
        every period (latency)."""
        if not behind:
            return self.config.publish_period
        return max(self.config.publish_period, 3.0 * self._snapshot_cost)

    def due(self, behind: bool) -> bool:
        return time.monotonic() - self.last >= self.interval(behind)

    def binning(self, frame_shape: tuple[int, int] | None, motors: int, live: bool) -> int:
        """The binning of a version's maps: the controller's while the scan runs (the
        latency budget), 1 for the final maps and before the frame shape is known."""
        if not live or frame_shape is None:
            return 1
        if self._binning is None or self._binning.frame_shape != frame_shape:
            forced = None if self.config.live_binning == "auto" else int(self.config.live_binning)
            start = None if self.settled is None else self.settled.recall(frame_shape, motors)
            self._binning = BinningController(frame_shape, motors, self.config.latency_budget, forced, start=start)
        return self._binning.current

    def _writing(self) -> bool:
        return self._writer is not None and self._writer.is_alive()

    def publish(self, maps_of: MapsOf, frames: int, binning: int, state: str = "running", reason: str = "",
                background: bool = False, behind: bool = True) -> None:
        """Write a version of the maps file; a failed write is logged and retried next period.

        With `background` the file is written on a writer thread while the worker goes on
        reading and accumulating (h5py releases the GIL while it writes). At most one write
        is in flight. A background publish due meanwhile is skipped when frames are waiting
        (`behind`: the worker's time goes to them), else it waits for the write: skipped,
        the frames just processed would stay unpublished until the next frame arrives, which
        a slow or paused scan (a beam refill) may not send for minutes. Any other publish
        waits for it, so the final file is always last."""
        st = self.status
        if background and behind and self._writing():
            return
        self.join()
        t0 = time.perf_counter()
        self.last = time.monotonic()
        st.map_binning = binning
        try:
            # a failed scan keeps the maps of the frames it processed (the caller gives no
            # maps when there are none); only complete and aborted ones get the final maps
            maps = maps_of(binning, state in ("complete", "aborted"))
        except ScanError as exc:
            maps, state, reason = {}, "failed", str(exc)
        except Exception as exc:  # snapshot problems must not lose the scan's status
            # a bug of ours, not something the user can act on: the details go to the log
            logger.error("scan %s: maps could not be computed: %s: %s", self.key, type(exc).__name__, one_line(exc))
            logger.debug("scan %s: snapshot traceback", self.key, exc_info=True)
            maps, state, reason = {}, "failed", "maps could not be computed (an internal error: see the daemon's log)"
        self._snapshot_cost = time.perf_counter() - t0
        info = ProcessInfo(
            state=state, reason=file_value(reason), frames_processed=frames,
            frames_expected=file_value(st.frames_expected),
            scan_key=self.key, config=self.config.to_json(),
            extra={k: file_value(v) for k, v in {"map_binning": binning, **self.provenance}.items()},
        )
        with self._lock:
            oldest, self._oldest = self._oldest, None
        job = (maps, info, oldest, t0)
        if background and state == "running":
            self._writer = threading.Thread(target=self._write, args=job, name=f"write-{self.key[-8:]}", daemon=True)
            self._writer.start()
        else:
            self._write(*job)

    def join(self) -> None:
        """Wait for the write in flight, if any."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None

    def _quicklook(self, maps: dict[str, np.ndarray], info: ProcessInfo) -> None:
        """The final maps' PNG beside the file (publish/quicklook.py); a failure is one log
        line and changes nothing else."""
        if self.geometry is None or not self.geometry.motors or "intensity" not in maps:
            return
        st = self.status
        title = (f"{st.name} #{st.number} {self.provenance.get('dataset') or ''} - "
                 f"{', '.join(self.geometry.motor_names)} - {info.frames_processed}/{info.frames_expected} frames, "
                 f"{info.state}")
        axes = maps.axes.get("mosaicity_key") if isinstance(maps, Maps) else None
        try:
            write_quicklook(maps, self.geometry.motor_names, quicklook_path(self.path), title, axes)
        except Exception as exc:
            logger.error("scan %s: quick-look PNG not written: %s", self.key, one_line(exc))

    def _write_failed(self, exc: Exception, info: ProcessInfo) -> None:
        """A version not written: the previous file stays as it was (nexus.py writes a new
        file and renames it over the path). One log line when writing starts failing, not
        one per period: the next periods try again and stay quiet until one succeeds. The
        scan fails only when its final version cannot be written."""
        st = self.status
        self.metrics.publish_errors.inc()
        reason = write_error_text(exc)
        self.write_failures += 1
        final = info.state != "running"
        if final:
            logger.error("scan %s: cannot write the final maps file %s: %s; the scan is marked failed, "
                         "the previous version stays", self.key, st.path, reason)
        elif self.write_failures == 1:
            logger.error("scan %s: cannot write %s: %s; the previous version stays, trying again every period",
                         self.key, st.path, reason)
        else:
            logger.debug("scan %s: cannot write %s (attempt %d): %s", self.key, st.path, self.write_failures, reason)
        if final:
            st.state, st.reason = "failed", f"maps file could not be written: {reason}"

    def _write(self, maps: dict[str, np.ndarray], info: ProcessInfo, oldest: float | None, t0: float) -> None:
        """Write one version (worker or writer thread)."""
        st = self.status
        geometry = self.geometry
        default = default_map(geometry.motor_names) if geometry else ("dark" if st.dark else None)
        axes = maps.axes if isinstance(maps, Maps) else {}
        t_write = time.perf_counter()
        try:
            # the final version is fsync'ed first (it must survive a power cut), the live ones not
            self.files.write(self.path, maps, info, default, file_value(geometry.title) if geometry else "", axes,
                             durable=info.state != "running")
            logger.debug("scan %s: %s version, %d frames: snapshot %.3f s, write %.3f s", self.key, info.state,
                         info.frames_processed, t_write - t0, time.perf_counter() - t_write)
        except Exception as exc:  # OSError (a full disk: publish/disk_sink.py), h5py's errors
            self._write_failed(exc, info)
            self._not_published(oldest)
            return
        finally:
            cost = time.perf_counter() - t0
            self.metrics.publish_seconds.observe(cost)
        if self.write_failures:
            logger.info("scan %s: %s written again, after %d failed attempt%s", self.key, st.path,
                        self.write_failures, "s" if self.write_failures > 1 else "")
            self.write_failures = 0
        latency = None
        if oldest is not None:
            latency = time.monotonic() - oldest
            self.metrics.latency_seconds.observe(latency)
            if info.state == "running" and self._binning is not None:
                st.map_binning = self._binning.observe(latency, cost)
                if self.settled is not None:
                    b = self._binning
                    self.settled.remember(b.frame_shape, b.motors, b.binning)
        st.state, st.reason = info.state, info.reason
        if info.state != "running":  # while running, the worker's own count is ahead of this one
            st.frames_processed = info.frames_processed
        self.versions += 1
        if info.state in ("complete", "aborted") and self.config.quicklook and not self.quicklook_by_workflow:
            self._quicklook(maps, info)
        if self.announcer is not None:
            self.announcer.announce(self.key, str(Path(self.path).resolve()), self.versions, info.state,
                                    info.frames_processed, info.frames_expected, int(info.extra["map_binning"]),
                                    latency)
