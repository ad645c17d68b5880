"""Weak-beam maps (darfix's `recover_weak_beam`) and z-sums per value of a motor. Pure, no I/O.

Weak beam: in weak-beam conditions the strong (perfect-crystal) diffraction is set aside and
only the weak tails near defects are kept: every value above n times its pixel's standard
deviation over the stack (numpy's population std, as darfix) is set to 0, and the moment maps
of what is left are the weak-beam maps. darfix keeps only the first motor's COM; we return
every moment map, made by the project's own moments (`PowerSums` + `maps.moment_maps`: the
same signal mask, NaN where there is not enough intensity, where darfix divides whatever is
left). Per pixel independent, so the frames can be given in bands of detector rows.

z-sum (darfix's `z_sum_along_axis`): one summed image per value of a chosen motor, the other
motors summed over, made by the `SumsAlongMotor` accumulator without its normalisation
(darfix does not normalise); when the pipeline ran that accumulator, its state gives the same
images without the frames.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from ..acquisition.geometry import MotorAxis
from ..online.accumulators.moments import PowerSums
from ..online.accumulators.projections import SumsAlongMotor
from ..online.maps import moment_maps


def weak_beam_frames(frames: np.ndarray, n_sigma: float) -> np.ndarray:
    """A float64 copy of the frames (B, H, W) with values above `n_sigma` · std (per pixel,
    over the B frames) set to 0."""
    out = np.array(frames, dtype=np.float64)
    top = n_sigma * out.std(axis=0)
    out[out > top[None]] = 0.0
    return out


def pixel_std(batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """(H, W) population standard deviation of each pixel over all the frames of `batches`
    ((indices, frames (B, H, W))), merged batch by batch (Chan et al.: no cancellation of
    Σx² - n·mean² on large counts)."""
    count, mean, m2 = 0, None, None
    for _, frames in batches:
        frames = np.asarray(frames, dtype=np.float64)
        b = frames.shape[0]
        if b == 0:
            continue
        bmean = frames.mean(axis=0)
        bm2 = ((frames - bmean) ** 2).sum(axis=0)
        if mean is None:
            count, mean, m2 = b, bmean, bm2
            continue
        total = count + b
        delta = bmean - mean
        mean = mean + delta * (b / total)
        m2 = m2 + bm2 + delta**2 * (count * b / total)
        count = total
    if mean is None:
        raise ValueError("no frames")
    return np.sqrt(m2 / count)


def weak_beam_maps(
    frame_batches: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]],
    positions: Mapping[str, np.ndarray],
    axes: Sequence[MotorAxis],
    n_sigma: float,
    min_intensity_fraction: float = 0.05,
) -> dict[str, np.ndarray]:
    """Moment maps (`intensity`, `com_<m>`, `fwhm_<m>`, ...) of the weak-beam frames.

    `frame_batches()` starts a pass over the frames, yielding (scan indices (B,), frames
    (B, H, W)); two passes are made (the standard deviation, then the moments of the kept
    values). `positions` are the recorded positions of every frame of the scan, by index."""
    std = pixel_std(frame_batches())
    top = n_sigma * std
    sums: PowerSums | None = None
    for indices, frames in frame_batches():
        kept = np.array(frames, dtype=np.float64)
        kept[kept > top[None]] = 0.0
        if sums is None:
            sums = PowerSums(axes, top.size)
        index = np.asarray(indices)
        sums.update(kept, {a.name: np.asarray(positions[a.name])[index] for a in axes})
    return moment_maps(sums.snapshot(), [a.name for a in axes], top.shape, min_intensity_fraction)


def zsum_along(frames: np.ndarray, values: np.ndarray, decimals: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values (V,) sorted, summed images (V, H, W)) of frames (B, H, W) at the
    motor values (B,) rounded to `decimals`."""
    frames = np.asarray(frames)
    acc = SumsAlongMotor(frames.shape[1] * frames.shape[2], "motor", decimals, normalise=False)
    acc.update(frames, {"motor": np.asarray(values)})
    got, images = acc.snapshot()
    return got, images.reshape(len(got), *frames.shape[1:])


def zsum_of_accumulator(acc: SumsAlongMotor, frame_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The z-sum images of a `SumsAlongMotor` accumulator, unnormalised (from its state)."""
    state = acc.state()
    values = np.asarray(state["values"], dtype=np.float64)
    order = np.argsort(values)
    images = np.asarray(state["sums"], dtype=np.float64)[order]
    return values[order], images.reshape(len(values), *frame_shape)
