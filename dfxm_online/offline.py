"""Offline processing of a recorded scan: the same pipeline as the daemon, fed from a file."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
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
from .config import AnalysisConfig
from .images import load_images
from .online.accumulators.background import RunningMean
from .online.maps import default_map
from .online.pipeline import ScanPipeline
from .publish.nexus import ProcessInfo, write_maps_file
from .publish.quicklook import quicklook_path, write_quicklook

logger = logging.getLogger(__name__)


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


def process_scan(
    path: str | Path,
    scan: str | int | None = None,
    config: AnalysisConfig | None = None,
    dark: str | RunningMean | np.ndarray | None = None,
    progress: bool = True,
    provenance: dict | None = None,
) -> tuple[dict[str, np.ndarray], dict, ScanGeometry, int]:
    """Maps of a recorded scan; returns (maps, their axes, geometry, frames processed).

    `scan` None takes the file's first scan with moving motors (a session usually starts
    with its dark scan). The one-pass moments are made final within each pixel's window
    (`moment_window`), which reads the frames again. `provenance`, when given, is filled
    with what the maps came from (scan file, entry, detector, motors, background rule...)."""
    config = config or AnalysisConfig()
    if scan is None:
        scan = first_scan_with_motors(path, config.detector, config.motors)
        logger.info("%s: no scan named, processing %s (the first with moving motors)", path, scan)
    scan = scan_name(scan)
    with open_scan(path, scan, detector=config.detector, motors=config.motors,
                   monitor=config.monitor) as rec:
        geometry = rec.geometry()
        dark_image = mean_dark(dark, path, rec.detector) if isinstance(dark, str) else dark
        pipeline = ScanPipeline(geometry, rec.frame_shape, config, dark_image,
                                load_images(config.images), has_monitor=rec.monitor is not None)
        batch = config.frames_per_batch(rec.frame_shape, rec.frames.dtype)
        name = f"{Path(path).name}::{scan}"
        for batch_ in _progress(rec.batches(batch), rec.npoints, name, progress):
            pipeline.update(batch_.frames, batch_.positions, batch_.monitor)
        pipeline.finish()
        maps = pipeline.snapshot()
        _, rule = pipeline.background()
        passes = config.moment_window_passes if geometry.motors and config.moment_window > 0 else 0
        reads = iter(range(1, passes + 1))
        maps = pipeline.windowed_maps(maps, lambda: _progress(
            rec.batches(batch), rec.npoints, f"{name} window {next(reads)}/{passes}", progress))
        logger.info(
            "%s: detector %s %dx%d, motors %s, %d points, background %s, dark %s, moment window %s",
            name, rec.detector, *pipeline.frame_shape, ", ".join(geometry.motor_names) or "none",
            rec.npoints, rule, dark if isinstance(dark, str) else ("image" if dark is not None else "none"),
            f"{config.moment_window:g} sigma x {passes}" if passes else "off",
        )
        if provenance is not None:
            provenance.update(scan_provenance(rec))
            provenance.update(background_rule=rule, dark_scan=str(dark) if isinstance(dark, str) else "",
                              moment_window=float(config.moment_window) if passes else 0.0,
                              moment_window_passes=passes, points_dropped=pipeline.points_dropped)
        return maps, maps.axes, geometry, pipeline.frames_processed


def _progress(batches: Iterable[Batch], total: int, desc: str, enabled: bool) -> Iterator[Batch]:
    """`batches` with a tqdm bar counting frames (long offline reads)."""
    with tqdm(total=total, desc=desc, unit="frame", disable=not enabled) as bar:
        for batch in batches:
            yield batch
            bar.update(batch.frames.shape[0])


def process_to_file(
    path: str | Path, out: str | Path, scan: str | int | None = None, config: AnalysisConfig | None = None,
    dark: str | RunningMean | np.ndarray | None = None, progress: bool = True, quicklook: bool = True,
) -> Path:
    """`dfxm-online process`: maps of a recorded scan written in the daemon's layout (and,
    with `quicklook`, their PNG beside them)."""
    config = config or AnalysisConfig()
    provenance: dict = {}
    maps, axes, geometry, frames = process_scan(path, scan, config, dark, progress, provenance)
    info = ProcessInfo(
        state="complete", frames_processed=frames, frames_expected=geometry.npoints,
        scan_key=f"{Path(path).resolve()}::{provenance['raw_entry']}",
        config=config.model_dump_json(), extra=provenance,
    )
    path = write_maps_file(out, maps, info, default_map(geometry.motor_names), geometry.title, axes)
    if quicklook and geometry.motors:
        write_quicklook(maps, geometry.motor_names, quicklook_path(path),
                        f"{Path(path).name}: {provenance['raw_file']}::{provenance['raw_entry']} - "
                        f"{', '.join(geometry.motor_names)} - {frames} frames", axes.get("mosaicity_key"))
    return path
