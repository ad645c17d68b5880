"""One scan's life in the daemon: from its announcement to its final maps file.

A :class:`ScanWorker` thread loads the scan, works out what it is (a dark scan, or the
detector and motors of a scan to analyse), reads its frames and positions in batches into
the scan's pipeline (or a dark scan's running mean), has its :class:`MapPublisher` publish
the maps while it runs, and at its end makes the final maps (the moments within each
pixel's window, from the frames read again) and publishes them. Any error marks the scan
failed with a one-line reason (in the log, /status and the file); it never reaches the
daemon's other scans.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import redis
from blissdata.exceptions import IndexNoMoreThereError
from blissdata.redis_engine.scan import ScanState

from .acquisition.batch import Batch
from .acquisition.frames import LiveFrameSource, ScanIdle
from .acquisition.geometry import (
    ScanError,
    ScanGeometry,
    geometry_from_scan_info,
    select_image_stream,
)
from .behind_preview import GatheredBatches, UpdatesBehindPreview, joined
from .live_binning import preview_binning
from .logtext import one_line
from .map_publisher import PROCESS_EXTRAS, MapPublisher
from .online.accumulators.background import RunningMean
from .online.maps import MapBuffers, Maps
from .online.pipeline import ScanPipeline
from .online.preprocess import PreprocessChain, _ImageStep
from .online.tiles import fewer_threads
from .publish.layout import maps_path, scan_folder
from .publish.nexus import file_dtype
from .publish.provenance import live_provenance
from .publish.scan_state import save_state, state_path
from .workflow.job import Job, post_scan_job

if TYPE_CHECKING:
    from .daemon import Daemon

logger = logging.getLogger(__name__)


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


def maps_file_of(output_dir: Path, scan) -> Path:
    """Where a scan's maps file goes by its identity (publish/layout.py), before any claim."""
    folder = scan_folder(
        output_dir, getattr(scan, "session", None) or "no_session", getattr(scan, "path", None) or scan.info.get("filename"),
        getattr(scan, "proposal", None), getattr(scan, "collection", None), getattr(scan, "dataset", None),
    )
    return maps_path(folder, scan.name, scan.number)


class ScanWorker(threading.Thread):
    """Processes one scan from its first frame to its final maps file."""

    def __init__(self, daemon: Daemon, key: str) -> None:
        super().__init__(name=f"scan-{key[-8:]}", daemon=True)
        self.d = daemon
        self.key = key
        self.status: ScanStatus | None = None
        self.publisher: MapPublisher | None = None
        self.pipeline: ScanPipeline | None = None  # full resolution: the final maps
        #: the live maps' pipeline, of the frames binned `preview_factor` x `preview_factor`
        #: (`ScanPipeline.preview`), updated before `pipeline`; None when the scan is its
        #: own preview (small frames, or live_binning 1) or once the last frame is in
        self.preview: ScanPipeline | None = None
        self.preview_factor = 1
        #: the full-resolution updates, on a thread of their own behind the preview's
        self.updates: UpdatesBehindPreview | None = None
        #: the live batches held back for the next full-resolution update (`behind_preview`)
        self.gathered: GatheredBatches | None = None
        self.dark_mean: RunningMean | None = None
        self.dark_shape: tuple[int, ...] = ()
        self.geometry: ScanGeometry | None = None
        self.buffers = MapBuffers()  # the live snapshots' arrays, allocated once per scan
        #: the scan's frames read again from its start, for the final windowed moments
        self._reread: Callable[[], Iterable[Batch]] | None = None
        self._job: Job | None = None  # the scan-end workflow's job (`_hand_off`)
        self._window_reason: str | None = None  # the provenance's, before the hand-off
        self.metrics = daemon.metrics

    def _stop_requested(self) -> bool:
        return self.d.stop_event.is_set()

    # -- the scan --------------------------------------------------------------------------
    def run(self) -> None:
        self.metrics.active.inc()
        try:
            self._run()
        finally:
            if self.updates is not None:
                self.updates.close()
                self.updates = None
            self.gathered = None  # batches never submitted (a failure): their frame buffers go
            # the daemon keeps its workers (their status, their key against a second
            # worker for the scan), not their accumulators: ~0.4-0.8 GB per 2048^2 scan
            self.pipeline = self.preview = None
            self.dark_mean = None
            self.buffers = MapBuffers()
            self.metrics.active.dec()
            if self.status is not None:
                self.metrics.scans.labels(self.status.state).inc()

    def _run(self) -> None:
        try:
            scan = self.d.store.load_scan(self.key)
        except Exception as exc:
            # a scan the store no longer holds (expired, or deleted meanwhile): nothing to do
            logger.warning("scan %s cannot be loaded: %s", self.key, one_line(exc))
            return
        session = getattr(scan, "session", None) or "no_session"
        path = self.d.claims.claim(maps_file_of(self.d.output_dir, scan), self.key)
        self.status = ScanStatus(self.key, session, scan.name, int(scan.number), str(path))
        self.publisher = MapPublisher(self.key, self.status, path, self.d.config, self.metrics, self.d.announcer,
                                      self.d.settled_binnings)
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

    def _flush_updates(self, raise_error: bool = True) -> None:
        """Every batch in the full-resolution pipeline: the gathered ones submitted, and the
        updates waited for (`behind_preview`): before any version made from the
        full-resolution pipeline."""
        if self.updates is not None:
            self._submit_gathered()
            self.updates.flush(raise_error)

    def _submit_gathered(self) -> None:
        """The batches gathered so far into the full-resolution pipeline, as one update on
        the updates' thread (joined there, off the live path)."""
        if self.gathered is None or not len(self.gathered):
            return
        n = len(self.gathered)
        items, raw = self.gathered.take()
        pipeline = self.pipeline

        def update() -> None:
            self._add_full_resolution(pipeline, *joined(items), n)

        self.updates.submit(update, raw)

    def _fail(self, reason: str) -> None:
        reason = one_line(reason)
        self._flush_updates(raise_error=False)  # the maps of the frames in, not of a half-done update
        logger.error("scan %s (%s #%s) failed: %s", self.key, one_line(self.status.name), self.status.number, reason)
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
        geometry = self._describe(scan)
        config = self.d.config
        image_dtype = getattr(scan.streams[geometry.image_stream], "dtype", None)
        batch_size = config.analysis.frames_per_batch(geometry.frame_shape, image_dtype)
        source = LiveFrameSource(scan, geometry, batch_size, config.read_timeout, config.analysis.batch_delay,
                                 idle_timeout=config.scan_idle_timeout)
        self.publish("running")  # the pipeline is built at the first frame: memory on a promise is not taken
        try:
            self._accumulate(source, geometry)
        except ScanIdle as exc:
            logger.warning("scan %s: %s", self.key, exc)
            self._flush_updates()
            self.publish("aborted", str(exc))
            return
        del source  # its frame buffers (a batch: 256 MB at 2048^2) are not needed for the final maps
        if self._stop_requested():
            self._flush_updates()
            self.publish("aborted", "daemon stopped during the scan")
            return
        self._finish(scan, geometry, batch_size)

    def _describe(self, scan) -> ScanGeometry:
        """What the scan is: a dark scan (its image stream only) or the detector and motors
        of a scan to analyse; logged, and its provenance set for the maps file."""
        info, st, config = scan.info, self.status, self.d.config
        try:
            st.frames_expected = int(info.get("npoints") or 0)
        except (TypeError, ValueError, OverflowError):
            st.frames_expected = 0  # geometry_from_scan_info gives the reason
        streams = {name: (tuple(stream.shape) if getattr(stream, "kind", None) == "array" else None)
                   for name, stream in scan.streams.items()}
        if re.search(config.dark_pattern, f"{info.get('title', '')} {scan.name}", re.IGNORECASE):
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
            self.geometry = self.publisher.geometry = geometry
        logger.info(
            "scan %s (%s #%s, %s): detector %s, motors %s, %d points%s",
            self.key, one_line(scan.name), scan.number, one_line(geometry.title), one_line(geometry.detector),
            [one_line(m) for m in geometry.motor_names], st.frames_expected, " [dark]" if st.dark else "",
        )
        self.publisher.provenance = {**live_provenance(scan, geometry), **PROCESS_EXTRAS}
        return geometry

    def _accumulate(self, source: LiveFrameSource, geometry: ScanGeometry) -> None:
        """Every batch of the scan into the accumulators, publishing as they go: the live
        preview first, then (when due) a version of its maps; the full-resolution pipeline
        takes the batch on a thread of its own (`behind_preview`), so that its update (and
        its first touch of a new scan's memory) is never between a frame and its live maps.
        The updates may still run when it returns (`_flush_updates`): the scan's last frames
        go out in a preview version first."""
        # the source weakly: held by its own callback, it and its buffers (256 MB at
        # 2048^2) would outlive the scan until the garbage collector found the cycle
        source.reclaim = partial(self._reclaim, weakref.proxy(source))
        t_read = time.perf_counter()
        for batch in source.batches(self._stop_requested):
            t0 = time.perf_counter()
            self.metrics.read_seconds.observe(t0 - t_read)
            self.publisher.frames_arrived()
            prepared = self._add(batch, geometry)
            n = batch.frames.shape[0]
            self.status.frames_processed += n
            if self.publisher.due(source.behind):
                self.publish("running", background=True, behind=source.behind)
            if prepared is not None:
                if self.updates is None:
                    self.updates, self.gathered = self._full_resolution_updates(geometry)
                if self.gathered.add(*prepared, batch.frames):
                    self._submit_gathered()
                done = self.updates.finished()
            else:
                self.metrics.frames.inc(n)
                self.metrics.batch_seconds.observe(time.perf_counter() - t0)
                done = [batch.frames]
            del prepared
            if self.pipeline is None or not self.pipeline.retains_frames:
                for frames in done:
                    source.recycle(frames)  # the next read reuses the memory
            del batch, done  # its frames are free before the next read
            t_read = time.perf_counter()

    def _full_resolution_updates(self, geometry: ScanGeometry) -> tuple[UpdatesBehindPreview, GatheredBatches]:
        """The scan's full-resolution updates and the batches gathered for them: an update
        takes up to an eighth of the accumulators' bytes in frames (so that its frames, not
        the running sums it reads and writes whatever its frames, are most of its work), at
        most a quarter of `batch_mb`: the frame source's buffer (`batch_mb`) holds the
        frames gathered, those of the updates waiting and the next reads, and a read that
        finds no room waits for an update (2048^2 two motors: 8 of its 32 frames)."""
        batch_bytes = self.d.config.analysis.batch_mb << 20
        sums = ScanPipeline.memory_bytes(geometry, self.pipeline.frame_shape, self.d.config.analysis)
        return UpdatesBehindPreview(batch_bytes), GatheredBatches(min(sums // 8, batch_bytes // 4))

    def _reclaim(self, source: LiveFrameSource) -> bool:
        """The frame source has no room left in its buffer for a read: wait for the oldest
        full-resolution update and give its batch back; False when none can come back. So a
        daemon a buffer behind waits for its updates instead of holding a second buffer
        (256 MB at 2048^2). The batches gathered for the next update go first."""
        if self.updates is None or self.pipeline is None or self.pipeline.retains_frames:
            return False
        self._submit_gathered()
        t0 = time.perf_counter()
        if not self.updates.wait_finished():
            return False
        logger.debug("scan %s: reads waited %.3f s for a full-resolution update", self.key, time.perf_counter() - t0)
        for frames in self.updates.finished():
            source.recycle(frames)
        return True

    def _add_full_resolution(self, pipeline: ScanPipeline, frames: np.ndarray, positions: Mapping[str, np.ndarray],
                             n: int) -> None:
        """One batch into the full-resolution pipeline (on the updates' thread), leaving a
        core to the live path (`tiles.fewer_threads`)."""
        t0 = time.perf_counter()
        with fewer_threads():
            pipeline.add(frames, positions)
        self.metrics.frames.inc(n)
        self.metrics.batch_seconds.observe(time.perf_counter() - t0)

    def _add(self, batch: Batch, geometry: ScanGeometry) -> tuple[np.ndarray, Mapping[str, np.ndarray]] | None:
        """One batch into the dark scan's running mean or the scan's live preview; the
        batch as the full-resolution pipeline takes it (`ScanPipeline.prepared`), or None
        when nothing is left to add (a dark scan, or a scan that is its own preview)."""
        if batch.frames.dtype.kind == "c":
            raise ScanError(f"the detector's frames are complex numbers ({batch.frames.dtype}): "
                            "a detector gives real counts")
        if self.status.dark:
            if self.dark_mean is None:
                self.dark_shape = tuple(batch.frames.shape[1:])
                self.dark_mean = RunningMean(batch.frames[0].size)
            self.dark_mean.update(batch.frames)
            return None
        shape = tuple(batch.frames.shape[1:])
        if self.pipeline is not None and self.pipeline.raw_shape != shape and self.updates is not None:
            self._flush_updates()  # whether the pipeline has taken frames yet
        if self.pipeline is None or (not self.pipeline.frames_processed and self.pipeline.raw_shape != shape):
            self.pipeline = self._new_pipeline(geometry, shape)  # the announced shape was not the frames'
            self.preview_factor = preview_binning(self.pipeline.frame_shape, len(geometry.motors), self._forced())
            self.preview = self.pipeline.preview(self.preview_factor) if self.preview_factor > 1 else None
        if self.preview is None:
            self.pipeline.update(batch.frames, batch.positions, batch.monitor)
            return None
        frames, positions = self.pipeline.prepared(batch.frames, batch.positions, batch.monitor)
        self.preview.update(frames, positions)
        return frames, positions

    def _forced(self) -> int | None:
        """The `live_binning` setting when it is not "auto"."""
        setting = self.d.config.live_binning
        return None if setting == "auto" else int(setting)

    def _finish(self, scan, geometry: ScanGeometry, batch_size: int) -> None:
        """The scan has ended: its final maps (windowed moments from the frames read again)."""
        st, config = self.status, self.d.config
        if self.publisher.unpublished and self.publisher.binning(self._frame_shape(), len(geometry.motors), True) > 1:
            # the final maps are full resolution (a snapshot and a file several times the
            # live ones'), so the last frames go out binned first, as every other frame did
            self.publish("running")
        self._flush_updates()  # every frame in the full-resolution pipeline
        if self.updates is not None:
            self.updates.finished()  # the frame source's buffers, not needed for the final maps
        # the live versions are over: their preview and buffers go before the final maps
        self.publisher.join()
        self.preview = None
        self.buffers = MapBuffers()
        end_reason = self._end_reason(scan)
        self.publisher.provenance.update(end_time=str(scan.info.get("end_time", "")), end_reason=end_reason)
        workflow = self._workflow(geometry, end_reason)
        saving: Callable[[], object] | None = None
        if self.pipeline is not None:
            self.pipeline.finish()
            if workflow:
                # the scan-end workflow makes the final maps (window, fits, analyses) from
                # the saved state and the scan file, in its own process: the daemon's final
                # version is the full-resolution one-pass maps, and its memory is freed now
                saving = self._hand_off(scan, workflow)
            elif geometry.motors and config.analysis.moment_window > 0:
                def reread() -> Iterator[Batch]:
                    # batches of a quarter of the live ones, always full (no delay bound:
                    # every frame is there already). With no wait, a batch held what one
                    # store read brought (~4 frames at 2048^2) and the window's pass read and
                    # wrote its 15 rows of sums for each: 2048^2, two motors, 200 frames in
                    # the store, the two passes took 19-23 s; 7-8 s in quarter batches (8
                    # frames); 10-15 s in whole live batches (32), peak RSS 3.6 GB against
                    # 3.1-3.3 (bench/RESULTS.md, session 9)
                    again = LiveFrameSource(scan, geometry, max(1, batch_size // 4), config.read_timeout, math.inf)
                    return again.batches(self._stop_requested)

                self._reread = reread
                # every frame is in: the full-resolution one-pass maps go out now, while the
                # window reads the frames again (tens of seconds for a large scan)
                self.publisher.provenance["moment_window_reason"] = "windowed final moments in progress"
                self.publish("running", full_resolution=True)
                self.publisher.provenance["moment_window_reason"] = ""
        if st.dark and self.dark_mean is not None and self.dark_mean.count:
            self.d.darks.add(st.session, st.number, self.dark_mean)
        processed = st.frames_processed
        if processed == 0:
            raise ScanError(f"scan ended ({end_reason}) without any complete point")
        last = ("complete", "") if end_reason == "SUCCESS" and (st.frames_expected in (0, processed)) else (
            "aborted", f"scan ended with {end_reason} after {processed} of {st.frames_expected} points")
        self.publish(*last)
        self.buffers = MapBuffers()  # the final maps (~0.3 GB at 2048^2) are on disk: not held through the save
        workflow = self._handed_off(saving, workflow) if saving is not None else None
        if saving is not None and workflow is None:
            self.publish(*last)  # the final file says why no workflow follows (rare: disk full...)
        logger.info("scan %s done: %s, %d frames", self.key, self.status.state, processed)
        if workflow:
            self.d.post_scan.submit(self.key, Path(st.path), workflow, self._job)

    def _workflow(self, geometry: ScanGeometry, end_reason: str) -> str | None:
        """The scan-end workflow this scan gets ([post_scan]: per scan type; an aborted scan
        only with enough of its points), None for none."""
        cfg, st = self.d.config.post_scan, self.status
        if st.dark or not geometry.motors or self.pipeline is None or not st.frames_processed:
            return None
        complete = end_reason == "SUCCESS" and st.frames_expected in (0, st.frames_processed)
        if not complete and st.frames_processed < cfg.aborted_min_fraction * st.frames_expected:
            logger.info("scan %s: no scan-end workflow, %d of %d points came in", self.key, st.frames_processed,
                        st.frames_expected)
            return None
        return cfg.workflow_for(geometry.scan_type)

    def _hand_off(self, scan, workflow: str) -> Callable[[], object]:
        """Prepare the workflow's job (the provenance says it is queued) and return the save
        of the scan's accumulator state for it, which `_handed_off` runs once the final maps
        are on disk.

        Why after the maps: they are what the beamline waits for. At 2048^2 with two motors
        the save (~0.7 GB of sums) run beside the final maps' snapshot and write (as it was)
        slowed them to 3.8-4.3 s after the last frame (snapshot 1.7 s instead of 0.4 s, write
        2.1 s); the workflow, which takes tens of seconds, starts a save later."""
        cfg, st, provenance = self.d.config.post_scan, self.status, self.publisher.provenance
        filename = str(getattr(scan, "path", None) or scan.info.get("filename") or "")
        saving = partial(save_state, state_path(st.path), self.pipeline, self.key, raw_file=filename,
                         raw_entry=f"{st.number}.1")
        self._job = post_scan_job(cfg, self.d.config.quicklook, filename=filename, scan=f"{st.number}.1",
                                  output=st.path, state=str(state_path(st.path)), scan_key=self.key)
        self.publisher.quicklook_by_workflow = True
        self._window_reason = provenance.get("moment_window_reason")
        provenance.update({"post_scan/workflow": workflow, "post_scan/state": "queued", "post_scan/reason": "",
                           "moment_window_reason": f"applied by the scan-end workflow {workflow}"})
        return saving

    def _handed_off(self, saving: Callable[[], object], workflow: str) -> str | None:
        """The workflow once its state is saved (`saving`); None (and the reason in the
        provenance, for the caller to publish) when the state could not be saved."""
        try:
            saving()
            return workflow
        except (OSError, RuntimeError) as exc:
            reason = one_line(f"accumulator state not saved: {exc}")
            logger.error("scan %s: no scan-end workflow: %s", self.key, reason)
            provenance = self.publisher.provenance
            self.publisher.quicklook_by_workflow = False
            provenance.update({"post_scan/workflow": workflow, "post_scan/state": "failed", "post_scan/reason": reason})
            if self._window_reason is None:
                provenance.pop("moment_window_reason", None)
            else:
                provenance["moment_window_reason"] = self._window_reason
            self._job = None
            return None

    # -- maps ------------------------------------------------------------------------------
    def _frame_shape(self) -> tuple[int, int] | None:
        return self.pipeline.frame_shape if self.pipeline is not None else None

    def publish(self, state: str = "running", reason: str = "", background: bool = False,
                behind: bool = True, full_resolution: bool = False) -> None:
        """A version of the maps file (`MapPublisher.publish`), at the binning of the moment
        (`full_resolution`: a running version at full resolution, the scan's last frames in)."""
        motors = len(self.geometry.motors) if self.geometry else 0
        live = state == "running" and not full_resolution
        binning = self.publisher.binning(self._frame_shape(), motors, live)
        source = self._source(binning)
        frames = source.frames_processed if source else (self.dark_mean.count if self.dark_mean else 0)
        maps_of = self._maps if state != "failed" or self.pipeline is not None else (lambda b, f: {})
        self.publisher.publish(maps_of, frames, binning, state, reason, background, behind)

    def _source(self, binning: int) -> ScanPipeline | None:
        """The pipeline whose maps a version at `binning` shows: the live preview for the
        multiples of its binning, else the full-resolution pipeline."""
        if self.preview is not None and binning % self.preview_factor == 0:
            return self.preview
        return self.pipeline

    def _maps(self, binning: int, final: bool = False) -> dict[str, np.ndarray]:
        """The maps to publish, over blocks of `binning` x `binning` pixels (the live
        preview's, or the full-resolution pipeline's); `final`: the scan's final maps, the
        moments within each pixel's window from the scan's frames read again (`_reread`),
        when that is configured and possible."""
        source = self._source(1 if final else binning)
        if source is not None and source.frames_processed:
            st = self.status
            if self.pipeline.dark is None and self.pipeline.takes_snapshot_dark:
                # a dark scan that finished after this scan started is still used
                dark = self.d.darks.latest_before(st.session, st.number)
                raw = self.pipeline.raw_shape
                if dark is not None and dark.total.size == raw[0] * raw[1]:
                    self.pipeline.set_dark(dark)
                    if self.preview is not None:
                        self.preview.set_dark(self.pipeline.dark.reshape(self.pipeline.frame_shape))
            self.publisher.provenance.update(background_rule=source.background()[1],
                                             points_dropped=self.pipeline.points_dropped)
            if final and self._reread is not None:
                self.buffers = MapBuffers()  # the live versions' arrays are not needed any more
                # the window from float64 maps: the one-pass maps rounded to float32 would
                # move window edges by their rounding (offline `process` uses float64 too)
                maps = self._windowed(self.pipeline.snapshot(np.float64, binning))
                return Maps({k: v.astype(file_dtype(v.dtype), copy=False) for k, v in maps.items()}, axes=maps.axes)
            # float32, what the file stores, into the scan's buffers (allocated once per scan)
            factor = self.preview_factor if source is self.preview else 1
            return source.snapshot(file_dtype(np.float64), binning // factor, self.buffers)
        if self.dark_mean is not None and self.dark_mean.count:
            return {"dark": self.dark_mean.snapshot().reshape(self.dark_shape)}
        return {}

    def _windowed(self, maps: Maps) -> Maps:
        """`maps` with windowed moments (`ScanPipeline.windowed_maps`), or as they are, with
        the reason in the file, when the frames cannot be read again (a store that trimmed
        a plain array stream, a Lima file gone)."""
        config, provenance = self.d.config.analysis, self.publisher.provenance
        t0 = time.perf_counter()
        try:
            maps = self.pipeline.windowed_maps(maps, self._reread)
        except (ScanError, IndexNoMoreThereError, OSError, redis.RedisError) as exc:
            reason = one_line(f"{type(exc).__name__}: {exc}")
            logger.warning("scan %s: final moments over the whole scan, not windowed: %s", self.key, reason)
            provenance.update(moment_window=0.0, moment_window_passes=0, moment_window_reason=f"not applied: {reason}")
            return maps
        if self._stop_requested():
            raise ScanError("daemon stopped while the final maps were made")
        provenance.update(moment_window=config.moment_window, moment_window_passes=config.moment_window_passes)
        logger.info("scan %s: windowed moments (%g sigma, %d passes over the frames) in %.2f s", self.key,
                    config.moment_window, config.moment_window_passes, time.perf_counter() - t0)
        return maps

    def _new_pipeline(self, geometry: ScanGeometry, shape: tuple[int, ...]) -> ScanPipeline:
        """The scan's pipeline for raw frames of `shape`, with the session's latest dark;
        a ScanError when its accumulators would exceed the daemon's memory budget."""
        st = self.status
        budget = self.d.config.memory_budget_mb
        analysis = self.d.config.analysis
        maps_shape = tuple(shape)
        for step in PreprocessChain.check(analysis.preprocess).steps:  # the steps that resize: ROI, binning
            if not isinstance(step, _ImageStep):
                maps_shape = step.output_shape(maps_shape)
        needed = ScanPipeline.memory_bytes(geometry, maps_shape, analysis)
        if budget and needed > budget << 20:
            raise ScanError(
                f"frames of {shape[0]}x{shape[1]} over {len(geometry.motors)} motors need ~{needed / 2**30:.1f} GiB "
                f"of accumulators, more than memory_budget_mb={budget}: bin the frames (a binning step) or "
                "raise the budget")
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
