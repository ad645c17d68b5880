"""A recorded scan's rocking curves for the fits: its frames read in bands of detector rows,
through the pipeline's own preprocessing and background, then fitted band by band.

This is the adapter between a recorded scan (`acquisition.blissfile.RecordedScan`: the BLISS
layout, Lima files through the scan file's virtual dataset, or a plain 3-D dataset) and the
pure fits (`analysis.fits`). Memory stays bounded by `FitSettings.band_mb`: a band holds every
frame of a range of detector rows, and the next band is read on a thread while one is fitted
(two bands of half `band_mb` each). One implementation of the preprocessing and background:
the frames go through `ScanPipeline.chain` and the per-pixel background subtracted is
`ScanPipeline.background()`, the one the moment maps subtract; the pixels fitted are the
moment maps' signal mask (`maps.signal_mask` at the pipeline's `min_intensity_fraction`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

from ..online.maps import signal_mask
from ..online.pipeline import ScanPipeline
from .fits import FitSettings, GaussianFits, ReducedAxes, fit_gaussians, start_from_moments

logger = logging.getLogger(__name__)


def row_bands(n_frames: int, shape: tuple[int, int], itemsize: int, band_mb: int) -> list[tuple[int, int]]:
    """Ranges of detector rows [r0, r1) whose frames (all `n_frames` of them) fit in
    `band_mb` MiB each (at least one row per band)."""
    height, width = shape
    rows = max(1, (band_mb << 20) // max(1, n_frames * width * itemsize))
    return [(r0, min(r0 + rows, height)) for r0 in range(0, height, rows)]


def band_dtype(pipeline: ScanPipeline, raw: np.dtype) -> np.dtype:
    """What a band holds: the raw frames' type without preprocessing (read as they are:
    a uint16 band is half a float32 one), else the chain's float32."""
    return np.dtype(raw) if not pipeline.chain.steps else np.dtype(np.float32)


def read_band(rec, pipeline: ScanPipeline, rows: tuple[int, int], batch_size: int) -> np.ndarray:
    """Every frame's rows [r0, r1) after the pipeline's preprocessing: (N, r1 - r0, W').

    Without preprocessing steps only those rows are read, straight into the band
    (`RecordedScan.read`: from the file's bytes, else an HDF5 hyperslab). With steps, whole
    frames are read and preprocessed a batch at a time (hot pixels look at neighbours,
    binning and ROI move rows, the cornice fits each frame's border) and the band's rows
    kept: each band then reads the scan once more.
    """
    r0, r1 = rows
    frames = rec.frames
    n = int(frames.shape[0])
    width = pipeline.frame_shape[1]
    out = np.empty((n, r1 - r0, width), dtype=band_dtype(pipeline, frames.dtype))
    if not pipeline.chain.steps:
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            rec.read(start, stop, out[start:stop], rows)
        return out
    monitor = rec.monitor if pipeline.needs_monitor else None
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        batch = np.asarray(frames[start:stop])
        processed = pipeline.chain(batch, None if monitor is None else monitor[start:stop])
        out[start:stop] = processed[:, r0:r1]
    return out


def background_noise_variance(pipeline: ScanPipeline) -> np.ndarray:
    """Per pixel, the per-frame variance of the frames without signal: the lowest sample
    variance among the scan-edge groups that hold two frames or more (the lowest because a
    group near a peak also varies with its tail); the dark frames' only when no edge group
    has two frames: they lack the diffuse background's photons (on the bench mesh, a dark
    scan's variance, read noise only, under-weighted a 5-count pedestal's noise: reduced
    chi^2 2.1, and its standard errors, scaled by it, covered 82 % at one error). 0 where
    nothing is known. It is the part of each frame's variance that is not the peaks'
    Poisson noise (read noise, diffuse background, dark current)."""
    edges = pipeline.edges
    n_pixels = edges.sums.shape[1]
    groups = [(edges.sums[g], edges.sumsq[g], int(edges.counts[g])) for g in range(edges.counts.size)]
    groups = [group for group in groups if group[2] >= 2]
    if not groups and pipeline.dark_frames is not None and pipeline.dark_frames.count >= 2:
        dark = pipeline.dark_frames
        groups = [(dark.total, dark.total_sq, int(dark.count))]
    best = np.full(n_pixels, np.inf)
    for sums, sumsq, count in groups:
        mean = sums / count
        var = (sumsq - sums * mean) / (count - 1)
        np.minimum(best, var, out=best)
    best[~np.isfinite(best)] = 0.0
    return np.maximum(best, 0.0, out=best)


def fit_recorded_scan(
    rec,
    pipeline: ScanPipeline,
    maps: Mapping[str, np.ndarray],
    settings: FitSettings | None = None,
    progress: bool = False,
    rows: tuple[int, int] | None = None,
) -> GaussianFits:
    """Per-pixel Gaussian fits of a recorded scan whose frames `pipeline` has processed and
    whose moment maps are `maps` (float64 or float32; the start and the signal mask);
    `rows` (first, end) fits only that band of detector rows: a shard of a fit spread over
    workers, whose shards `GaussianFits.put` together give the whole fit.

    `rec` is an open `RecordedScan` (frames, positions, monitor). Bands with no pixel in
    the signal mask are not read.
    """
    settings = settings or FitSettings()
    names = pipeline.geometry.motor_names
    settings.validate(len(names))
    height, width = pipeline.frame_shape
    n_pixels = height * width
    positions = np.column_stack([np.asarray(rec.positions[m], dtype=np.float64) for m in names])
    mask = signal_mask(np.asarray(maps["intensity"]), pipeline.config.min_intensity_fraction).reshape(-1)
    start = start_from_moments(maps, names, mask)
    offset, label = pipeline.background()
    offset = np.zeros(n_pixels) if offset is None else np.asarray(offset, dtype=np.float64).reshape(-1)
    noise = background_noise_variance(pipeline)
    axes = ReducedAxes(tuple(names), np.array([a.centre for a in pipeline.geometry.motors]),
                       np.array([a.scale for a in pipeline.geometry.motors]))
    result = GaussianFits.empty(tuple(names), settings.max_peaks, n_pixels)
    dtype = band_dtype(pipeline, rec.frames.dtype)
    # half of band_mb each: one band is fitted while the next is read
    bands = row_bands(rec.npoints, (height, width), dtype.itemsize, max(1, settings.band_mb // 2))
    if rows is not None:  # one shard of the scan's fit (the other rows stay NaN)
        lo, hi = max(0, int(rows[0])), min(height, int(rows[1]))
        bands = [(max(r0, lo), min(r1, hi)) for r0, r1 in bands if r1 > lo and r0 < hi]
    rows_with_signal = mask.reshape(height, width).any(axis=1)
    bands = [(r0, r1) for r0, r1 in bands if rows_with_signal[r0:r1].any()]  # the others are not read
    batch = pipeline.config.frames_per_batch(rec.frame_shape, rec.frames.dtype)
    logger.info("fitting %d pixels (%s background) in %d band(s) of rows", int(mask.sum()), label, len(bands))
    for (r0, r1), band in tqdm(zip(bands, _bands_read_ahead(rec, pipeline, bands, batch)), total=len(bands),
                               desc="fits", unit="band", disable=not progress):
        part = slice(r0 * width, r1 * width)
        band_start = start.select(part)
        fits = fit_gaussians(band.reshape(rec.npoints, -1), positions, names, band_start, offset[part], noise[part],
                             settings, axes)
        result.put(part, fits)
        del band
    return result


def _bands_read_ahead(rec, pipeline: ScanPipeline, bands: list[tuple[int, int]], batch: int) -> Iterator[np.ndarray]:
    """The bands' frames in order, the next one read on a thread while the caller fits this
    one. Why: the 962-frame 2048^2 mesh (8 GB in the page cache) spent 15.5 s of its 68 s
    of fits reading, with both cores idle but for the read; the fit kernel runs without the
    GIL, and the reads hold it briefly (`pread` releases it; h5py holds it for one batch's
    hyperslab at a time)."""
    if not bands:
        return
    with ThreadPoolExecutor(1, thread_name_prefix="dfxm-band") as reader:
        pending = reader.submit(read_band, rec, pipeline, bands[0], batch)
        for i in range(len(bands)):
            band = pending.result()
            pending = reader.submit(read_band, rec, pipeline, bands[i + 1], batch) if i + 1 < len(bands) else None
            yield band
            del band
