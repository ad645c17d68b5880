"""Maps at a coarser binning, made from full-resolution accumulators (the daemon's live maps).

Why: at 2048^2 with two motors on 2 cores, a live version of the full-resolution maps
(~3.6 GB of memory traffic, a 0.23-0.32 s cycle alone) keeps the frame-to-map latency far
above 0.5 s (docs/operations.md). Binning the frames before the accumulators cuts every
step but loses the full-resolution final maps. The power sums, the background and the
additive maps are linear in the frames, so their block sums are exactly what accumulators
fed with binned frames would hold: a live version made from block sums of the
full-resolution state has a quarter of the pixels at 2x2 in its snapshot and its file,
while the accumulators and the final maps stay full resolution (about half the lag; the
update of every frame at full resolution remains).
"""

from __future__ import annotations

import numpy as np

from . import preprocess


def block_sums(values: np.ndarray, shape: tuple[int, int], factor: int, mean: bool = False) -> np.ndarray:
    """Sums (or means) over blocks of `factor` x `factor` pixels of maps over frames of
    `shape` (H, W): the binning step's block sums (`preprocess.block_sums`), for maps laid
    out as the accumulators and snapshots hold them.

    `values`: (..., H * W) flat maps or (..., H, W) images. The result has the same layout
    at the binned shape (flat in, flat out), float32 for float32 maps and float64 for any
    other type; partial blocks at the end are dropped, as the binning step does.
    """
    arr = np.asarray(values)
    height, width = (int(n) for n in shape)
    flat = arr.shape[-1:] == (height * width,)
    if not flat and arr.shape[-2:] != (height, width):
        raise ValueError(f"maps of shape {arr.shape} are not over {height}x{width} frames")
    lead = arr.shape[:-1] if flat else arr.shape[:-2]
    dtype = np.float32 if arr.dtype == np.float32 else np.float64
    out = preprocess.block_sums(arr.reshape(-1, height, width), factor, factor, dtype,
                                factor * factor if mean else 1)
    h, w = out.shape[1:]
    return out.reshape(*lead, h * w) if flat else out.reshape(*lead, h, w)
