"""Maps at a coarser binning, made from full-resolution accumulators (the daemon's live maps).

Why: at 2048^2 with two motors, a live version of the maps (~3.6 GB of memory traffic,
0.23-0.25 s alone on 2 cores) keeps the frame-to-map latency above 0.5 s (bench/RESULTS.md).
Binning the frames before the accumulators meets it but loses the full-resolution final
maps. Instead, the power sums, the background and the additive maps are linear in the
frames, so their block sums are exactly what accumulators fed with binned frames would
hold: live versions are made from block sums of the full-resolution state, at a quarter
of the pixels for 2x2, and the final maps stay full resolution, from the same state.
"""

from __future__ import annotations

import numpy as np

from . import _pixelmaps
from .preprocess import binned_shape
from .tiles import for_each_tile

#: output rows per call of the compiled pass (large: it streams)
BLOCK_ROWS = 64


def block_sums(values: np.ndarray, shape: tuple[int, int], factor: int, mean: bool = False) -> np.ndarray:
    """Sums (or means) over blocks of `factor` x `factor` pixels of maps over frames of
    `shape` (H, W).

    `values`: (..., H * W) flat maps or (..., H, W) images, float64 or float32 (anything
    else as float64). The result has the same layout at the binned shape (flat in, flat
    out) and type; partial blocks at the end are dropped, as the binning step does. Summed
    in double in the compiled pass (`_pixelmaps.block_sums`), on the tile threads.
    """
    arr = np.asarray(values)
    height, width = (int(n) for n in shape)
    flat = arr.shape[-1:] == (height * width,)
    if not flat and arr.shape[-2:] != (height, width):
        raise ValueError(f"maps of shape {arr.shape} are not over {height}x{width} frames")
    lead = arr.shape[:-1] if flat else arr.shape[:-2]
    dtype = arr.dtype if arr.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    src = np.ascontiguousarray(arr, dtype=dtype).reshape(-1, height, width)
    h, w = binned_shape((height, width), factor, factor)
    out = np.empty((src.shape[0], h, w), dtype=dtype)
    for_each_tile(h, lambda start, stop: _pixelmaps.block_sums(src, factor, factor, out, start, stop),
                  tile=BLOCK_ROWS)
    if mean:
        out /= factor * factor
    return out.reshape(*lead, h * w) if flat else out.reshape(*lead, h, w)
