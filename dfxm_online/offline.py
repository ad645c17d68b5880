"""Offline processing of a recorded scan: the same pipeline as the daemon, fed from a file."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from .acquisition.batch import Batch
from .acquisition.blissfile import (
    RecordedScan,
    find_detector,
    first_scan_with_motors,
    open_scan,
    parse_scan_url,
    scan_name,
    scan_provenance,
)
from .acquisition.geometry import ScanError, ScanGeometry
from .analysis.fits import FitSettings
from .analysis.rocking_curves import fit_recorded_scan
from .analysis.scan_end import ScanEndOptions, scan_end_groups
from .config import AnalysisConfig, ConfigError
from .images import load_images
from .online.accumulators.background import RunningMean
from .online.maps import Maps, default_map
from .online.pipeline import ScanPipeline
from .online.window_bands import ScanRows
from .publish.nexus import ProcessInfo, write_maps_file
from .publish.quicklook import quicklook_path, quicklook_title, write_quicklook

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
    (`analysis.rocking_curves.fit_recorded_scan`). The ewoks graphs run the same steps
    (`accumulate`, `final_maps`, `fit_maps`, `scan_end_analyses`), one task each."""
    config = config or AnalysisConfig()
    if scan is None:
        scan = first_scan_with_motors(path, config.detector, config.motors)
        logger.info("%s: no scan named, processing %s (the first with moving motors)", path, scan)
    scan = scan_name(scan)
    with open_scan(path, scan, detector=config.detector, motors=config.motors,
                   monitor=config.monitor) as rec:
        if fit is not None:  # refused before any frame is read
            check_fit(fit, rec.geometry())
        pipeline = accumulate(rec, config, dark, progress)
        maps, provenance = final_maps(rec, pipeline, progress)
        provenance["dark_scan"] = str(dark) if isinstance(dark, str) else ""
        result = ScanResult(maps, maps.axes, pipeline.geometry, pipeline.frames_processed, provenance)
        if fit is not None and pipeline.geometry.motors:
            result.fit_maps, result.fit_info = fit_maps(rec, pipeline, maps, fit, progress)
        if scan_end is not None and pipeline.geometry.motors:
            result.nxdata, fields = scan_end_analyses(rec, pipeline, maps, scan_end)
            result.fit_info.update(fields)
        return result


def check_fit(fit: FitSettings, geometry: ScanGeometry) -> None:
    """Refuse fit settings the scan cannot take (a ConfigError, before any frame is read)."""
    try:
        fit.validate(len(geometry.motors))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def accumulate(rec: RecordedScan, config: AnalysisConfig, dark: str | RunningMean | np.ndarray | None = None,
               progress: bool = True, geometry: ScanGeometry | None = None,
               report: Report | None = None) -> ScanPipeline:
    """The one-pass accumulators of a recorded scan (what the daemon keeps while a scan
    runs); `dark` a dark scan's 'FILE::SCAN' (or scan in the same file), frames or image."""
    geometry = geometry or rec.geometry()
    dark_image = mean_dark(dark, rec.path, rec.detector) if isinstance(dark, str) else dark
    pipeline = ScanPipeline(geometry, rec.frame_shape, config, dark_image,
                            load_images(config.images), has_monitor=rec.monitor is not None)
    batch = config.frames_per_batch(rec.frame_shape, rec.frames.dtype)
    batch_ = None
    for batch_ in _progress(read_ahead(rec, batch, not pipeline.retains_frames), rec.npoints,
                            f"{rec.path.name}::{rec.scan}", progress, report):
        pipeline.update(batch_.frames, batch_.positions, batch_.monitor)
    del batch_  # its frames are a reused read buffer (256 MB): not kept through the maps
    pipeline.finish()
    return pipeline


def final_maps(rec: RecordedScan, pipeline: ScanPipeline, progress: bool = True,
               report: Report | None = None) -> tuple[Maps, dict[str, object]]:
    """The final maps of an accumulated scan (the moments within each pixel's window, the
    frames read again from `rec`) and the /entry/process fields that say how they were made."""
    config, geometry = pipeline.config, pipeline.geometry
    passes = config.moment_window_passes if geometry.motors and config.moment_window > 0 else 0
    maps = pipeline.snapshot(orientation=not passes)  # the window makes them from its COM maps
    _, rule = pipeline.background()
    reads = iter(range(1, passes + 1))
    batch = config.frames_per_batch(rec.frame_shape, rec.frames.dtype)
    name = f"{rec.path.name}::{rec.scan}"

    def reread() -> Iterator[Batch]:
        n = next(reads)
        return _progress(read_ahead(rec, batch, not pipeline.retains_frames), rec.npoints,
                         f"{name} window {n}/{passes}", progress,
                         None if report is None else (lambda f: report((n - 1 + f) / passes)))

    if passes and rec.stored_plainly and not pipeline.chain.steps:
        # by bands of rows, which read at the cost of their bytes: one read for all the
        # passes (online/window_bands.py); the one-pass maps are done with
        with tqdm(total=100, desc=f"{name} window", unit="%", disable=not progress) as bar:
            def done(fraction: float) -> None:
                bar.update(round(100 * fraction) - bar.n)
                if report is not None:
                    report(fraction)

            rows = ScanRows(rec.npoints, rec.frames.dtype, rec.positions,
                            lambda r0, r1, out: rec.read(0, rec.npoints, out, (r0, r1)), done)
            maps = pipeline.windowed_maps(maps, reread, rows, overwrite=True)
    else:  # whole frames, the scan read again for each pass
        maps = pipeline.windowed_maps(maps, reread)
    logger.info(
        "%s: detector %s %dx%d, motors %s, %d points, background %s, dark %s, moment window %s",
        name, rec.detector, *pipeline.frame_shape, ", ".join(geometry.motor_names) or "none",
        rec.npoints, rule, "none" if pipeline.dark is None and not pipeline.dark_in_chain else "yes",
        f"{config.moment_window:g} sigma x {passes}" if passes else "off",
    )
    provenance = {**scan_provenance(rec), "background_rule": rule, "dark_scan": "",
                  "moment_window": float(config.moment_window) if passes else 0.0,
                  "moment_window_passes": passes, "points_dropped": pipeline.points_dropped}
    return maps, provenance


def scan_end_analyses(rec: RecordedScan, pipeline: ScanPipeline, maps: Mapping[str, np.ndarray],
                      options: ScanEndOptions, only: Collection[str] | None = None) -> tuple[dict, dict]:
    """darfix's other analyses (analysis/scan_end.py; `only` a subset): their NXdata groups
    and /entry/process fields; the frames they need are read again, through the chain."""
    batch = pipeline.config.frames_per_batch(rec.frame_shape, rec.frames.dtype)

    def frame_batches():
        for b in rec.batches(batch):
            yield np.arange(b.start, b.start + len(b.frames)), pipeline.preprocessed(b.frames, b.positions, b.monitor)

    t0 = time.perf_counter()
    groups, fields = scan_end_groups(
        maps, pipeline.geometry.motors, positions=rec.positions, positioners=rec.positioners(),
        accumulators=pipeline.extras, frame_batches=frame_batches, n_frames=rec.npoints, options=options,
        only=only,
    )
    logger.info("scan-end analyses: %d groups in %.1f s%s", len(groups), time.perf_counter() - t0,
                f"; skipped: {fields['scan_end_skipped']}" if fields.get("scan_end_skipped") else "")
    return groups, fields


def fit_maps(rec: RecordedScan, pipeline: ScanPipeline, maps: Mapping[str, np.ndarray], fit: FitSettings,
             progress: bool = True, rows: tuple[int, int] | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """The per-pixel fits of a recorded scan: /entry/fit maps and /entry/process fields;
    `rows` fits only that band of detector rows (a shard; the other rows NaN)."""
    t0 = time.perf_counter()
    fits = fit_recorded_scan(rec, pipeline, maps, fit, progress, rows=rows)
    seconds = time.perf_counter() - t0
    fitted = int(fits.fitted.sum())
    info = {
        "fit_converged_fraction": fits.converged_fraction,
        "fit_pixels": fitted,
        "fit_seconds": seconds,
        "fit_settings": json.dumps({**fit.to_dict(), "model": fit_model_name(pipeline.geometry.motor_names, fit),
                                    "background": pipeline.background()[1]}, sort_keys=True),
    }
    logger.info("fits: %d pixels in %.1f s, %.1f %% converged", fitted, seconds,
                100 * fits.converged_fraction if fitted else 0.0)
    return fits.maps(pipeline.frame_shape), info


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
            rec.read(start, stop, frames)
        return Batch(start, frames, {k: v[start:stop] for k, v in rec.positions.items()},
                     None if rec.monitor is None else rec.monitor[start:stop])

    with ThreadPoolExecutor(1, thread_name_prefix="dfxm-read") as reader:
        pending = reader.submit(read, 0, 0) if n else None
        for i, start in enumerate(range(0, n, batch_size)):
            ready = pending.result()
            nxt = start + batch_size
            pending = reader.submit(read, nxt, (i + 1) % 2) if nxt < n else None
            yield ready


#: a progress callback: the fraction done of a long read (an ewoks task's progress)
Report = Callable[[float], None]


def _progress(batches: Iterable[Batch], total: int, desc: str, enabled: bool,
              report: Report | None = None) -> Iterator[Batch]:
    """`batches` with a tqdm bar counting frames (long offline reads), and `report`ed."""
    done = 0
    with tqdm(total=total, desc=desc, unit="frame", disable=not enabled) as bar:
        for batch in batches:
            yield batch
            bar.update(batch.frames.shape[0])
            done += batch.frames.shape[0]
            if report is not None and total:
                report(min(1.0, done / total))


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
        draw_quicklook(out, result.maps, result.axes, geometry, provenance, result.frames_processed,
                       result.fit_maps, result.nxdata, "complete")
    return out


def draw_quicklook(out: Path, maps: Mapping[str, np.ndarray], axes: Mapping, geometry: ScanGeometry,
                   provenance: Mapping[str, object], frames: int, fit_maps: Mapping[str, np.ndarray] | None,
                   nxdata: Mapping[str, Mapping], state: str) -> Path:
    """The quick-look PNG beside the maps file `out` of a recorded scan's analysis (`process`
    and the scan-end workflows draw the same one)."""
    sample = nxdata.get("/entry/sample_axes")  # µm axes when the pixel size is known
    return write_quicklook(maps, geometry.motor_names, quicklook_path(out),
                           quicklook_title(f"{Path(str(provenance['raw_file'])).name}::{provenance['raw_entry']}",
                                           str(provenance.get("dataset") or ""), geometry.motor_names,
                                           frames, geometry.npoints, state),
                           axes.get("mosaicity_key"), fits=fit_maps,
                           image_axes=(sample["y"], sample["x"]) if sample else None)

