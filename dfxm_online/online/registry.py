"""The accumulators a scan can run besides the moments, and the one contract they keep.

`analysis.accumulators` names them (the names are declared in `config.py`, which imports
nothing from here; a test checks that this registry builds exactly those). Each entry of
`REGISTRY` says how to build the accumulator for a scan, whether it takes part in the
pipeline's fused pass over each batch (`sums_plan`) or takes the frames itself (and may keep
references to them), whether it holds frames back until `finish()`, and how its snapshot
becomes named maps (a contract: `sum`, `max`, `sum_first_half`, `sum_second_half`,
`background_median`, `rolling_median`, `minimum`, `low_quantile`, `projections_<motor>`,
`pca_variance`, `pca_component_<i>`, `pca_weights`, `nmf_component_<i>`, `nmf_weights`).
The pipeline reads these flags instead of probing the objects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..acquisition.geometry import ScanGeometry
from ..config import ACCUMULATOR_NAMES, AnalysisConfig
from .accumulators.decomposition import ChunkedNMF, OnlinePCA
from .accumulators.median import LowQuantile, MedianByStep, RollingMedian, RunningMinimum
from .accumulators.projections import Projections, SumsAlongMotor

Maps = tuple[dict[str, np.ndarray], dict[str, list[tuple[str, np.ndarray]]]]


class Accumulator(Protocol):
    """What every accumulator does (the moments' `PowerSums` and the edge baseline too):
    one-pass updates, exact merges of parts of a scan, and a state to save and restore
    (checkpoints, tiles processed elsewhere). Its maps come from its registry entry."""

    def update(self, frames: np.ndarray, positions: Mapping[str, np.ndarray]) -> None: ...

    def merge(self, other: Any) -> None: ...

    def state(self) -> dict[str, np.ndarray]:
        """The arrays `from_state` restores it from. They may be the accumulator's own arrays,
        not copies (the large running sums are: a copy of a 2048^2 scan's costs its size in
        RSS at the very moment the scan-end state file is written); `from_state` copies what
        it takes, and a caller that keeps them while the accumulator goes on updating copies
        them itself."""
        ...

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> Any: ...


@dataclass(frozen=True)
class AccumulatorSpec:
    """How the pipeline runs one kind of accumulator."""

    #: the accumulator of a scan: (config, geometry, frame shape, first index) -> object
    build: Callable[[AnalysisConfig, ScanGeometry, tuple[int, int], int], Accumulator]
    #: its maps and their axes from its snapshot: (accumulator, frame shape, dtype) -> maps
    maps: Callable[[Any, tuple[int, int], Any], Maps]
    #: updated in the pipeline's fused pass over each batch (it has `sums_plan`); otherwise
    #: it takes the frames itself and may keep references to them (the batch's buffer must
    #: not be reused)
    shares_pass: bool = False
    #: holds frames back until `finish()` at the scan's end (a rolling window, a PCA batch)
    finishes: bool = False
    #: housekeeping after each batch (the rolling median drops its published outputs)
    after_update: Callable[[Any], None] | None = None


def _image(key: str) -> Callable[[Any, tuple[int, int], Any], Maps]:
    """Maps of an accumulator whose snapshot is one image (P,), as map `key`."""

    def maps(acc: Any, shape: tuple[int, int], dtype: Any) -> Maps:
        image = acc.snapshot()
        return ({} if image is None else {key: np.asarray(image, dtype=np.float64).reshape(shape)}), {}

    return maps


def _projections(acc: Projections, shape: tuple[int, int], dtype: Any) -> Maps:
    snap = acc.snapshot(dtype)  # float32 made directly for the daemon's snapshots
    return ({} if snap is None else {k: v.reshape(shape) for k, v in snap.items()}), {}


def _sums_along(acc: SumsAlongMotor, shape: tuple[int, int], dtype: Any) -> Maps:
    values, images = acc.snapshot()
    if not len(values):
        return {}, {}
    key = f"projections_{acc.motor}"
    return {key: images.reshape((len(values), *shape))}, {key: [(acc.motor, values)]}


def _decomposition(name: str) -> Callable[[Any, tuple[int, int], Any], Maps]:
    def maps(acc: Any, shape: tuple[int, int], dtype: Any) -> Maps:
        snap = acc.snapshot()
        if snap is None:
            return {}, {}
        comp_shape = snap["shape"] or shape
        out = {f"{name}_component_{i}": np.asarray(image).reshape(comp_shape)
               for i, image in enumerate(snap["components"])}
        out[f"{name}_weights"] = snap["weights"]  # (frames, k): each component's curve
        axes = {}
        if name == "pca":
            out["pca_variance"] = snap["explained_variance_ratio"]
            axes["pca_variance"] = [("component", np.arange(len(snap["explained_variance_ratio"])))]
        return out, axes

    return maps


def _pixels(shape: tuple[int, int]) -> int:
    return shape[0] * shape[1]


REGISTRY: dict[str, AccumulatorSpec] = {
    "projections": AccumulatorSpec(
        build=lambda c, g, shape, first: Projections(_pixels(shape), n_frames_expected=g.npoints or None,
                                                     split_axis=g.motors[0] if g.motors else None, start=first),
        maps=_projections, shares_pass=True),
    "median_background": AccumulatorSpec(
        build=lambda c, g, shape, first: MedianByStep(_pixels(shape), c.median_step, max_frames=g.npoints or None,
                                                      start=first),
        maps=_image("background_median")),
    "rolling_median": AccumulatorSpec(
        build=lambda c, g, shape, first: RollingMedian(_pixels(shape), c.rolling_window),
        maps=_image("rolling_median"), finishes=True, after_update=lambda acc: acc.pop_ready()),
    "minimum": AccumulatorSpec(build=lambda c, g, shape, first: RunningMinimum(_pixels(shape)),
                               maps=_image("minimum")),
    "low_quantile": AccumulatorSpec(
        build=lambda c, g, shape, first: LowQuantile(_pixels(shape), c.low_quantile,
                                                     max_frames=g.npoints or 100000),
        maps=_image("low_quantile")),
    "sums_along": AccumulatorSpec(
        build=lambda c, g, shape, first: SumsAlongMotor(_pixels(shape), c.sums_along_motor or g.motors[-1].name),
        maps=_sums_along),
    "pca": AccumulatorSpec(
        build=lambda c, g, shape, first: OnlinePCA(_pixels(shape), c.pca_components,
                                                   binning=c.decomposition_binning, frame_shape=shape),
        maps=_decomposition("pca"), finishes=True),
    "nmf": AccumulatorSpec(
        build=lambda c, g, shape, first: ChunkedNMF(_pixels(shape), c.nmf_components,
                                                    binning=c.decomposition_binning, frame_shape=shape),
        maps=_decomposition("nmf"), finishes=True),
}
assert tuple(REGISTRY) == ACCUMULATOR_NAMES, "config.AccumulatorName and the registry differ"


def build(config: AnalysisConfig, geometry: ScanGeometry, frame_shape: tuple[int, int],
          first_index: int = 0) -> dict[str, Accumulator]:
    """The configured accumulators of one scan, by name; `first_index` is the scan index of
    the first frame they will see (a part of a scan processed elsewhere)."""
    return {name: REGISTRY[name].build(config, geometry, frame_shape, first_index) for name in config.accumulators}


def maps_of(accumulators: Mapping[str, Any], shape: tuple[int, int], dtype: Any = np.float64) -> Maps:
    """Maps (and their axes) of the accumulators' snapshots. `dtype` float32: the
    projections are made in float32 (the others are rounded by the caller)."""
    maps: dict[str, np.ndarray] = {}
    axes: dict[str, list[tuple[str, np.ndarray]]] = {}
    for name, acc in accumulators.items():
        more, more_axes = REGISTRY[name].maps(acc, shape, dtype)
        maps.update(more)
        axes.update(more_axes)
    return maps, axes
