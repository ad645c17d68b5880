"""Static images the preprocessing refers to (mask, flat-field, dark file), loaded once.

Anything silx can read: `file.h5::/path/to/dataset`, EDF/TIFF (through fabio), `.npy`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .acquisition.geometry import ScanError


def load_image(url: str) -> np.ndarray:
    """A 2-D image from a silx data URL (or a .npy file); 3-D stacks are averaged."""
    try:
        if url.endswith(".npy"):
            data = np.load(url)
        else:
            import silx.io

            data = silx.io.get_data(url)
    except Exception as exc:  # silx raises several types for a bad URL or file
        raise ScanError(f"cannot read image {url!r}: {exc}") from None
    data = np.asarray(data)
    if data.ndim == 3:
        data = data.mean(axis=0)
    if data.ndim != 2:
        raise ScanError(f"image {url!r} is not 2-D (shape {data.shape})")
    return data


def load_images(urls: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Load every named image. A mask file follows the pyFAI/silx convention (non-zero =
    bad pixel) and becomes the chain's boolean mask (True = keep)."""
    images = {}
    for name, url in urls.items():
        image = load_image(url)
        if name == "mask":
            image = image == 0
        images[name] = image
    return images
