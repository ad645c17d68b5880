"""A quick-look PNG of a scan's final maps, beside its maps file: what a person glances at.

Written by the daemon at every scan's end (`quicklook = true`) and by `process`: the COM
map of each motor, the mosaicity colour map with its key (the key's axes in motor units,
degrees), the FWHM of each motor, the integrated intensity and KAM. Images are drawn with
the origin at the lower left, as silx shows them (row 0 at the bottom), so that the PNG
and `silx view` of the same file look alike. Written to a temporary file and renamed,
like the maps.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def quicklook_path(maps_file: str | Path) -> Path:
    """`<maps file stem>.png` beside the maps file."""
    maps_file = Path(maps_file)
    return maps_file.with_name(maps_file.stem + ".png")


def _range(data: np.ndarray) -> tuple[float, float]:
    """A robust colour range: the 1st to 99th percentile of the finite values (outliers, as
    kurtosis has, do not flatten the scale)."""
    finite = data[np.isfinite(data)]
    if not finite.size:
        return 0.0, 1.0
    low, high = np.percentile(finite, [1, 99])
    return float(low), float(high if high > low else low + 1)


#: matplotlib (its pyplot state, its FreeType text rendering) is not thread-safe: two scans
#: ending at once drew their PNGs on two threads and crashed the process (a segmentation
#: fault in FreeType's text measuring). One figure at a time in a process.
_DRAWING = threading.Lock()


def write_quicklook(maps: Mapping[str, np.ndarray], motors: Sequence[str], path: str | Path, title: str,
                    key_axes: Sequence[tuple[str, np.ndarray]] | None = None) -> Path:
    """Draw the maps into `path` (PNG); `key_axes` are the mosaicity key's axes, (second
    motor values, first motor values) as the maps file stores them."""
    with _DRAWING:
        return _draw(maps, motors, Path(path), title, key_axes)


def _draw(maps: Mapping[str, np.ndarray], motors: Sequence[str], path: Path, title: str,
          key_axes: Sequence[tuple[str, np.ndarray]] | None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"com_{m}" for m in motors if f"com_{m}" in maps]
    names += [f"fwhm_{m}" for m in motors if f"fwhm_{m}" in maps] + [n for n in ("intensity", "kam") if n in maps]
    colour = "mosaicity" in maps and "mosaicity_key" in maps
    panels = len(names) + (2 if colour else 0)
    columns = min(panels, 4)
    rows = -(-panels // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.0 * columns, 3.8 * rows), constrained_layout=True,
                             squeeze=False)
    cells = list(axes.flat)
    for ax, name in zip(cells, names):
        data = np.asarray(maps[name], dtype=np.float64)
        low, high = _range(data)
        image = ax.imshow(data, origin="lower", cmap="viridis" if name.startswith("com") else "magma",
                          vmin=low, vmax=high, interpolation="nearest")
        unit = "deg" if name.startswith(("com_", "fwhm_", "kam")) else "counts"
        ax.set_title(f"{name} ({unit})")
        fig.colorbar(image, ax=ax, shrink=0.8)
    if colour:
        ax_map, ax_key = cells[len(names)], cells[len(names) + 1]
        ax_map.imshow(maps["mosaicity"], origin="lower", interpolation="nearest")
        ax_map.set_title("mosaicity")
        extent = None
        if key_axes and len(key_axes) == 2:
            second, first = np.asarray(key_axes[0][1]), np.asarray(key_axes[1][1])
            extent = (first[0], first[-1], second[0], second[-1])
        ax_key.imshow(maps["mosaicity_key"], origin="lower", aspect="auto", extent=extent)
        ax_key.set_xlabel(f"{motors[0]} (deg)")
        ax_key.set_ylabel(f"{motors[1]} (deg)")
        ax_key.set_title("mosaicity key")
    for ax in cells[panels:]:
        ax.axis("off")
    fig.suptitle(title)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    try:
        fig.savefig(tmp, dpi=72)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path
