"""A quick-look PNG of a scan's final maps, beside its maps file: what a person glances at.

Written by the daemon at every scan's end (`quicklook = true`) and by `process`: the COM
map of each motor, the mosaicity colour map with its key (the key's axes the two motors, in
degrees), the FWHM of each motor, the integrated intensity and KAM, then the fitted peak
position and FWHM of each motor when the fits ran. Every panel is titled and its colour bar
labelled with the map's units (publish/describe.py, the words of the maps file), the figure
with the scan, dataset, motors and frames (`quicklook_title`).

Orientation as in silx: silx's Plot2D draws an image with row 0 at the bottom and the y axis
increasing upwards (`yInverted` False) and the x axis increasing to the right, and its
NXdata view places an image by its axes datasets. The PNG does the same: origin at the
lower left, the panels' axes the maps' pixel index or, when given (`image_axes`), their
sample axes in µm, always increasing up and right (a decreasing sample axis puts row 0 at
the top, as in silx). Written to a temporary file and renamed, like the maps.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .describe import DIMENSIONLESS, describe, label, motor_unit

#: panels per row of the figure
COLUMNS = 4
#: a panel's size (inches) and the PNG's resolution (dots per inch)
PANEL_INCHES = (4.0, 3.8)
DPI = 72
#: pixels per side a map is drawn with at most: about twice a panel's width in the PNG
#: (4 in at 72 dpi), so that what is drawn is what matplotlib's nearest-neighbour
#: resampling would have picked from the full map anyway
DRAWN_PIXELS = 2 * int(PANEL_INCHES[0] * DPI)


def quicklook_path(maps_file: str | Path) -> Path:
    """`<maps file stem>.png` beside the maps file."""
    maps_file = Path(maps_file)
    return maps_file.with_name(maps_file.stem + ".png")


def quicklook_title(scan: str, dataset: str, motors: Sequence[str], frames: int, expected: int | None = None,
                    state: str = "") -> str:
    """The figure's title: which scan (name and number, or file::entry), which dataset,
    which motors, how many frames (of how many), in which state."""
    counted = f"{frames}/{expected}" if expected else f"{frames}"
    parts = [scan, f"dataset {dataset}" if dataset else "", ", ".join(motors), f"{counted} frames",
             state]
    return " - ".join(p for p in parts if p)


def robust_range(data: np.ndarray) -> tuple[float, float]:
    """A robust colour range: the 1st to 99th percentile of the finite values (outliers, as
    kurtosis has, do not flatten the scale); the PNG's and the live viewer's default."""
    finite = np.asarray(data, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not finite.size:
        return 0.0, 1.0
    low, high = np.percentile(finite, [1, 99])
    return float(low), float(high if high > low else low + 1)


def drawn(data: np.ndarray) -> np.ndarray:
    """`data` (rows, columns[, colour]) with every k-th row and column, k the smallest step
    that leaves at most `DRAWN_PIXELS` per side (k = 1: `data` itself).

    Why: a panel is ~290 pixels wide, and matplotlib resamples an image to it by first
    converting the whole map to RGBA: a 2048^2 scan's quick-look (12 panels) cost 10-12 s
    of CPU, 5.4 s of it resampling, and ran beside the next scan's live maps (the daemon
    draws it at a scan's end, the scan-end workflow in its process). Taking every k-th
    pixel is the nearest-neighbour pick the resampling made anyway, on ~16x fewer pixels."""
    step = -(-max(data.shape[0], data.shape[1]) // DRAWN_PIXELS)
    return data if step <= 1 else data[::step, ::step]


def _edges(values: np.ndarray) -> tuple[float, float]:
    """The outer edges of the cells centred on `values` (evenly spaced)."""
    values = np.asarray(values, dtype=np.float64)
    step = (values[-1] - values[0]) / (len(values) - 1) if len(values) > 1 else 1.0
    return float(values[0] - step / 2), float(values[-1] + step / 2)


#: matplotlib (its pyplot state, its FreeType text rendering) is not thread-safe: two scans
#: ending at once drew their PNGs on two threads and crashed the process (a segmentation
#: fault in FreeType's text measuring). One figure at a time in a process.
_DRAWING = threading.Lock()


def panel_names(maps: Mapping[str, np.ndarray], motors: Sequence[str],
                fits: Mapping[str, np.ndarray] | None = None) -> list[str]:
    """The panels in the figure's order; fit maps as `fit/<name>`, the mosaicity map
    followed by `mosaicity_key` when both are there."""
    names = [f"com_{m}" for m in motors if f"com_{m}" in maps]
    if "mosaicity" in maps and "mosaicity_key" in maps:
        names += ["mosaicity", "mosaicity_key"]
    names += [f"fwhm_{m}" for m in motors if f"fwhm_{m}" in maps] + [n for n in ("intensity", "kam") if n in maps]
    fits = fits or {}
    names += [f"fit/{kind}_{m}" for kind in ("peak", "fwhm") for m in motors if f"{kind}_{m}" in fits]
    return names


def write_quicklook(maps: Mapping[str, np.ndarray], motors: Sequence[str], path: str | Path, title: str,
                    key_axes: Sequence[tuple[str, np.ndarray]] | None = None,
                    fits: Mapping[str, np.ndarray] | None = None,
                    image_axes: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    """Draw the maps into `path` (PNG). `key_axes`: the mosaicity key's axes, (second motor
    values, first motor values) as the maps file stores them; `fits`: the per-pixel fits'
    maps (/entry/fit), whose peak and FWHM maps are drawn too; `image_axes`: (y, x) sample
    positions (µm) of the maps' rows and columns, else their pixel index."""
    with _DRAWING:
        fig = draw_figure(maps, motors, title, key_axes, fits, image_axes)
        try:
            return _save(fig, Path(path))
        finally:
            import matplotlib.pyplot as plt

            plt.close(fig)


def draw_figure(maps: Mapping[str, np.ndarray], motors: Sequence[str], title: str,
                key_axes: Sequence[tuple[str, np.ndarray]] | None = None,
                fits: Mapping[str, np.ndarray] | None = None,
                image_axes: tuple[np.ndarray, np.ndarray] | None = None):
    """The quick-look's matplotlib figure (Agg), one panel per `panel_names` entry, each
    axes' `get_label()` the panel's name (callers hold `_DRAWING`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = panel_names(maps, motors, fits)
    columns = max(1, min(len(names), COLUMNS))
    rows = max(1, -(-len(names) // columns))
    width, height = PANEL_INCHES
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), constrained_layout=True,
                             squeeze=False)
    cells = list(axes.flat)
    if image_axes is not None:
        (y0, y1), (x0, x1) = _edges(image_axes[0]), _edges(image_axes[1])
        extent, units = (x0, x1, y0, y1), "um"
    else:
        extent, units = None, "pixel"
    for ax, name in zip(cells, names):
        ax.set_label(name)
        data = fits[name[4:]] if name.startswith("fit/") else maps[name]
        description = describe(name, motors)
        if name == "mosaicity_key":
            _draw_key(ax, data, motors, key_axes)
            continue
        data = np.asarray(data)
        # the full map's extent (pixel edges, or its sample axes): the drawn pixels cover it
        cover = extent if extent is not None else (-0.5, data.shape[1] - 0.5, -0.5, data.shape[0] - 0.5)
        data = drawn(data)
        if data.ndim == 3:  # the mosaicity RGB map
            ax.imshow(data, origin="lower", interpolation="nearest", extent=cover)
        else:
            data = np.asarray(data, dtype=np.float64)
            low, high = robust_range(data)
            cmap = "viridis" if name.startswith(("com_", "fit/peak_")) else "magma"
            image = ax.imshow(data, origin="lower", cmap=cmap, vmin=low, vmax=high, interpolation="nearest",
                              extent=cover)
            unit = description.units
            fig.colorbar(image, ax=ax, shrink=0.8, label=None if unit in ("", DIMENSIONLESS) else unit)
        if extent is not None:  # increasing up and right, as silx's axes
            ax.set_xlim(min(x0, x1), max(x0, x1))
            ax.set_ylim(min(y0, y1), max(y0, y1))
        ax.set_xlabel(label("sample x" if image_axes is not None else "column", units))
        ax.set_ylabel(label("sample y" if image_axes is not None else "row", units))
        ax.set_title(label(name, description.units), fontsize=10)
    for ax in cells[len(names):]:
        ax.axis("off")
    fig.suptitle(title)
    return fig


def _draw_key(ax, key: np.ndarray, motors: Sequence[str], key_axes: Sequence[tuple[str, np.ndarray]] | None) -> None:
    """The mosaicity key: rows along the second motor, columns along the first, in their
    units (degrees), row 0 at the bottom as silx draws it."""
    extent = None
    first_name, second_name = motors[0], motors[1]
    if key_axes and len(key_axes) == 2:
        second_name, first_name = key_axes[0][0], key_axes[1][0]
        extent = (*_edges(key_axes[1][1]), *_edges(key_axes[0][1]))
    ax.imshow(key, origin="lower", aspect="auto", extent=extent, interpolation="nearest")
    ax.set_xlabel(label(first_name, motor_unit(first_name)))
    ax.set_ylabel(label(second_name, motor_unit(second_name)))
    ax.set_title("mosaicity key", fontsize=10)


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp.png")
    try:
        fig.savefig(tmp, dpi=DPI)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
