"""Shift (drift) correction: estimate a linear drift of the sample over the scan, and undo it.
Pure, no I/O.

darfix's method (paper §3.2.2, `_processing/shift_correction.py`), in three steps:

1. Direction. The sums of the first and of the second half of the frames are
   phase-cross-correlated (scikit-image `phase_cross_correlation`, upsampling 1000,
   normalization None as darfix). For a drift of d pixels per frame and frames of equal
   intensity, the two sums are n/2 frames apart, so the correction per frame is
   s₀ = 2 · shift / n (darfix's convention: frame i is moved by i·s to undo the drift; the
   drift itself is -s). The `Projections` accumulator keeps these two half sums, so this
   step needs no frame at scan end.
2. Scale. The frames of a rocking curve are not of equal intensity (the half sums are
   intensity-weighted, their separation is not n/2 frames), so darfix searches the length h
   of s = h · s₀/|s₀| over [0, 3|s₀|) in `steps` steps, keeping the h whose corrected sum
   Σᵢ shift(frame_i, i·s) is sharpest (largest normalised variance var/mean). This needs
   the frames once.
3. Apply: each frame moved by i·s (scipy.ndimage.shift, bilinear, zero outside: darfix's
   default "linear"; or a Fourier shift).

Where we differ from darfix:

- The scale search is done in Fourier space: with each frame's spectrum Fᵢ computed once,
  the corrected sum's spectrum for a candidate s is Σᵢ Fᵢ zⁱ with z = exp(-2πi k·s) (a
  polynomial evaluated per frequency, Horner), and its variance is read off by Parseval.
  darfix shifts and sums every frame again for every candidate (steps × n image shifts).
  The frames stream through in batches (memory: steps spectra, not n), and a frame can be
  binned first (`binning`) to bound the cost at 2048².
- The grid maximum is refined by the vertex of the parabola through it and its two
  neighbours (darfix keeps the grid point: a resolution of 2|s₀|/steps per frame, i.e.
  up to n·|s₀|/steps pixels at the end of the scan).
- The circular Fourier shift wraps content across the frame's edges during the search (a
  drift of a few pixels moves little intensity across an edge of a DFXM frame whose
  signal is away from the edges); darfix pads.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial

import numpy as np
from scipy import ndimage
from skimage.registration import phase_cross_correlation

from ..online.preprocess import block_sums
from ..online.tiles import for_each_tile

log = logging.getLogger(__name__)

UPSAMPLE = 1000  # darfix's upsample_factor
DEFAULT_STEPS = 50  # darfix's default steps of the scale search
#: frames used by the scale search at most (evenly spread): its cost is frames x steps x
#: frequencies (962 frames of 256^2: 2.9-5.1 s on 2 loaded cores; 256 of them: 0.8 s)
DEFAULT_MAX_FRAMES = 256
#: frequencies per range of the scale search (a 64-frame batch's terms: 2 MB)
FREQUENCY_TILE = 2048


@dataclass(frozen=True)
class DriftEstimate:
    """`shift_per_frame` (dy, dx) pixels: frame i is moved by i·shift to undo the drift
    (darfix's convention; the sample drifted by -shift per frame); `coarse` the estimate
    from the half sums alone; `scale_factor` h/|coarse| chosen by the search (1 when not
    refined); `refined` whether the frames were searched; `score` the normalised variance
    of the corrected sum at the chosen scale (NaN if not refined); `similarity` the
    correlation coefficient of the two half sums once registered (near 1 when the halves
    image the same structure, as a drift needs; a mesh whose halves light up different
    grains gives a low value and a meaningless shift)."""

    shift_per_frame: tuple[float, float]
    coarse: tuple[float, float]
    scale_factor: float
    refined: bool
    score: float
    similarity: float = float("nan")

    def total(self, n_frames: int) -> tuple[float, float]:
        """The correction of the last frame (n - 1)·shift: the drift over the scan."""
        return tuple(float(s) * (n_frames - 1) for s in self.shift_per_frame)


def coarse_shift(first_half: np.ndarray, second_half: np.ndarray, n_frames: int) -> np.ndarray:
    """(2,) per-frame correction 2 · shift / n from the two half sums (step 1)."""
    a, b = np.asarray(first_half, np.float64), np.asarray(second_half, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError("the half sums must be two 2-D images of one shape")
    if n_frames < 2 or not a.any() or not b.any():
        return np.zeros(2)
    shift, _, _ = phase_cross_correlation(a, b, upsample_factor=UPSAMPLE, normalization=None)
    return 2.0 * np.asarray(shift, dtype=np.float64) / n_frames


def half_similarity(first_half: np.ndarray, second_half: np.ndarray, shift: np.ndarray) -> float:
    """Pearson correlation of the first half sum and the second moved by `shift` (the
    registration phase_cross_correlation found, circular Fourier shift)."""
    a = np.asarray(first_half, np.float64)
    b = np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(np.asarray(second_half, np.float64)), shift)).real
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def _binned(frames: np.ndarray, binning: int) -> np.ndarray:
    frames = np.asarray(frames, dtype=np.float64)
    if binning == 1:
        return frames
    h, w = frames.shape[1] // binning * binning, frames.shape[2] // binning * binning
    return block_sums(frames[:, :h, :w], binning, binning)


def _parseval_weights(shape: tuple[int, int]) -> np.ndarray:
    """Weights of the rfft2 half-spectrum columns in Σ|F|² over the full spectrum."""
    w = shape[1]
    weights = np.full(w // 2 + 1, 2.0)
    weights[0] = 1.0
    if w % 2 == 0:
        weights[-1] = 1.0
    return weights


def normalised_variance_of_spectrum(spectrum: np.ndarray, shape: tuple[int, int]) -> float:
    """var / mean of the real image whose rfft2 is `spectrum` (darfix's autofocus score)."""
    n = shape[0] * shape[1]
    mean = spectrum[0, 0].real / n
    power = float(np.sum(np.abs(spectrum) ** 2 * _parseval_weights(shape)[None, :])) / n
    return (power / n - mean**2) / mean if mean != 0 else float("nan")


def _add_candidates(spectra: np.ndarray, index: np.ndarray, phase: np.ndarray, sums: np.ndarray,
                    start: int, stop: int) -> None:
    """sums[j, k] += Σ_b spectra[b, k] · exp(-2πi index_b phase_k)ʲ for the frequencies
    start <= k < stop and every candidate j."""
    # a range of frequencies at a time, so that the batch's terms stay in cache while the
    # candidates are summed, on the tile threads (numpy releases the GIL), in complex64
    # (the score is a ratio of sums: ~1e-8 relative, tested). 962 frames of 256^2, 75
    # candidates, 2 loaded cores: 17 s in whole-array complex128 passes, 10.8 s by
    # frequency ranges, 2.9-5.1 s in complex64
    ratio = np.exp(-2j * np.pi * np.outer(index, phase[start:stop])).astype(np.complex64)
    term = spectra[:, start:stop].astype(np.complex64)
    out = sums[:, start:stop]
    for j in range(out.shape[0]):
        out[j] += term.sum(axis=0)
        if j + 1 < out.shape[0]:
            term *= ratio


def scale_scores(
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    direction: np.ndarray,
    step: float,
    n_steps: int,
    binning: int = 1,
) -> np.ndarray:
    """Normalised variance of Σᵢ shift(frame_i, i · h · direction) for h = j · step,
    j = 0 .. n_steps - 1 (per-frame shift lengths in native pixels); `batches` yields
    (indices (B,), frames (B, H, W)), i being each frame's index in the scan.

    With u_i = exp(-2πi k·direction · step · i), frame i contributes Fᵢ u_iʲ to candidate j:
    one exponential per frame and frequency, then one complex multiply-add per candidate
    (the candidates are evenly spaced from 0, so the phase factors form a geometric series)."""
    direction = np.asarray(direction, dtype=np.float64)
    sums: np.ndarray | None = None
    shape: tuple[int, int] | None = None
    for indices, frames in batches:
        binned = _binned(frames, binning)
        if shape is None:
            shape = binned.shape[1:]
            ky = np.fft.fftfreq(shape[0])[:, None]
            kx = np.fft.rfftfreq(shape[1])[None, :]
            # cycles per binned pixel of a shift of `step` native pixels
            phase = ((ky * direction[0] + kx * direction[1]) * (step / binning)).reshape(-1)
            sums = np.zeros((n_steps, phase.size), dtype=np.complex128)
        index = np.asarray(indices, dtype=np.float64)
        spectra = np.fft.rfft2(binned).reshape(len(index), -1)

        for_each_tile(phase.size, partial(_add_candidates, spectra, index, phase, sums),
                      tile=FREQUENCY_TILE)
    if sums is None:
        raise ValueError("no frames")
    return np.array([normalised_variance_of_spectrum(s.reshape(shape[0], -1), shape) for s in sums])


def _subset(batches: Iterable[tuple[np.ndarray, np.ndarray]], keep: np.ndarray):
    """The frames of `batches` whose index is in `keep`."""
    for indices, frames in batches:
        chosen = np.isin(np.asarray(indices), keep)
        if chosen.any():
            yield np.asarray(indices)[chosen], np.asarray(frames)[chosen]


def _vertex(x: np.ndarray, y: np.ndarray, best: int) -> float:
    """x of the vertex of the parabola through the grid maximum and its neighbours."""
    if best == 0 or best == len(x) - 1:
        return float(x[best])
    y0, y1, y2 = y[best - 1 : best + 2]
    denominator = y0 - 2 * y1 + y2
    if not denominator < 0:
        return float(x[best])
    offset = 0.5 * (y0 - y2) / denominator
    return float(x[best] + offset * (x[best + 1] - x[best]))


def estimate_drift(
    first_half: np.ndarray,
    second_half: np.ndarray,
    n_frames: int,
    batches: Iterable[tuple[np.ndarray, np.ndarray]] | None = None,
    steps: int = DEFAULT_STEPS,
    binning: int = 1,
    max_frames: int | None = DEFAULT_MAX_FRAMES,
) -> DriftEstimate:
    """Linear drift of a scan of `n_frames` frames from its two half sums; refined by the
    scale search over the frames when `batches` ((indices, frames) in any order) is given,
    using at most `max_frames` frames evenly spread over the scan (darfix's `nimages`, a
    random subset there)."""
    coarse = coarse_shift(first_half, second_half, n_frames)
    similarity = half_similarity(first_half, second_half, coarse * n_frames / 2.0)
    length = float(np.hypot(*coarse))
    as_tuple = (float(coarse[0]), float(coarse[1]))
    if length == 0 or batches is None:
        return DriftEstimate(as_tuple, as_tuple, 1.0, False, float("nan"), similarity)
    direction = coarse / length
    step = 2.0 * length / steps  # darfix: h in [0, 3|s0|) by 2|s0| / steps
    lengths = np.arange(steps + steps // 2) * step
    if max_frames is not None and n_frames > max_frames:
        batches = _subset(batches, np.round(np.linspace(0, n_frames - 1, max_frames)).astype(np.int64))
    scores = scale_scores(batches, direction, step, lengths.size, binning)
    best = int(np.nanargmax(scores))
    h = _vertex(lengths, scores, best)
    log.info("drift scale search: coarse %.4g px/frame, chosen %.4g", length, h)
    shift = direction * h
    return DriftEstimate((float(shift[0]), float(shift[1])), as_tuple, h / length, True,
                         float(scores[best]), similarity)


def apply_drift(
    frames: np.ndarray,
    shift_per_frame: tuple[float, float],
    indices: np.ndarray | None = None,
    method: str = "linear",
) -> np.ndarray:
    """Frames (B, H, W) with frame i moved by i·shift (float64; zero where nothing moved
    in). `method` "linear" (bilinear, scipy.ndimage.shift order 1) or "fourier"
    (scipy.ndimage.fourier_shift, circular)."""
    frames = np.asarray(frames, dtype=np.float64)
    indices = np.arange(len(frames)) if indices is None else np.asarray(indices)
    shift = np.asarray(shift_per_frame, dtype=np.float64)
    out = np.empty_like(frames)
    for row, (i, frame) in enumerate(zip(indices, frames)):
        s = shift * float(i)
        if not s.any():
            out[row] = frame
        elif method == "linear":
            out[row] = ndimage.shift(frame, s, order=1, mode="constant", cval=0.0)
        elif method == "fourier":
            out[row] = np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(frame), s)).real
        else:
            raise ValueError("method must be 'linear' or 'fourier'")
    return out
