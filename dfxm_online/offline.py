"""Offline processing of a recorded scan: the same pipeline as the daemon, fed from a file."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from .acquisition.blissfile import (
    find_detector,
    first_scan_with_motors,
    open_scan,
    parse_scan_url,
    scan_name,
    scan_provenance,
)
from .acquisition.frames import Batch
from .acquisition.geometry import ScanError, ScanGeometry
from .analysis.fits import FitSettings
from .analysis.rocking_curves import fit_recorded_scan
from .analysis.scan_end import ScanEndOptions, scan_end_groups
from .config import AnalysisConfig, ConfigError
from .images import load_images
from .online.accumulators.background import RunningMean
from .online.maps import default_map
from .online.pipeline import ScanPipeline
from .publish.nexus import ProcessInfo, write_maps_file
from .publish.quicklook import quicklook_path, write_quicklook

logger = logging.getLogger(__name__)

DEFAULT_FIT = FitSettings()
DEFAULT_SCAN_END = ScanEndOptions()


def mean_dark(url: str, default_file: str | Path | None = None, detector: str | None = None,
              batch_size: int = 32) -> RunningMean:
    """Frame statistics of a dark scan given as 'FILE::SCAN' (or 'SCAN' in `default_file`)."""
    path, scan = parse_scan_url(url, default_file)
    with h5py.File(path, "r") as f:
        if scan not in f:
            raise ScanError(f"{path} has no dark scan {scan}")
        _, frames = find_detector(f[scan], detector)
        shape = (int(frames.shape[1]), int(frames.shape[2]))
        mean = RunningMean(shape[0] * shape[1])
        for start in range(0, frames.shape[0], batch_size):
            mean.update(frames[start : start + batch_size])
    if mean.count == 0:
        raise ScanError(f"dark scan {url} has no frames")
    return mean


@dataclass
class ScanResult:
    """What `process` makes of a recorded scan."""

    maps: dict[str, np.ndarray]
    axes: dict
    geometry: ScanGeometry
    frames_processed: int
    #: what the maps come from and how they were made (/entry/process fields)
    provenance: dict[str, object] = field(default_factory=dict)
    #: /entry/fit maps (None: fits not run), their converged fraction and settings
    fit_maps: dict[str, np.ndarray] | None = None
    fit_info: dict[str, object] = field(default_factory=dict)
    #: the scan-end analyses' NXdata groups by path (/entry/drift, /entry/maps/mask, ...)
    nxdata: dict[str, dict] = field(default_factory=dict)


def analyse_scan(
    path: str | Path,
    scan: str | int | None = None,
    config: AnalysisConfig | None = None,
    dark: str | RunningMean | np.ndarray | None = None,
    progress: bool = True,
    fit: FitSettings | None = None,
    scan_end: ScanEndOptions | None = None,
) -> ScanResult:
    """Maps of a recorded scan and, with `fit`, the per-pixel Gaussian fits after them.

    `scan` None takes the file's first scan with moving motors (a session usually starts
    with its dark scan). The one-pass moments are made final within each pixel's window
    (`moment_window`), which reads the frames again; the fits read them once more, in bands
    of rows, through the same preprocessing and background, started from the final moments
    (`analysis.rocking_curves.fit_recorded_scan`)."""
    config = config or AnalysisConfig()
    if scan is None:
        scan = first_scan_with_motors(path, config.detector, config.motors)
        logger.info("%s: no scan named, processing %s (the first with moving motors)", path, scan)
    scan = scan_name(scan)
    with open_scan(path, scan, detector=config.detector, motors=config.motors,
                   monitor=config.monitor) as rec:
        geometry = rec.geometry()
        if fit is not None:  # refused before any frame is read
            try:
                fit.validate(len(geometry.motors))
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        dark_image = mean_dark(dark, path, rec.detector) if isinstance(dark, str) else dark
        pipeline = ScanPipeline(geometry, rec.frame_shape, config, dark_image,
                                load_images(config.images), has_monitor=rec.monitor is not None)
        batch = config.frames_per_batch(rec.frame_shape, rec.frames.dtype)
        name = f"{Path(path).name}::{scan}"
        reuse = not pipeline.retains_frames
        batch_ = None
        for batch_ in _progress(read_ahead(rec, batch, reuse), rec.npoints, name, progress):
            pipeline.update(batch_.frames, batch_.positions, batch_.monitor)
        del batch_  # its frames are a reused read buffer (256 MB): not kept through the maps
        pipeline.finish()
        maps = pipeline.snapshot()
        _, rule = pipeline.background()
        passes = config.moment_window_passes if geometry.motors and config.moment_window > 0 else 0
        reads = iter(range(1, passes + 1))
        maps = pipeline.windowed_maps(maps, lambda: _progress(
            read_ahead(rec, batch, reuse), rec.npoints, f"{name} window {next(reads)}/{passes}", progress))
        logger.info(
            "%s: detector %s %dx%d, motors %s, %d points, background %s, dark %s, moment window %s",
            name, rec.detector, *pipeline.frame_shape, ", ".join(geometry.motor_names) or "none",
            rec.npoints, rule, dark if isinstance(dark, str) else ("image" if dark is not None else "none"),
            f"{config.moment_window:g} sigma x {passes}" if passes else "off",
        )
        provenance = {**scan_provenance(rec), "background_rule": rule,
                      "dark_scan": str(dark) if isinstance(dark, str) else "",
                      "moment_window": float(config.moment_window) if passes else 0.0,
                      "moment_window_passes": passes, "points_dropped": pipeline.points_dropped}
        result = ScanResult(maps, maps.axes, geometry, pipeline.frames_processed, provenance)
        if fit is not None and geometry.motors:
            _fit(result, rec, pipeline, fit, progress)
        if scan_end is not None and geometry.motors:
            _scan_end(result, rec, pipeline, batch, scan_end)
        return result


def _scan_end(result: ScanResult, rec, pipeline: ScanPipeline, batch: int, options: ScanEndOptions) -> None:
    """darfix's other analyses (analysis/scan_end.py) into `result`: their NXdata groups
    and /entry/process fields; the frames they need are read again, through the chain."""

    def frame_batches():
        for b in rec.batches(batch):
            yield np.arange(b.start, b.start + len(b.frames)), pipeline.preprocessed(b.frames, b.positions, b.monitor)

    t0 = time.perf_counter()
    groups, fields = scan_end_groups(
        result.maps, result.geometry.motors, positions=rec.positions, positioners=rec.positioners(),
        accumulators=pipeline.extras, frame_batches=frame_batches, n_frames=rec.npoints, options=options,
    )
    result.nxdata = groups
    result.fit_info.update(fields)
    logger.info("scan-end analyses: %d groups in %.1f s%s", len(groups), time.perf_counter() - t0,
                f"; skipped: {fields['scan_end_skipped']}" if fields.get("scan_end_skipped") else "")


def _fit(result: ScanResult, rec, pipeline: ScanPipeline, fit: FitSettings, progress: bool) -> None:
    """The per-pixel fits of a recorded scan into `result` (maps and /entry/process fields)."""
    t0 = time.perf_counter()
    fits = fit_recorded_scan(rec, pipeline, result.maps, fit, progress)
    seconds = time.perf_counter() - t0
    result.fit_maps = fits.maps(pipeline.frame_shape)
    fitted = int(fits.fitted.sum())
    result.fit_info = {
        "fit_converged_fraction": fits.converged_fraction,
        "fit_pixels": fitted,
        "fit_seconds": seconds,
        "fit_settings": json.dumps({**fit.to_dict(), "model": fit_model_name(result.geometry.motor_names, fit),
                                    "background": pipeline.background()[1]}, sort_keys=True),
    }
    logger.info("fits: %d pixels in %.1f s, %.1f %% converged", fitted, seconds,
                100 * fits.converged_fraction if fitted else 0.0)


def fit_model_name(motor_names: list[str], fit: FitSettings) -> str:
    """A readable name of the fitted model, for /entry/process/fit_settings."""
    kind = {1: "gaussian", 2: "bivariate gaussian", 3: "trivariate gaussian"}[len(motor_names)]
    peaks = " (up to 2 peaks)" if fit.max_peaks == 2 else ""
    return f"{kind} over {', '.join(motor_names)} + background{peaks}"


def read_ahead(rec, batch_size: int, reuse: bool = True) -> Iterator[Batch]:
    """`rec.batches(batch_size)`, the next batch read on a thread while the caller works on
    this one, into two read buffers used in turn (`reuse`; else fresh arrays, for a
    consumer that keeps the frames): a batch's frames are valid until the next is asked for.

    Why: `process` of a 240-frame 2048^2 scan in the page cache spent 2.3 s reading into a
    fresh 256 MB array per batch (its page faults), 0.67 s into one buffer; the reads then
    overlap the pass (h5py holds its lock, the pass runs without the GIL)."""
    n = rec.npoints
    buffers = [np.empty((batch_size, *rec.frame_shape), rec.frames.dtype) for _ in range(2)] if reuse else None

    def read(start: int, slot: int) -> Batch:
        stop = min(start + batch_size, n)
        if buffers is None:
            frames = np.asarray(rec.frames[start:stop])
        else:
            frames = buffers[slot][: stop - start]
            rec.frames.read_direct(frames, np.s_[start:stop], np.s_[0 : stop - start])
        return Batch(start, frames, {k: v[start:stop] for k, v in rec.positions.items()},
                     None if rec.monitor is None else rec.monitor[start:stop])

    with ThreadPoolExecutor(1, thread_name_prefix="dfxm-read") as reader:
        pending = reader.submit(read, 0, 0) if n else None
        for i, start in enumerate(range(0, n, batch_size)):
            ready = pending.result()
            nxt = start + batch_size
            pending = reader.submit(read, nxt, (i + 1) % 2) if nxt < n else None
            yield ready


def _progress(batches: Iterable[Batch], total: int, desc: str, enabled: bool) -> Iterator[Batch]:
    """`batches` with a tqdm bar counting frames (long offline reads)."""
    with tqdm(total=total, desc=desc, unit="frame", disable=not enabled) as bar:
        for batch in batches:
            yield batch
            bar.update(batch.frames.shape[0])


def process_scan(
    path: str | Path,
    scan: str | int | None = None,
    config: AnalysisConfig | None = None,
    dark: str | RunningMean | np.ndarray | None = None,
    progress: bool = True,
) -> tuple[dict[str, np.ndarray], dict, ScanGeometry, int]:
    """Maps of a recorded scan (no fits); returns (maps, their axes, geometry, frames processed)."""
    result = analyse_scan(path, scan, config, dark, progress)
    return result.maps, result.axes, result.geometry, result.frames_processed


def process_to_file(
    path: str | Path, out: str | Path, scan: str | int | None = None, config: AnalysisConfig | None = None,
    dark: str | RunningMean | np.ndarray | None = None, progress: bool = True,
    fit: FitSettings | None = DEFAULT_FIT, quicklook: bool = True,
    scan_end: ScanEndOptions | None = DEFAULT_SCAN_END,
) -> Path:
    """`dfxm-online process`: maps of a recorded scan written in the daemon's layout, the
    per-pixel fits under /entry/fit (`fit` None: no fits), darfix's other analyses
    (`scan_end` None: none; analysis/scan_end.py) and, with `quicklook`, the maps' PNG
    beside them."""
    config = config or AnalysisConfig()
    result = analyse_scan(path, scan, config, dark, progress, fit, scan_end)
    geometry, provenance = result.geometry, result.provenance
    info = ProcessInfo(
        state="complete", frames_processed=result.frames_processed, frames_expected=geometry.npoints,
        scan_key=f"{Path(path).resolve()}::{provenance['raw_entry']}", config=config.model_dump_json(),
        extra={**provenance, **result.fit_info},
    )
    groups = {"fit": result.fit_maps} if result.fit_maps is not None else None
    out = write_maps_file(out, result.maps, info, default_map(geometry.motor_names), geometry.title,
                          result.axes, groups=groups, nxdata=result.nxdata)
    if quicklook and geometry.motors:
        write_quicklook(result.maps, geometry.motor_names, quicklook_path(out),
                        f"{Path(out).name}: {provenance['raw_file']}::{provenance['raw_entry']} - "
                        f"{', '.join(geometry.motor_names)} - {result.frames_processed} frames",
                        result.axes.get("mosaicity_key"))
    return out
