"""Offline processing of a recorded scan: the same pipeline as the daemon, fed from a file."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from .acquisition.blissfile import find_detector, open_scan, parse_scan_url
from .acquisition.geometry import ScanError, ScanGeometry
from .analysis.fits import FitSettings
from .analysis.rocking_curves import fit_recorded_scan
from .config import AnalysisConfig
from .images import load_images
from .maps import default_map
from .online.accumulators.background import RunningMean
from .online.pipeline import ScanPipeline
from .publish.nexus import ProcessInfo, write_maps_file

logger = logging.getLogger(__name__)

#: `process` fits every scan unless told not to (`--no-fit`)
DEFAULT_FIT = FitSettings()


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
    #: /entry/fit maps (None: fits not run), their converged fraction and settings
    fit_maps: dict[str, np.ndarray] | None = None
    fit_info: dict[str, object] = field(default_factory=dict)


def analyse_scan(
    path: str | Path,
    scan: str = "1.1",
    config: AnalysisConfig | None = None,
    dark: str | RunningMean | np.ndarray | None = None,
    progress: bool = True,
    fit: FitSettings | None = None,
) -> ScanResult:
    """Moment maps of a recorded scan and, with `fit`, the per-pixel Gaussian fits after
    them: the scan's frames read again in bands of rows, through the same preprocessing and
    background (`analysis.rocking_curves.fit_recorded_scan`)."""
    config = config or AnalysisConfig()
    with open_scan(path, scan, detector=config.detector, motors=config.motors,
                   monitor=config.monitor) as rec:
        geometry = rec.geometry()
        if fit is not None:
            try:
                fit.validate(len(geometry.motors))
            except ValueError as exc:
                raise ScanError(str(exc)) from None
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
        maps = pipeline.snapshot()
        result = ScanResult(maps, pipeline.map_axes(), geometry, pipeline.frames_processed)
        if fit is not None:
            t0 = time.perf_counter()
            fits = fit_recorded_scan(rec, pipeline, maps, fit, progress)
            seconds = time.perf_counter() - t0
            result.fit_maps = fits.maps(pipeline.frame_shape)
            fitted = int(fits.fitted.sum())
            result.fit_info = {
                "fit_converged_fraction": fits.converged_fraction,
                "fit_pixels": fitted,
                "fit_seconds": seconds,
                "fit_settings": json.dumps({**fit.to_dict(), "model": fit_model_name(geometry.motor_names, fit),
                                            "background": pipeline.background()[1]}, sort_keys=True),
            }
            logger.info("fits: %d pixels in %.1f s, %.1f %% converged", fitted, seconds,
                        100 * fits.converged_fraction if fitted else 0.0)
        return result


def fit_model_name(motor_names: list[str], fit: FitSettings) -> str:
    """A readable name of the fitted model, for /entry/process/fit_settings."""
    kind = {1: "gaussian", 2: "bivariate gaussian", 3: "trivariate gaussian"}[len(motor_names)]
    peaks = " (up to 2 peaks)" if fit.max_peaks == 2 else ""
    return f"{kind} over {', '.join(motor_names)} + background{peaks}"


def process_scan(
    path: str | Path,
    scan: str = "1.1",
    config: AnalysisConfig | None = None,
    dark: str | RunningMean | np.ndarray | None = None,
    progress: bool = True,
) -> tuple[dict[str, np.ndarray], dict, ScanGeometry, int]:
    """Maps of a recorded scan; returns (maps, their axes, geometry, frames processed)."""
    result = analyse_scan(path, scan, config, dark, progress)
    return result.maps, result.axes, result.geometry, result.frames_processed


def process_to_file(
    path: str | Path, out: str | Path, scan: str = "1.1", config: AnalysisConfig | None = None,
    dark: str | RunningMean | np.ndarray | None = None, progress: bool = True,
    fit: FitSettings | None = DEFAULT_FIT,
) -> Path:
    """`dfxm-online process`: maps of a recorded scan written in the daemon's layout, and
    the per-pixel fits under /entry/fit (`fit` None: no fits)."""
    config = config or AnalysisConfig()
    result = analyse_scan(path, scan, config, dark, progress, fit)
    geometry = result.geometry
    info = ProcessInfo(
        state="complete", frames_processed=result.frames_processed, frames_expected=geometry.npoints,
        scan_key=f"{Path(path).resolve()}::{scan}", config=json.dumps(asdict(config), sort_keys=True),
        extra=result.fit_info,
    )
    groups = {"fit": result.fit_maps} if result.fit_maps is not None else None
    return write_maps_file(out, result.maps, info, default_map(geometry.motor_names), geometry.title,
                           result.axes, groups=groups)
