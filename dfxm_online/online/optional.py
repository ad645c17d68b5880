"""The optional accumulators a scan runs besides the moments, chosen in the configuration.

Each entry of `analysis.accumulators` names one; `build` makes them for a scan and
`maps_of` turns their snapshots into named maps (a contract: `sum`, `max`,
`sum_first_half`, `sum_second_half`, `background_median`, `rolling_median`, `minimum`,
`low_quantile`, `projections_<motor>`, `pca_variance`, `pca_component_<i>`, `pca_weights`,
`nmf_component_<i>`, `nmf_weights`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..acquisition.geometry import ScanGeometry
from ..config import AnalysisConfig
from .accumulators.decomposition import ChunkedNMF, OnlinePCA
from .accumulators.median import LowQuantile, MedianByStep, RollingMedian, RunningMinimum
from .accumulators.projections import Projections, SumsAlongMotor

#: every name accepted in `analysis.accumulators`
NAMES = (
    "projections", "median_background", "rolling_median", "minimum", "low_quantile",
    "sums_along", "pca", "nmf",
)


def build(
    config: AnalysisConfig, geometry: ScanGeometry, frame_shape: tuple[int, int], first_index: int = 0
) -> dict[str, Any]:
    """The configured optional accumulators of one scan, by name; `first_index` is the
    scan index of the first frame they will see (a part of a scan processed elsewhere)."""
    out: dict[str, Any] = {}
    n = geometry.npoints or None
    n_pixels = frame_shape[0] * frame_shape[1]
    for name in config.accumulators:
        if name == "projections":
            split = geometry.motors[0] if geometry.motors else None
            out[name] = Projections(n_pixels, n_frames_expected=n, split_axis=split, start=first_index)
        elif name == "median_background":
            out[name] = MedianByStep(n_pixels, config.median_step, max_frames=n, start=first_index)
        elif name == "rolling_median":
            out[name] = RollingMedian(n_pixels, config.rolling_window)
        elif name == "minimum":
            out[name] = RunningMinimum(n_pixels)
        elif name == "low_quantile":
            out[name] = LowQuantile(n_pixels, config.low_quantile, max_frames=n or 100000)
        elif name == "sums_along":
            out[name] = SumsAlongMotor(n_pixels, config.sums_along_motor or geometry.motors[-1].name)
        elif name == "pca":
            out[name] = OnlinePCA(n_pixels, config.pca_components,
                                  binning=config.decomposition_binning, frame_shape=frame_shape)
        elif name == "nmf":
            out[name] = ChunkedNMF(n_pixels, config.nmf_components,
                                   binning=config.decomposition_binning, frame_shape=frame_shape)
    return out


def after_update(accumulators: Mapping[str, Any]) -> None:
    """Housekeeping after each batch: drop the rolling median's per-frame outputs (only
    the latest is published), so they do not pile up over a long scan."""
    rolling = accumulators.get("rolling_median")
    if rolling is not None:
        rolling.pop_ready()


def maps_of(accumulators: Mapping[str, Any], shape: tuple[int, int],
            dtype: np.dtype | type = np.float64) -> tuple[dict[str, np.ndarray], dict]:
    """Maps (and their axes) from the optional accumulators' snapshots. `dtype` float32:
    the projections are made in float32 (the others are rounded by the caller)."""
    maps: dict[str, np.ndarray] = {}
    axes: dict[str, list[tuple[str, np.ndarray]]] = {}
    for name, acc in accumulators.items():
        if name == "projections":
            snap = acc.snapshot(dtype)
            if snap is not None:
                maps.update({k: v.reshape(shape) for k, v in snap.items()})
        elif name == "median_background":
            image = acc.snapshot()
            if image is not None:
                maps["background_median"] = image.reshape(shape)
        elif name in ("rolling_median", "minimum", "low_quantile"):
            image = acc.snapshot()
            if image is not None:
                maps[name] = np.asarray(image, dtype=np.float64).reshape(shape)
        elif name == "sums_along":
            values, images = acc.snapshot()
            if len(values):
                key = f"projections_{acc.motor}"
                maps[key] = images.reshape((len(values), *shape))
                axes[key] = [(acc.motor, values)]
        elif name in ("pca", "nmf"):
            snap = acc.snapshot()
            if snap is None:
                continue
            comp_shape = snap["shape"] or shape
            for i, image in enumerate(snap["components"]):
                maps[f"{name}_component_{i}"] = np.asarray(image).reshape(comp_shape)
            maps[f"{name}_weights"] = snap["weights"]  # (frames, k): each component's curve
            if name == "pca":
                maps["pca_variance"] = snap["explained_variance_ratio"]
                axes["pca_variance"] = [("component", np.arange(len(snap["explained_variance_ratio"])))]
    return maps, axes
