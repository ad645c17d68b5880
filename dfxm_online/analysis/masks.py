"""Grain / diffraction-spot masks of a summed image. Pure, no I/O.

- :func:`recon3d_mask`: the Recon3D manual's spot localisation (`getdata.py`): threshold
  and binarise, fill holes, close (dilation then erosion with a disk of radius 1), fill the
  holes again, keep the connected regions of at least `min_area` pixels.
- :func:`double_threshold_mask`: the DCT segmentation's double threshold, in 2-D: a global
  threshold finds the connected regions; each region's maximum M sets a local threshold
  τ·M, applied within a box of ±`box_max` around the maximum, and the connected component
  of the maximum is kept when its bounding box is between `box_min` and 2·`box_max` in
  size. A bright grain and a faint one are then each segmented at a fraction of their own
  peak, which one global threshold cannot do.

Both are written as `/entry/maps/mask` (1 = grain); the fits and the other analyses can
restrict themselves to it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.morphology import dilation, disk, erosion

#: 8-connectivity in 2-D (diagonal neighbours belong to the same spot)
EIGHT = np.ones((3, 3), dtype=bool)


def recon3d_mask(image: np.ndarray, threshold: float, min_area: int = 100) -> np.ndarray:
    """(H, W) bool mask of the spots of `image` (NaN counts as background).

    `min_area` 100 is the manual's value ("to be determined through tests" for a sample).
    The close is the manual's own `erosion(dilation(x, disk(1)), disk(1))` (scikit-image).
    """
    img = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=-np.inf)
    binary = ndimage.binary_fill_holes(img > threshold)
    closed = ndimage.binary_fill_holes(erosion(dilation(binary, disk(1)), disk(1)))
    labels, n = ndimage.label(closed, structure=EIGHT)
    if n == 0:
        return closed
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    keep = areas >= min_area
    keep[0] = False
    return keep[labels]


def double_threshold_mask(
    image: np.ndarray,
    threshold: float,
    tolerance: float = 0.1,
    box_min: int = 3,
    box_max: int | None = None,
) -> np.ndarray:
    """(H, W) bool mask: per connected region above `threshold`, the pixels above
    `tolerance` times the region's maximum that are connected to the maximum within a box
    of ±`box_max` pixels (default: the whole frame); kept when the component's bounding box
    spans at least `box_min` pixels along each axis (and, by construction, at most
    2·box_max + 1)."""
    if not 0.0 <= tolerance <= 1.0:
        raise ValueError("tolerance must be in [0, 1]")
    img = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=-np.inf)
    h, w = img.shape
    reach = max(h, w) if box_max is None else int(box_max)
    labels, n = ndimage.label(img > threshold, structure=EIGHT)
    mask = np.zeros(img.shape, dtype=bool)
    if n == 0:
        return mask
    peaks = ndimage.maximum_position(img, labels, index=np.arange(1, n + 1))
    for py, px in peaks:
        local = tolerance * img[py, px]
        y0, y1 = max(py - reach, 0), min(py + reach + 1, h)
        x0, x1 = max(px - reach, 0), min(px + reach + 1, w)
        box = img[y0:y1, x0:x1]
        comp, _ = ndimage.label(box >= local, structure=EIGHT)
        component = comp == comp[py - y0, px - x0]
        rows, cols = np.flatnonzero(component.any(axis=1)), np.flatnonzero(component.any(axis=0))
        if rows[-1] - rows[0] + 1 >= box_min and cols[-1] - cols[0] + 1 >= box_min:
            mask[y0:y1, x0:x1] |= component
    return mask
