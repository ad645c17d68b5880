"""Per-frame preprocessing: small pure functions over a batch of frames, and the chain of them.

Every step takes `frames` of shape (B, H, W), any numeric dtype, and returns a new float32
array (B, H', W'); none modifies its input. float32 because that is what the accumulators
multiply with and it halves the memory of a batch; integer counts are exact in float32 up to
2**24. The steps, by their config names:

==============  =============================================================  =======
step            what                                                           linear
==============  =============================================================  =======
``dark``        subtract a dark image, negative residuals kept                 yes
``hot_pixels``  replace outliers above a 3x3 median (:func:`remove_hot_pixels`)  no
``threshold``   values below `low` / above `high` set to 0                     no
``mask``        False pixels set to 0                                          yes
``roi``         crop to [y0:y1, x0:x1]                                         yes
``binning``     sum or mean over (by, bx) blocks                               yes
``flatfield``   divide by a flat image (0 where the flat is <= 0)              yes
``monitor``     divide each frame by its monitor value (times a reference)     no
``cornice``     subtract a line a + b*y fitted to the left/right border        yes
==============  =============================================================  =======

"Linear" (:attr:`PreprocessChain.is_linear`) means the step is an affine map x -> A x + d with
the same A and d for every frame (A may mix pixels, as ROI, binning and the cornice fit do).
Subtracting a per-pixel constant c before such a step is the same as subtracting the per-pixel
constant A c after it, so the moments' "background at snapshot time" stays exact on the
preprocessed frames. Thresholds and hot-pixel removal depend on the values; the monitor scales
each frame by a different number, so a constant before it is no constant after it.

Also here, not a chain step: :func:`recon3d_dark_estimate`, the Recon3D manual's dark estimate
from the scan itself.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..config import PREPROCESS_STEPS, ConfigError
from .framesums import NATIVE_TYPES
from .kernels import pixelmaps
from .tiles import for_each_tile

logger = logging.getLogger(__name__)

Shape2 = tuple[int, int]


def _batch(frames: np.ndarray) -> np.ndarray:
    """`frames` as an array, checked to be a (B, H, W) batch."""
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise ValueError(f"frames must be a (B, H, W) batch, got shape {frames.shape}")
    return frames


def _as_batch(frames: np.ndarray) -> np.ndarray:
    """`frames` as a float32 (B, H, W) array (a view when it already is one)."""
    return _batch(frames).astype(np.float32, copy=False)


def _check_image(name: str, image: np.ndarray, shape: Sequence[int]) -> None:
    if tuple(image.shape) != tuple(shape):
        raise ValueError(f"{name} image has shape {image.shape}, the frames have {tuple(shape)}")


# --------------------------------------------------------------------------------------------
# dark


def subtract_dark(frames: np.ndarray, dark: np.ndarray) -> np.ndarray:
    """frames - dark, negative residuals kept.

    No clipping at 0: clipping keeps the positive noise of the empty pixels and drops the
    negative, which leaves a pedestal that biases every centre of mass and width (see
    accumulators/background.py).
    """
    frames = _as_batch(frames)
    _check_image("dark", dark, frames.shape[1:])
    return frames - np.asarray(dark, dtype=np.float32)


def recon3d_dark_estimate(frames: np.ndarray, n_frames: int = 2) -> np.ndarray:
    """Dark estimate of the Recon3D manual: mean of the `n_frames` (2) lowest frames.

    "Lowest" is by integrated intensity (the frame's sum), among the frames whose sum is not
    exactly 0: an all-zero frame is a readout that failed (or a detector that was not yet
    armed), not a measurement of the dark. Ties keep the earlier frame. Returns (H, W) float32.
    Raises ValueError when fewer than `n_frames` frames have a non-zero sum.
    """
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise ValueError(f"frames must be a (B, H, W) stack, got shape {frames.shape}")
    if n_frames < 1:
        raise ValueError("n_frames must be >= 1")
    sums = frames.reshape(frames.shape[0], -1).sum(axis=1, dtype=np.float64)
    candidates = np.flatnonzero(sums != 0)
    if candidates.size < n_frames:
        raise ValueError(
            f"dark estimate needs {n_frames} frames with a non-zero sum, got {candidates.size}"
        )
    lowest = candidates[np.argsort(sums[candidates], kind="stable")[:n_frames]]
    return frames[lowest].mean(axis=0, dtype=np.float64).astype(np.float32)


# --------------------------------------------------------------------------------------------
# hot pixels

#: 1 / Phi^-1(3/4): the MAD of a normal distribution times this is its standard deviation
MAD_TO_SIGMA = 1.4826


def _median3(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.maximum(np.minimum(a, b), np.minimum(np.maximum(a, b), c))


def _median_3x3_frame(frame: np.ndarray) -> np.ndarray:
    padded = np.pad(frame, 1, mode="symmetric")
    up, centre, down = padded[:-2], padded[1:-1], padded[2:]
    # sort every vertical triple: lo <= mid <= hi
    lo, hi = np.minimum(up, centre), np.maximum(up, centre)
    mid, hi = np.minimum(hi, down), np.maximum(hi, down)
    lo, mid = np.minimum(lo, mid), np.maximum(lo, mid)
    # the median of the 3x3 window is the median of (largest of its three column minima,
    # median of its three column medians, smallest of its three column maxima)
    left, here, right = slice(None, -2), slice(1, -1), slice(2, None)
    lo = np.maximum(np.maximum(lo[:, left], lo[:, here]), lo[:, right])
    hi = np.minimum(np.minimum(hi[:, left], hi[:, here]), hi[:, right])
    mid = _median3(mid[:, left], mid[:, here], mid[:, right])
    return _median3(lo, mid, hi)


def median_filter_3x3(frames: np.ndarray) -> np.ndarray:
    """3x3 median of each frame, borders mirrored (identical to scipy's mode="reflect").

    A min/max comparator network over shifted views (sort each vertical triple, then combine
    three neighbouring columns), not scipy.ndimage.median_filter or silx medfilt2d: measured
    on one 2048x2048 float32 frame (AMD EPYC, 2 cores, numpy 2.4, scipy 1.17, silx 3.1),
    scipy takes 440 ms, silx 420 ms, this 37-45 ms, with bit-identical output (tested
    against scipy). The whole :func:`remove_hot_pixels` takes ~140 ms on that frame, most of it
    the two whole-frame medians of the MAD. NaN is not supported (it propagates into the
    neighbours' medians).
    """
    frames = _as_batch(frames)
    out = np.empty_like(frames)
    for i, frame in enumerate(frames):  # one frame at a time bounds the temporaries
        out[i] = _median_3x3_frame(frame)
    return out


def hot_pixel_mask(frames: np.ndarray, k: float = 8.0) -> tuple[np.ndarray, np.ndarray]:
    """(hot (B, H, W) bool, 3x3 median-filtered frames float32); see :func:`remove_hot_pixels`."""
    frames = _as_batch(frames)
    filtered = median_filter_3x3(frames)
    residual = frames - filtered
    flat = residual.reshape(residual.shape[0], -1)
    centre = np.median(flat, axis=1)
    mad = np.median(np.abs(flat - centre[:, None]), axis=1)
    spread_limit = (k * MAD_TO_SIGMA * mad)[:, None, None]
    root = np.sqrt(np.maximum(filtered, 0.0))
    poisson_limit = k * root + (k * k / 4.0)
    hot = (residual > spread_limit) & (residual > poisson_limit)
    return hot, filtered


def remove_hot_pixels(frames: np.ndarray, k: float = 8.0) -> np.ndarray:
    """Replace hot pixels by the 3x3 median of their neighbourhood.

    With r = frame - median3x3(frame) and m = median3x3(frame), a pixel is hot when both

    * r > k * 1.4826 * MAD(r), the MAD over the whole frame: a robust k-sigma of the residual
      that rises with the frame's own structure (edges, speckle) and with read noise, and
    * sqrt(frame) - sqrt(m) > k / 2, i.e. r > k * sqrt(m) + k**2 / 4 (m clipped at 0): the
      same k-sigma on the square-root scale, where Poisson counts have a standard deviation
      of about 1/2 at every level. It is the floor that keeps a clean frame untouched where
      the MAD fails: at low counts the MAD of integer residuals is 0 or 1 and the Poisson
      tail is much longer than a normal one.

    Only positive outliers are replaced (dead pixels are the mask's job). Why not the simpler
    floor r > k * sqrt(max(m, 1)): at a mean of 3-5 counts the local median often sits below
    the mean and the Poisson tail is long; on 200 clean 512x512 frames that rule still flagged
    pixels at k = 8 (it needed k = 13), while the square-root rule's worst pixel needed
    k = 6.3 at any level from 0.3 to 1000 counts. darfix's rule (r > one global standard
    deviation of r) replaces ~15 % of a clean frame. The floor assumes the frames are in
    counts: put this step before `flatfield` and `monitor`. At k = 8 a single hot pixel is
    caught above about 8x a local level of 5 counts, 1.3x a level of 1000.
    A 3x3 median also removes features one pixel wide (a 1-pixel line has 3 of the 9 pixels
    in every window): bin first if the optics resolve such features.
    """
    frames = _as_batch(frames)
    hot, filtered = hot_pixel_mask(frames, k)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("hot pixels replaced per frame: %s", hot.reshape(hot.shape[0], -1).sum(1))
    return np.where(hot, filtered, frames)


# --------------------------------------------------------------------------------------------
# value and geometry steps


def apply_threshold(
    frames: np.ndarray, low: float | None = None, high: float | None = None
) -> np.ndarray:
    """Values < `low` and values > `high` set to 0 (either bound may be None)."""
    frames = _as_batch(frames)
    drop = np.zeros(frames.shape, dtype=bool)
    if low is not None:
        drop |= frames < low
    if high is not None:
        drop |= frames > high
    return np.where(drop, np.float32(0), frames)


def apply_mask(frames: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Pixels where the boolean `mask` (H, W) is False set to 0 (True = keep)."""
    frames = _as_batch(frames)
    mask = np.asarray(mask)
    if mask.dtype != bool:
        raise ValueError(f"mask must be boolean (True = keep), got dtype {mask.dtype}")
    _check_image("mask", mask, frames.shape[1:])
    return np.where(mask, frames, np.float32(0))


def crop_roi(frames: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """frames[:, y0:y1, x0:x1] (a copy); requires 0 <= y0 < y1 <= H and 0 <= x0 < x1 <= W."""
    frames = _batch(frames)
    _roi_shape(frames.shape[1:], y0, y1, x0, x1)
    # convert only the cropped part
    return np.array(frames[:, y0:y1, x0:x1], dtype=np.float32)


def _roi_shape(shape: Sequence[int], y0: int, y1: int, x0: int, x1: int) -> Shape2:
    height, width = shape
    if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
        raise ValueError(f"roi [{y0}:{y1}, {x0}:{x1}] is not inside a {height}x{width} frame")
    return y1 - y0, x1 - x0


#: output rows per call of the compiled block sums (`block_sums`), shared out on the tile threads
BLOCK_ROWS = 64


def bin_frames(frames: np.ndarray, by: int, bx: int, mode: str = "sum") -> np.ndarray:
    """Sum (or mean) over blocks of `by` rows by `bx` columns, as float32.

    When H (W) is not a multiple of `by` (`bx`), the last H % by rows (W % bx columns) are
    dropped, so every output pixel is a full block: a partial block's sum would not be
    comparable with its neighbours, and its mean would be noisier than theirs.
    """
    if mode not in ("sum", "mean"):
        raise ValueError(f"binning mode must be 'sum' or 'mean', got {mode!r}")
    return block_sums(frames, by, bx, np.float32, by * bx if mode == "mean" else 1)


def block_sums(
    frames: np.ndarray, by: int, bx: int, dtype: np.dtype | type = np.float64, divisor: float = 1
) -> np.ndarray:
    """(B, H, W) -> (B, H // by, W // bx) sums over full blocks (partial blocks at the end
    dropped), divided by `divisor`, in double and rounded once to `dtype` (float64 or
    float32). Also used by the decomposition and for the daemon's binned live maps.

    One compiled pass (`kernels.pixelmaps.block_sums`) reads the frames as they are (8-32 bit
    integers, float32, float64; anything else as float64) on the tile threads, summing in
    the order of the numpy version it replaced (strided slices added together: each block
    row's columns, then the rows), so the values are the same bit for bit. 32 frames of
    2048^2 uint16 binned 2x2 (medians of 7, same process): 0.110 s that way (one thread,
    passes of 4 MiB to bound its integer and float64 intermediates), 0.060 s this way on 2
    cores, with no intermediate at all (the C pass; numba, same run, 2 cores: 32 uint16
    frames 0.21-0.22 s C, 0.14-0.17 s numba under load; 15 float64 rows the same within noise).
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"block sums are float32 or float64, not {dtype}")
    frames = _batch(frames)
    ny, nx = binned_shape(frames.shape[1:], by, bx)
    # the frame types the compiled passes read as they are (the accumulators' pass too)
    src = np.ascontiguousarray(frames, dtype=None if frames.dtype in NATIVE_TYPES else np.float64)
    out = np.empty((src.shape[0], ny, nx), dtype=dtype)
    if out.size:
        def rows(start: int, stop: int) -> None:
            pixelmaps.block_sums(src, by, bx, out, start, stop, float(divisor), np.empty(nx), np.empty(nx))

        for_each_tile(ny, rows, tile=BLOCK_ROWS)
    return out


def binned_shape(shape: Sequence[int], by: int, bx: int) -> Shape2:
    height, width = shape
    if by < 1 or bx < 1 or by > height or bx > width:
        raise ValueError(f"binning ({by}, {bx}) does not fit a {height}x{width} frame")
    return height // by, width // bx


def divide_flatfield(frames: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """frames / flat, and 0 where the flat is <= 0 or NaN (no response to correct)."""
    frames = _as_batch(frames)
    flat = np.asarray(flat, dtype=np.float32)
    _check_image("flatfield", flat, frames.shape[1:])
    good = flat > 0  # False for NaN as well
    out = np.zeros(frames.shape, dtype=np.float32)
    np.divide(frames, flat, out=out, where=np.broadcast_to(good, frames.shape))
    return out


def normalize_monitor(frames: np.ndarray, monitor: np.ndarray, reference: float) -> np.ndarray:
    """frames[i] * reference / monitor[i].

    Raises ValueError when a monitor value is <= 0 or not finite (beam lost, counter not read):
    a zero or NaN frame would silently bias every sum it enters, so the caller must decide
    (drop the point, or stop).
    """
    frames = _as_batch(frames)
    monitor = np.asarray(monitor, dtype=np.float64).reshape(-1)
    if monitor.shape[0] != frames.shape[0]:
        raise ValueError(f"{monitor.shape[0]} monitor values for {frames.shape[0]} frames")
    bad = ~(np.isfinite(monitor) & (monitor > 0))
    if bad.any():
        raise ValueError(f"monitor <= 0 or not finite for frames {np.flatnonzero(bad).tolist()}")
    scale = (reference / monitor).astype(np.float32)
    return frames * scale[:, None, None]


def cornice_fit(frames: np.ndarray, width: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame (a, b), each (B,) float64, of the border background a + b*y.

    For every row y, c(y) = mean of the row's `width` leftmost and `width` rightmost pixels
    (2*width values). a + b*y is the ordinary least-squares line through (y, c(y)) over all
    H rows, each row weighted equally; the top and bottom border rows enter only through
    their left/right pixels, like every other row. y is the row index 0..H-1 of the frame as
    it reaches this step (after any ROI/binning).
    """
    frames = _batch(frames)
    _cornice_check(frames.shape[1:], width)
    left = frames[:, :, :width].sum(axis=2, dtype=np.float64)
    right = frames[:, :, -width:].sum(axis=2, dtype=np.float64)
    c = (left + right) / (2 * width)  # (B, H)
    y = np.arange(frames.shape[1], dtype=np.float64)
    dy = y - y.mean()
    c_mean = c.mean(axis=1)
    b = (c - c_mean[:, None]) @ dy / (dy @ dy)
    a = c_mean - b * y.mean()
    return a, b


def _cornice_check(shape: Sequence[int], width: int) -> None:
    height, w = shape
    if width < 1 or 2 * width > w or height < 2:
        raise ValueError(f"cornice border {width} does not fit a {height}x{w} frame")


def subtract_cornice(frames: np.ndarray, width: int = 10) -> np.ndarray:
    """frames minus the border line a + b*y of :func:`cornice_fit` (Recon3D "cornice").

    Negative residuals are kept, as for the dark.
    """
    a, b = cornice_fit(frames, width)
    frames = _as_batch(frames)
    y = np.arange(frames.shape[1], dtype=np.float64)
    background = (a[:, None] + b[:, None] * y).astype(np.float32)
    return frames - background[:, :, None]


# --------------------------------------------------------------------------------------------
# steps and the chain


class PreprocessStep:
    """One configured step; subclasses hold its validated parameters (and images)."""

    #: config name
    name: ClassVar[str]
    #: affine with the same coefficients for every frame (see the module docstring)
    linear: ClassVar[bool]
    #: config keys: required, and optional with their defaults
    required: ClassVar[tuple[str, ...]] = ()
    optional: ClassVar[Mapping[str, Any]] = {}

    def __call__(self, frames: np.ndarray, monitor: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    def output_shape(self, shape: Shape2) -> Shape2:
        """Frame shape after this step for an input frame `shape`; raises if it does not fit."""
        return shape

    @classmethod
    def from_params(
        cls, params: Mapping[str, Any], images: Mapping[str, np.ndarray]
    ) -> PreprocessStep:
        raise NotImplementedError


def _number(step: str, key: str, value: Any, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"step {step!r}: {key} must be a number, got {value!r}")
    if not np.isfinite(value) or (positive and value <= 0):
        raise ValueError(f"step {step!r}: {key} must be {'> 0' if positive else 'finite'}")
    return float(value)


def _integer(step: str, key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"step {step!r}: {key} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _image(step: str, params: Mapping[str, Any], images: Mapping[str, np.ndarray]) -> np.ndarray:
    """The step's image: params["image"] (a name in `images`, or an array); default its name."""
    ref = params.get("image", step)
    if isinstance(ref, str):
        if ref not in images:
            raise ValueError(
                f"step {step!r} needs image {ref!r}; images given: {sorted(images) or 'none'}"
            )
        image = np.asarray(images[ref])
    else:
        image = np.asarray(ref)
    if image.ndim != 2:
        raise ValueError(f"step {step!r}: image must be 2-D (H, W), got shape {image.shape}")
    return image


class _ImageStep(PreprocessStep):
    optional: ClassVar[Mapping[str, Any]] = {"image": None}
    image: np.ndarray

    def output_shape(self, shape: Shape2) -> Shape2:
        if tuple(self.image.shape) != tuple(shape):
            raise ValueError(
                f"step {self.name!r}: image has shape {self.image.shape}, "
                f"the frames reaching it have {tuple(shape)}"
            )
        return shape

    @classmethod
    def from_params(
        cls, params: Mapping[str, Any], images: Mapping[str, np.ndarray]
    ) -> PreprocessStep:
        return cls(_image(cls.name, params, images))  # type: ignore[call-arg]


@dataclass(eq=False)
class DarkStep(_ImageStep):
    """``{"step": "dark", "image": "dark"}``: subtract the dark image."""

    image: np.ndarray
    name: ClassVar[str] = "dark"
    linear: ClassVar[bool] = True

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image, dtype=np.float32)

    def __call__(self, frames: np.ndarray, monitor: np.ndarray | None) -> np.ndarray:
        return subtract_dark(frames, self.image)


@dataclass(eq=False)
class MaskStep(_ImageStep):
    """``{"step": "mask", "image": "mask"}``: zero the pixels where the mask is False.

    The mask must be boolean: integer masks come in both conventions (pyFAI and silx mark
    the *bad* pixels with non-zero), so a silent cast would invert half of them.
    """

    image: np.ndarray
    name: ClassVar[str] = "mask"
    linear: ClassVar[bool] = True

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image)
        if self.image.dtype != bool:
            raise ValueError(
                f"step 'mask': the mask must be boolean (True = keep), got {self.image.dtype}"
            )

    def __call__(self, frames: np.ndarray, monitor: np.ndarray | None) -> np.ndarray:
        return apply_mask(frames, self.image)


@dataclass(eq=False)
class FlatfieldStep(_ImageStep):
    """``{"step": "flatfield", "image": "flatfield"}``: divide by the flat (0 where <= 0)."""

    image: np.ndarray
    name: ClassVar[str] = "flatfield"
    linear: ClassVar[bool] = True

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image, dtype=np.float32)

    def __call__(self, frames: np.ndarray, monitor: np.ndarray | None) -> np.ndarray:
        return divide_flatfield(frames, self.image)


@dataclass
class HotPixelStep(PreprocessStep):
    """``{"step": "hot_pixels", "k": 8}``: :func:`remove_hot_pixels`."""

    k: float = 8.0
    name: ClassVar[str] = "hot_pixels"
    linear: ClassVar[bool] = False
    optional: ClassVar[Mapping[str, Any]] = {"k": 8.0}

    def __call__(self, frames: np.ndarray, monitor: np.ndarray | None) -> np.ndarray:
        return remove_hot_pixels(frames, self.k)

    @classmethod
    def from_params(
        cls, params: Mapping[str, Any], images: Mapping[str, np.ndarray]
    ) -> PreprocessStep:
        return cls(_number(cls.name, "k", params.get("k", 8.0), positive=True))


@dataclass
class ThresholdStep(PreprocessStep):
    """``{"step": "threshold", "low": 10, "high": 60000}``: zero values outside [low, high].

    At least one of `low` / `high` is required.
    """

    low: float | None = None
    high: float | None = None
    name: ClassVar[str] = "threshold"
    linear: ClassVar[bool] = False
    optional: ClassVar[Mapping[str, Any]] = {"low": None, "high": None}

    def __post_init__(self) -> None:
        if self.low is None and self.high is None:
            raise ValueError("step 'threshold' needs 'low' and/or 'high'")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"step 'threshold': low {self.low} > high {self.high}")

    def __call__(self, frames: np.ndarray, monitor: np.ndarray | None) -> np.ndarray:
        return apply_threshold(frames, self.low, self.high)

    @classmethod
    def from_params(
        cls, params: Mapping[str, Any], images: Mapping[str, np.ndarray]
    ) -> PreprocessStep:
        low, high = params.get("low"), params.get("high")
        return cls(
            None if low is None else _number(cls.name, "low", low),
            None if high is None else _number(cls.name, "high", high),
        )


@dataclass
class RoiStep(PreprocessStep):
    """``{"step": "roi", "y0": 0, "y1": 512, "x0": 100, "x1": 612}``: frames[:, y0:y1, x0:x1]."""

    y0: int
    y1: int
    x0: int
    x1: int
    name: ClassVar[str] = "roi"
    linear: ClassVar[bool] = True
    required: ClassVar[tuple[str, ...]] = ("y0", "y1", "x0", "x1")

    def __post_init__(self) -> None:
        if not (0 <= self.y0 < self.y1 and 0 <= self.x0 < self.x1):
            raise ValueError(
                f"step 'roi': need 0 <= y0 < y1 and 0 <= x0 < x1, "
                f"got [{self.y0}:{self.y1}, {self.x0}:{self.x1}]"
            )

    def __call__(self, frames: np.ndarray, monitor: np.ndarray | None) -> np.ndarray:
        return crop_roi(frames, self.y0, self.y1, self.x0, self.x1)

    def output_shape(self, shape: Shape2) -> Shape2:
        return _roi_shape(shape, self.y0, self.y1, self.x0, self.x1)

    @classmethod
    def from_params(
        cls, params: Mapping[str, Any], images: Mapping[str, np.ndarray]
    ) -> PreprocessStep:
        return cls(*(_integer(cls.name, key, params[key], 0) for key in cls.required))


@dataclass
class BinningStep(PreprocessStep):
    """``{"step": "binning", "factor": [2, 4], "mode": "sum"}`` (or ``"factor": 2``).

    See :func:`bin_frames`: rows/columns beyond a multiple of the factor are dropped.
    """

    by: int
    bx: int
    mode: str = "sum"
    name: ClassVar[str] = "binning"
    linear: ClassVar[bool] = True
    required: ClassVar[tuple[str, ...]] = ("factor",)
    optional: ClassVar[Mapping[str, Any]] = {"mode": "sum"}

    def __post_init__(self) -> None:
        if self.mode not in ("sum", "mean"):
            raise ValueError(f"step 'binning': mode must be 'sum' or 'mean', got {self.mode!r}")

    def __call__(self, frames: np.ndarray, monitor: np.ndarray | None) -> np.ndarray:
        return bin_frames(frames, self.by, self.bx, self.mode)

    def output_shape(self, shape: Shape2) -> Shape2:
        return binned_shape(shape, self.by, self.bx)

    @classmethod
    def from_params(
        cls, params: Mapping[str, Any], images: Mapping[str, np.ndarray]
    ) -> PreprocessStep:
        factor = params["factor"]
        pair = list(factor) if isinstance(factor, (list, tuple, np.ndarray)) else [factor] * 2
        if len(pair) != 2:
            raise ValueError(f"step 'binning': factor must be an integer or a pair, got {factor}")
        by, bx = (_integer(cls.name, "factor", f, 1) for f in pair)
        return cls(by, bx, params.get("mode", "sum"))


@dataclass
class MonitorStep(PreprocessStep):
    """``{"step": "monitor", "reference": 200.0}``: frames[i] * reference / monitor[i].

    Without a reference, the first monitor value this step sees becomes the reference (so the
    numbers stay near counts) and is kept in :attr:`reference`. Give it explicitly when
    several workers (tiles, scan halves) or a restart from a checkpoint must agree.
    """

    reference: float | None = None
    name: ClassVar[str] = "monitor"
    linear: ClassVar[bool] = False
    optional: ClassVar[Mapping[str, Any]] = {"reference": None}

    def __call__(self, frames: np.ndarray, monitor: np.ndarray | None) -> np.ndarray:
        if monitor is None:
            raise ValueError("step 'monitor' needs the per-frame monitor values")
        monitor = np.asarray(monitor, dtype=np.float64).reshape(-1)
        reference = self.reference
        if reference is None:
            reference = float(monitor[0]) if monitor.size else 1.0
        out = normalize_monitor(frames, monitor, reference)
        self.reference = reference  # only once the values were accepted
        return out

    @classmethod
    def from_params(
        cls, params: Mapping[str, Any], images: Mapping[str, np.ndarray]
    ) -> PreprocessStep:
        ref = params.get("reference")
        return cls(None if ref is None else _number(cls.name, "reference", ref, positive=True))


@dataclass
class CorniceStep(PreprocessStep):
    """``{"step": "cornice", "width": 10}``: :func:`subtract_cornice` (Recon3D border)."""

    width: int = 10
    name: ClassVar[str] = "cornice"
    linear: ClassVar[bool] = True
    optional: ClassVar[Mapping[str, Any]] = {"width": 10}

    def __call__(self, frames: np.ndarray, monitor: np.ndarray | None) -> np.ndarray:
        return subtract_cornice(frames, self.width)

    def output_shape(self, shape: Shape2) -> Shape2:
        _cornice_check(shape, self.width)
        return shape

    @classmethod
    def from_params(
        cls, params: Mapping[str, Any], images: Mapping[str, np.ndarray]
    ) -> PreprocessStep:
        return cls(_integer(cls.name, "width", params.get("width", 10), 1))


STEPS: dict[str, type[PreprocessStep]] = {
    cls.name: cls
    for cls in (
        DarkStep,
        HotPixelStep,
        ThresholdStep,
        MaskStep,
        RoiStep,
        BinningStep,
        FlatfieldStep,
        MonitorStep,
        CorniceStep,
    )
}


assert tuple(STEPS) == PREPROCESS_STEPS, "config.PREPROCESS_STEPS and the steps here differ"


@dataclass
class PreprocessChain:
    """An ordered list of steps applied to every batch: ``chain(frames, monitor)``."""

    steps: list[PreprocessStep] = field(default_factory=list)

    @classmethod
    def check(cls, config: Sequence[Mapping[str, Any]]) -> PreprocessChain:
        """Check step names and parameters without the images (stand-ins of the right kind:
        a boolean mask), as a daemon does when it starts; the real images and their shapes
        are checked when a scan's chain is built. Raises ConfigError naming the step;
        returns the chain of stand-ins (its `output_shape` is the real chain's)."""
        stand_ins: dict[str, np.ndarray] = {}
        for entry in config:
            if isinstance(entry, Mapping) and isinstance(entry.get("image", entry.get("step")), str):
                kind = bool if entry.get("step") == "mask" else np.float64
                stand_ins[entry.get("image", entry.get("step"))] = np.ones((1, 1), dtype=kind)
        try:
            return cls.from_config(config, stand_ins)
        except ValueError as exc:
            raise ConfigError(f"analysis.preprocess: {exc}") from None

    @classmethod
    def from_config(
        cls,
        config: Sequence[Mapping[str, Any]],
        images: Mapping[str, np.ndarray] | None = None,
        frame_shape: Shape2 | None = None,
    ) -> PreprocessChain:
        """Build and validate a chain from ``[{"step": name, **params}, ...]``.

        Image steps (dark, mask, flatfield) take ``"image"``: a key of `images` (default: the
        step name) or an array. With `frame_shape` (H, W) of the raw frames, the images and
        ROI/binning/cornice sizes are checked against the shape that reaches each step now;
        otherwise on the first batch. Raises ValueError naming the step and the problem.
        """
        images = images or {}
        steps: list[PreprocessStep] = []
        for position, entry in enumerate(config):
            if not isinstance(entry, Mapping) or "step" not in entry:
                raise ValueError(f"preprocess entry {position} needs a 'step' name: {entry!r}")
            name = entry["step"]
            if name not in STEPS:
                raise ValueError(
                    f"unknown preprocess step {name!r} (entry {position}); known: {sorted(STEPS)}"
                )
            step_cls = STEPS[name]
            params = {key: value for key, value in entry.items() if key != "step"}
            missing = [key for key in step_cls.required if key not in params]
            if missing:
                raise ValueError(f"step {name!r} (entry {position}) is missing {missing}")
            unknown = sorted(set(params) - set(step_cls.required) - set(step_cls.optional))
            if unknown:
                allowed = sorted([*step_cls.required, *step_cls.optional])
                raise ValueError(
                    f"step {name!r} (entry {position}): unknown parameters {unknown}; "
                    f"allowed: {allowed}"
                )
            steps.append(step_cls.from_params(params, images))
        chain = cls(steps)
        if frame_shape is not None:
            chain.output_shape(frame_shape)
        logger.debug("preprocess chain: %s", chain.names)
        return chain

    @property
    def names(self) -> list[str]:
        return [step.name for step in self.steps]

    @property
    def is_linear(self) -> bool:
        """True when every step is affine with the same coefficients for every frame."""
        return all(step.linear for step in self.steps)

    @property
    def needs_monitor(self) -> bool:
        return any(isinstance(step, MonitorStep) for step in self.steps)

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """Shape after the chain for `input_shape` (H, W) or (B, H, W); checks every step."""
        *lead, height, width = tuple(int(n) for n in input_shape)
        shape: Shape2 = (height, width)
        for step in self.steps:
            shape = step.output_shape(shape)
        return (*lead, *shape)

    def __call__(self, frames: np.ndarray, monitor: np.ndarray | None = None) -> np.ndarray:
        """Apply the steps in order to a (B, H, W) batch; float32 (B, H', W') out.

        `monitor`: one value per frame, needed by the ``monitor`` step.
        """
        frames = _batch(frames)
        self.output_shape(frames.shape)
        if monitor is not None:
            monitor = np.asarray(monitor, dtype=np.float64).reshape(-1)
            if monitor.shape[0] != frames.shape[0]:
                raise ValueError(f"{monitor.shape[0]} monitor values for {frames.shape[0]} frames")
        if not self.steps:
            return np.array(frames, dtype=np.float32)
        out = frames
        for step in self.steps:
            out = step(out, monitor)
        return out
