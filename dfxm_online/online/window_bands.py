"""The final maps' moment window a band of detector rows at a time: every frame's rows of one
band read once, all the window's passes run over them in memory.

Why: by batches of whole frames (`ScanPipeline.windowed_maps` without `ScanRows`: the
daemon, which reads a closed scan again from the store) each of the `moment_window_passes`
passes reads the whole scan again and holds full-size working arrays beside the scan's own:
at 2048^2 and two motors the window's 15 rows of sums (480 MB), its coefficients (192 MB)
and two 256 MB read buffers. A recorded scan whose frames lie plainly in its file gives any
band of rows of every frame at the cost of its bytes (`RecordedScan.read`), so here the
passes share one read and the working arrays are a band's.

Per pixel the arithmetic is the batch path's: the same window from the same maps, the
frames summed in the same chunks (the batches `frames_per_batch` gives, without their
non-finite points) in the same order, the same maps of the sums, so the maps are the same
bit for bit (tests/test_window_bands.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..acquisition.geometry import MotorAxis, ScanError, finite_points
from .accumulators.moments import PowerSums
from .maps import moment_maps_of_sums
from .moment_window import MomentWindow, correct_truncation


@dataclass(frozen=True)
class ScanRows:
    """A recorded scan's frames again, by bands of detector rows.

    `read(r0, r1, out)` fills `out` (N, r1 - r0, W) with rows r0..r1 of each of the scan's
    N frames in acquisition order; `positions` holds every motor's N positions; `dtype` is
    the frames' type; `report(fraction)`, if given, hears how much of the window is done."""

    n_frames: int
    dtype: np.dtype
    positions: Mapping[str, np.ndarray]
    read: Callable[[int, int, np.ndarray], None]
    report: Callable[[float], None] | None = None


def band_rows(n_frames: int, frame_shape: tuple[int, int], itemsize: int, budget: int) -> list[tuple[int, int]]:
    """Bands (r0, r1) of rows covering the frames, each band's rows of all `n_frames` frames
    within `budget` bytes (at least one row), the bands as even as whole rows allow."""
    height, width = frame_shape
    per_row = max(1, n_frames * width * itemsize)
    rows = max(1, min(height, budget // per_row))
    n_bands = -(-height // rows)
    edges = np.linspace(0, height, n_bands + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def frame_chunks(positions: Mapping[str, np.ndarray], axes: Sequence[MotorAxis], n_frames: int,
                 batch: int) -> list[np.ndarray | slice]:
    """The frames each windowed pass sums at once: the batches of `batch` frames in order,
    without their points whose position along a scanned motor is not finite (as
    `ScanPipeline._finite_points` leaves them out of each batch); a slice where a batch
    keeps all its points."""
    finite = finite_points(positions, axes, n_frames)
    chunks: list[np.ndarray | slice] = []
    for start in range(0, n_frames, batch):
        stop = min(start + batch, n_frames)
        kept = np.flatnonzero(finite[start:stop]) + start
        if len(kept) == stop - start:
            chunks.append(slice(start, stop))
        elif len(kept):
            chunks.append(kept)
    return chunks


def windowed_moment_maps(
    maps: Mapping[str, np.ndarray],
    masked: np.ndarray,
    axes: Sequence[MotorAxis],
    offset: np.ndarray | None,
    rows: ScanRows,
    frame_shape: tuple[int, int],
    batch: int,
    rho: float,
    passes: int,
    precision: str,
    budget: int,
    overwrite: bool = False,
) -> dict[str, np.ndarray]:
    """The windowed moment maps (every moment map of `maps`' motors; not the intensity),
    `masked` (H, W) pixels NaN, each in its one-pass map's dtype (with `overwrite`, into the
    one-pass maps' own arrays, each band's rows read before they are written: the caller
    is done with them, and the final maps need no second set): for each band of rows the
    frames' rows are read (the next band's on a thread meanwhile, two band buffers of
    `budget` / 2 bytes), then each of the `passes` windows is made from the band's maps
    (the one-pass `maps` first) and its sums taken over the band's frames in `batch`-frame
    chunks. `offset` (P,) the background per pixel, or None. `budget`: the pipeline's batch
    of raw frames (`frames_per_batch`), whose memory the two band buffers share. A scan
    without a point to sum is a ScanError, as on the batch path."""
    names = [a.name for a in axes]
    # the maps a window is made from (`MomentWindow.from_maps`)
    sources = [f"{kind}_{a}" for a in names for kind in ("com", "fwhm")]
    sources += [f"cov_{a}_{b}" for i, a in enumerate(names) for b in names[i + 1:]]
    height, width = frame_shape
    n = rows.n_frames
    bands = band_rows(n, frame_shape, np.dtype(rows.dtype).itemsize, budget // 2)
    chunks = frame_chunks(rows.positions, axes, n, batch)
    if not chunks:
        raise ScanError("the scan's frames could not be read again for the windowed moments")
    positions = [{a: np.asarray(rows.positions[a])[c] for a in names} for c in chunks]
    out: dict[str, np.ndarray] = {}
    offset = None if offset is None else np.ascontiguousarray(offset, dtype=np.float64).reshape(height, width)
    # flat, so that every band's frames are a C-contiguous (N, rows, W) view of one
    largest = max(r1 - r0 for r0, r1 in bands)
    buffers = [np.empty(n * largest * width, rows.dtype) for _ in range(min(2, len(bands)))]
    sums: dict[int, PowerSums] = {}  # by band size: reused from band to band and pass to pass

    def read(i: int) -> np.ndarray:
        r0, r1 = bands[i]
        frames = buffers[i % len(buffers)][: n * (r1 - r0) * width].reshape(n, r1 - r0, width)
        rows.read(r0, r1, frames)
        return frames

    with ThreadPoolExecutor(1, thread_name_prefix="dfxm-band") as reader:
        pending = reader.submit(read, 0)
        for i, (r0, r1) in enumerate(bands):
            frames = pending.result()
            if i + 1 < len(bands):
                # the next band into the other buffer, while this one is summed
                pending = reader.submit(read, i + 1)
            pixels = (r1 - r0) * width
            if pixels not in sums:
                sums[pixels] = PowerSums(axes, pixels, precision=precision)
            band = _band_passes(
                {k: np.asarray(maps[k])[r0:r1] for k in sources},
                masked[r0:r1].reshape(-1), axes, None if offset is None else offset[r0:r1].reshape(-1),
                frames.reshape(n, -1), chunks, positions, sums[pixels], rho, passes, (r1 - r0, width))
            for name, values in band.items():
                if name == "intensity":
                    continue
                if name not in out:
                    out[name] = maps[name] if overwrite else np.empty((height, width), dtype=np.asarray(maps[name]).dtype)
                out[name][r0:r1] = np.where(masked[r0:r1], np.nan, values)
            if rows.report is not None:
                rows.report((i + 1) / len(bands))
    return out


def _band_passes(maps: dict[str, np.ndarray], masked: np.ndarray, axes: Sequence[MotorAxis],
                 offset: np.ndarray | None, frames: np.ndarray, chunks: list[np.ndarray | slice],
                 positions: list[dict[str, np.ndarray]], sums: PowerSums, rho: float, passes: int,
                 shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """The `passes` windowed passes over one band's frames (N, P): the band's float64 maps."""
    names = [a.name for a in axes]
    current = maps
    for _ in range(passes):
        window = MomentWindow.from_maps(current, axes, rho)
        window.without(masked)
        sums.clear()
        for chunk, where in zip(chunks, positions):
            window.add_to(sums, frames[chunk], where, offset)
        current = moment_maps_of_sums(sums, None, names, shape, 0.0)
        correct_truncation(current, names, rho)
    return current
