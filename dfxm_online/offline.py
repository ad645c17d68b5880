"""Offline processing of a recorded scan: the same pipeline as the daemon, fed from a file."""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from .acquisition.blissfile import find_detector, open_scan, parse_scan_url
from .acquisition.geometry import ScanError, ScanGeometry
from .config import AnalysisConfig
from .images import load_images
from .maps import default_map
from .online.accumulators.background import RunningMean
from .online.pipeline import ScanPipeline
from .publish.nexus import ProcessInfo, write_maps_file

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
    scan: str = "1.1",
    config: AnalysisConfig | None = None,
    dark: str | RunningMean | np.ndarray | None = None,
    progress: bool = True,
) -> tuple[dict[str, np.ndarray], dict, ScanGeometry, int]:
    """Maps of a recorded scan; returns (maps, their axes, geometry, frames processed)."""
    config = config or AnalysisConfig()
    with open_scan(path, scan, detector=config.detector, motors=config.motors,
                   monitor=config.monitor) as rec:
        geometry = rec.geometry()
        dark_image = mean_dark(dark, path, rec.detector) if isinstance(dark, str) else dark
        pipeline = ScanPipeline(geometry, rec.frame_shape, config, dark_image,
                                load_images(config.images), has_monitor=rec.monitor is not None)
        bar = tqdm(total=rec.npoints, desc=f"{Path(path).name}::{scan}", unit="frame",
                   disable=not progress)
        for batch in rec.batches(config.frames_per_batch(rec.frame_shape, rec.frames.dtype)):
            pipeline.update(batch.frames, batch.positions, batch.monitor)
            bar.update(batch.frames.shape[0])
        bar.close()
        pipeline.finish()
        return pipeline.snapshot(), pipeline.map_axes(), geometry, pipeline.frames_processed


def process_to_file(
    path: str | Path, out: str | Path, scan: str = "1.1", config: AnalysisConfig | None = None,
    dark: str | RunningMean | np.ndarray | None = None, progress: bool = True,
) -> Path:
    """`dfxm-online process`: maps of a recorded scan written in the daemon's layout."""
    import json
    from dataclasses import asdict

    config = config or AnalysisConfig()
    maps, axes, geometry, frames = process_scan(path, scan, config, dark, progress)
    info = ProcessInfo(
        state="complete", frames_processed=frames, frames_expected=geometry.npoints,
        scan_key=f"{Path(path).resolve()}::{scan}", config=json.dumps(asdict(config), sort_keys=True),
    )
    return write_maps_file(out, maps, info, default_map(geometry.motor_names), geometry.title, axes)
