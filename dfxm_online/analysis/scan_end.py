"""Scan-end analyses in one call: what a scan's maps file gets after the moments. Pure, no I/O.

:func:`scan_end_groups` takes what the pipeline has when a scan ends and returns NXdata
groups for a generic writer plus fields for `/entry/process`:

    groups, process = scan_end_groups(
        maps,              # {name: array}: the pipeline's maps (`com_<m>`, `intensity`, and the
                           #   optional accumulators' `sum_first_half`, `sum_second_half`, ...)
        motors,            # the scan's MotorAxis list (ScanGeometry.motors), fastest first
        positions=...,     # {motor: (n_frames,)} recorded positions of every frame, by index
        positioners=...,   # {name: value or (n,) array} the scan file's positioners (mainx, obx,
                           #   obpitch, ffz, ... in mm / degrees; arrays are reduced to their median)
        accumulators=...,  # the pipeline's optional accumulators by name ("projections", "pca",
                           #   "nmf", "sums_along"), for states the maps do not carry
        frame_batches=..., # None, or a callable starting a pass over the recorded, preprocessed
                           #   frames: yields (scan indices (B,), frames (B, H, W)); called once per
                           #   analysis that needs the frames (drift scale search, orientation
                           #   distribution, weak beam, z-sum, RSM, BSS on the exact matrix)
        n_frames=...,      # frames in the scan (default: from the positions or the projections)
        options=ScanEndOptions(...),
    )

`groups` is {"/entry/<group path>": group}; each group is an ordered dict whose first
entry is the NXdata signal, then auxiliary datasets, and three optional keys starting with
"@": "@signal" (the signal's name, repeated for clarity), "@axes" (names, present in the
group, of the signal's axes in dimension order, "." for a dimension without one, NeXus
style) and "@units" ({dataset name: unit}). Scalars are numpy 0-d arrays or Python
numbers. `process` is {field name: value} for /entry/process (strings, numbers, small
arrays), including "scan_end_options" (JSON) and "scan_end_skipped" (one line per analysis
that did not run, with the reason).

What runs (each skipped, with its reason, when its inputs are missing):

- `/entry/drift`: shift correction estimate (drift.py) from `sum_first_half` /
  `sum_second_half` (maps, or the `projections` accumulator), refined over the frames when
  given. Reported, not applied (the fits apply it with `drift.apply_drift`), with the
  correlation of the registered halves and a `reliable` flag (see `drift_min_similarity`).
- `/entry/maps/mask`: grain mask (masks.py) of the `intensity` map (or `sum`).
- `/entry/maps/domains`: sub-domains of (com_<m0>, com_<m1>) (domains.py), inside the mask.
- `/entry/orientation_distribution`: intensity per motor position and its iso-contours
  (orientation_distribution.py), from the frames; without frames, the 1-D distribution
  along the `sums_along` accumulator's motor.
- `/entry/strain/strain_<motor>` for each strain motor (strain.py).
- `/entry/sample_axes` and µm axes on the image groups when the pixel size is known
  (sample_axes.py); `/entry/gradient_corrected/com_<motor>` for chi / obpitch / ccmth.
- `/entry/weak_beam/<map>` (weak_beam.py), `/entry/zsum` (z-sum per value of a motor),
  `/entry/rsm` (rsm.py), when asked for in the options and the frames are given.
- `/entry/bss/{pca,nmf,nica,nica_nmf}` (bss.py): on the exact (binned) frame matrix when
  the frames are given and it fits in `bss_max_dense_mb`, otherwise on the online
  accumulators' sketch (`nmf`'s rank k + 5 sketch, else `pca`'s); the online NMF's own
  converged factors are reported as `nmf` when the frames are not used.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from ..acquisition.geometry import MotorAxis
from ..online.accumulators.decomposition import ChunkedNMF, OnlinePCA, bin_frames
from ..online.accumulators.projections import SumsAlongMotor
from . import bss, drift, masks, orientation_distribution, rsm, sample_axes, strain, weak_beam
from .domains import cluster_domains

log = logging.getLogger(__name__)

Batches = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]
Group = dict[str, Any]

#: largest side of the frames in the drift scale search (binned down to it by default)
DRIFT_SEARCH_SIDE = 512
# (the option `drift` hides the module in the class body)
DEFAULT_DRIFT_STEPS = drift.DEFAULT_STEPS
DEFAULT_DRIFT_MAX_FRAMES = drift.DEFAULT_MAX_FRAMES


@dataclass
class ScanEndOptions:
    """The scan-end analyses' settings a user would change (defaults in brackets)."""

    #: estimate the drift [True]; scale-search steps [50, darfix]; binning of the frames in
    #: the search [0 = automatic: at most 512 pixels on a side]
    drift: bool = True
    drift_steps: int = DEFAULT_DRIFT_STEPS
    drift_binning: int = 0
    #: frames used by the scale search at most, evenly spread [256]
    drift_max_frames: int = DEFAULT_DRIFT_MAX_FRAMES
    #: below this correlation of the registered half sums the drift is reported as not
    #: reliable [0.8]: the halves do not image the same structure (e.g. a mesh whose halves
    #: light up different grains), so their shift is not a drift
    drift_min_similarity: float = 0.8
    #: grain mask: "recon3d", "double_threshold" or "none" ["recon3d"]; of the map
    #: `mask_image` ["intensity"]; threshold absolute, or [None] `mask_threshold_fraction`
    #: [0.05, the signal mask's] of the 99.5th percentile of the positive values
    mask: str = "recon3d"
    mask_image: str = "intensity"
    mask_threshold: float | None = None
    mask_threshold_fraction: float = 0.05
    mask_min_area: int = 100
    mask_tolerance: float = 0.1
    mask_box_min: int = 3
    mask_box_max: int | None = None
    #: sub-domains (0 = off) [4] and the clustering's seed [0]
    domains: int = 4
    domains_seed: int = 0
    #: orientation distribution contour levels (fractions of the maximum) and smoothing
    contour_levels: tuple[float, ...] = orientation_distribution.DEFAULT_LEVELS
    contour_smoothing: float = 0.5
    #: strain reference angle per motor (degrees) [median of the COM map]
    strain_reference: dict[str, float] = field(default_factory=dict)
    #: optical pixel size: a preset name (sample_axes.MAGNIFICATION_PRESETS_UM) or µm
    #: [None: no sample axes]; topography foreshortening axis (0 = x, 1 = y) [None]
    detector_preset: str | float | None = None
    topography_orientation: int | None = None
    #: optical gradient correction of the COM maps when the geometry is known [True]
    gradient_correction: bool = True
    #: weak beam n·σ [None = off]
    weak_beam_sigma: float | None = None
    #: z-sum per value of this motor [None = off]
    zsum_motor: str | None = None
    #: RSM of a 1-D scan: scattering vector Q (hkl) and lattice parameter a (Å) [None = off],
    #: half-range, bins, units, surface normal, energy (keV) [positioner "energy", else 17],
    #: detector pixel (mm; a darfix `PixelSize` preset name or a number) and the rocking motor
    rsm_q: tuple[float, float, float] | None = None
    rsm_a: float | None = None
    rsm_range: float = 0.01
    rsm_shape: tuple[int, int, int] = (50, 50, 50)
    rsm_units: str = "poulsen"
    rsm_normal: tuple[float, float, float] = (1.0, 0.0, 0.0)
    rsm_energy: float | None = None
    rsm_pixel: str | float = "pco_edge_2x_rsm"
    rsm_motor: str = "diffry"
    #: blind source separation [True]; components [None: the online accumulators' k, else 3];
    #: binning of the exact frame matrix [4]; its size limit (MB) [512]; NMF/NICA iterations
    bss: bool = True
    bss_components: int | None = None
    bss_binning: int = 4
    bss_max_dense_mb: float = 512.0
    bss_max_iter: int = 500

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ScanEndOptions:
        """Options from a mapping (a TOML table, JSON); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown scan-end option(s): {', '.join(unknown)}")
        opts = dict(values)
        for key in ("contour_levels", "rsm_q", "rsm_shape", "rsm_normal"):
            if opts.get(key) is not None:
                opts[key] = tuple(opts[key])
        return cls(**opts)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def _positioner(positioners: Mapping[str, Any] | None, name: str) -> float | None:
    """A positioner's value (the median of an array, as darfix), None if absent."""
    if not positioners or name not in positioners:
        return None
    value = np.asarray(positioners[name], dtype=np.float64)
    return float(np.median(value)) if value.size else None


def _robust_threshold(image: np.ndarray, fraction: float) -> float:
    positive = image[np.isfinite(image) & (image > 0)]
    if positive.size == 0:
        raise ValueError("the mask image has no positive value")
    return fraction * float(np.percentile(positive, 99.5))


def _image_group(name: str, image: np.ndarray, axes: sample_axes.SampleAxes | None,
                 extra: Mapping[str, Any] | None = None, units: str | None = None) -> Group:
    group: Group = {name: image}
    group.update(extra or {})
    group["@signal"] = name
    unit_map = {} if units is None else {name: units}
    if axes is not None and axes.y.size == image.shape[0] and axes.x.size == image.shape[1]:
        group["y"], group["x"] = axes.y, axes.x
        group["@axes"] = ["y", "x"] + ["."] * (image.ndim - 2)
        unit_map.update(y="um", x="um")
    if unit_map:
        group["@units"] = unit_map
    return group


class _Run:
    """One scan's scan-end analyses: collects groups, process fields and skip reasons."""

    def __init__(self, maps, motors, positions, positioners, accumulators, frame_batches,
                 n_frames, options) -> None:
        self.maps = maps
        self.motors = list(motors)
        self.names = [m.name for m in self.motors]
        self.positions = positions
        self.positioners = positioners
        self.acc = accumulators or {}
        self.frames = frame_batches
        self.opt = options
        self.groups: dict[str, Group] = {}
        self.process: dict[str, Any] = {"scan_end_options": options.to_json()}
        self.skipped: list[str] = []
        self.n_frames = n_frames if n_frames is not None else self._count_frames()
        self.shape = self._map_shape()
        self.axes: sample_axes.SampleAxes | None = None
        self.mask: np.ndarray | None = None

    def _count_frames(self) -> int | None:
        if self.positions and self.names and self.names[0] in self.positions:
            return int(np.asarray(self.positions[self.names[0]]).size)
        proj = self.acc.get("projections")
        return None if proj is None else proj.count

    def _map_shape(self) -> tuple[int, int] | None:
        for name in ("intensity", "sum", *(f"com_{m}" for m in self.names)):
            if name in self.maps and np.ndim(self.maps[name]) == 2:
                return tuple(np.shape(self.maps[name]))
        return None

    def skip(self, analysis: str, reason: str) -> None:
        log.info("scan end: %s skipped: %s", analysis, reason)
        self.skipped.append(f"{analysis}: {reason}")

    def run(self, name: str, step: Callable[[], None]) -> None:
        """Run one analysis; a ValueError (the data cannot give it) skips it with its reason."""
        try:
            step()
        except ValueError as exc:
            self.skip(name, str(exc))

    # ---------------------------------------------------------------------------------

    def pixel_size(self) -> None:
        opt = self.opt
        if opt.detector_preset is None:
            self.skip("sample axes", "no detector_preset (optical pixel size) given")
            return
        mainx, obx = _positioner(self.positioners, "mainx"), _positioner(self.positioners, "obx")
        if mainx is None or obx is None:
            self.skip("sample axes", "positioners mainx and obx are needed")
            return
        optical = sample_axes.optical_pixel_size(opt.detector_preset)
        px = sample_axes.sample_pixel_size(optical, mainx, obx)
        if self.shape is None:
            raise ValueError("no 2-D map to give axes to")
        self.axes = sample_axes.sample_axes(
            self.shape, px, topography_orientation=opt.topography_orientation,
            obpitch=_positioner(self.positioners, "obpitch"))
        self.groups["/entry/sample_axes"] = {
            "pixel_size": np.array([self.axes.pixel_y, self.axes.pixel_x]), "y": self.axes.y,
            "x": self.axes.x, "@signal": "pixel_size",
            "@units": {"pixel_size": "um", "y": "um", "x": "um"}}
        self.process.update(magnification=sample_axes.magnification(mainx, obx),
                            pixel_size_um=px, optical_pixel_size_um=optical)

    def gradient(self) -> None:
        if not self.opt.gradient_correction:
            return
        if self.axes is None:
            self.skip("gradient correction", "the pixel size is unknown")
            return
        pos = {k: _positioner(self.positioners, k) for k in ("obx", "obpitch", "ffz", "mainx")}
        obx_m = None if pos["obx"] is None else pos["obx"] * 1e-3
        pixel_m = self.axes.pixel_x * 1e-6
        for motor in self.names:
            com = self.maps.get(f"com_{motor}")
            if com is None:
                continue
            if motor == "chi":
                if pos["obpitch"] is None:
                    self.skip("gradient correction chi", "positioner obpitch is needed")
                    continue
                out = sample_axes.chi_gradient_correction(com, pos["obpitch"], obx_m, pixel_m)
            elif motor in ("obpitch", "ccmth"):
                if pos["ffz"] is None:
                    self.skip(f"gradient correction {motor}", "positioner ffz is needed")
                    continue
                out = sample_axes.two_theta_gradient_correction(
                    com, pos["ffz"] * 1e-3, pos["mainx"] * 1e-3, obx_m, self.axes.pixel_y * 1e-6)
            else:
                continue
            name = f"com_{motor}"
            self.groups[f"/entry/gradient_corrected/{name}"] = _image_group(name, out, self.axes)

    def drift(self) -> None:
        if not self.opt.drift:
            return
        first, second = self.maps.get("sum_first_half"), self.maps.get("sum_second_half")
        if (first is None or second is None) and "projections" in self.acc:
            snap = self.acc["projections"].snapshot()
            if snap is not None and self.shape is not None:
                first, second = (snap[k].reshape(self.shape) for k in ("sum_first_half", "sum_second_half"))
        if first is None or second is None:
            self.skip("drift", "no half sums (the projections accumulator)")
            return
        if not self.n_frames:
            raise ValueError("the number of frames is unknown")
        binning = self.opt.drift_binning or max(1, int(np.ceil(max(np.shape(first)) / DRIFT_SEARCH_SIDE)))
        batches = None if self.frames is None else self.frames()
        est = drift.estimate_drift(np.asarray(first), np.asarray(second), self.n_frames, batches,
                                   self.opt.drift_steps, binning, self.opt.drift_max_frames)
        total = est.total(self.n_frames)
        self.groups["/entry/drift"] = {
            "shift_per_frame": np.array(est.shift_per_frame),
            "coarse_shift_per_frame": np.array(est.coarse),
            "total_shift": np.array(total), "direction": np.array(["y", "x"]),
            "scale_factor": est.scale_factor, "score": est.score, "refined": est.refined,
            "similarity": est.similarity, "reliable": bool(est.similarity >= self.opt.drift_min_similarity),
            "@signal": "shift_per_frame", "@axes": ["direction"],
            "@units": {"shift_per_frame": "pixel", "coarse_shift_per_frame": "pixel",
                       "total_shift": "pixel"}}
        self.process.update(drift_shift_per_frame=np.array(est.shift_per_frame),
                            drift_total_shift=np.array(total), drift_refined=est.refined,
                            drift_similarity=est.similarity)

    def grain_mask(self) -> None:
        opt = self.opt
        if opt.mask == "none":
            return
        image = self.maps.get(opt.mask_image)
        if image is None:
            self.skip("mask", f"no {opt.mask_image!r} map")
            return
        image = np.asarray(image, dtype=np.float64)
        threshold = (opt.mask_threshold if opt.mask_threshold is not None
                     else _robust_threshold(image, opt.mask_threshold_fraction))
        if opt.mask == "recon3d":
            mask = masks.recon3d_mask(image, threshold, opt.mask_min_area)
        elif opt.mask == "double_threshold":
            mask = masks.double_threshold_mask(image, threshold, opt.mask_tolerance,
                                               opt.mask_box_min, opt.mask_box_max)
        else:
            raise ValueError(f"unknown mask method {opt.mask!r}")
        self.mask = mask
        self.groups["/entry/maps/mask"] = _image_group("mask", mask.astype(np.uint8), self.axes)
        self.process.update(mask_method=opt.mask, mask_threshold=float(threshold),
                            mask_fraction=float(mask.mean()))

    def domains(self) -> None:
        k = self.opt.domains
        if k <= 0:
            return
        if len(self.names) < 2:
            self.skip("domains", "needs two motors")
            return
        a, b = (self.maps.get(f"com_{m}") for m in self.names[:2])
        if a is None or b is None:
            self.skip("domains", "no COM maps")
            return
        dom = cluster_domains(a, b, k, mask=self.mask, random_state=self.opt.domains_seed)
        self.groups["/entry/maps/domains"] = _image_group("domains", dom.rgb, self.axes, {
            "labels": dom.labels, "centres": dom.centres, "colours": dom.colours,
            "sizes": dom.sizes})
        self.process["domains"] = k

    def distribution(self) -> None:
        if self.frames is not None and self.positions is not None:
            totals = np.zeros(self.n_frames or 0)
            for indices, frames in self.frames():
                totals[np.asarray(indices)] = orientation_distribution.frame_totals(frames)
            dist = orientation_distribution.orientation_distribution(totals, self.positions, self.motors)
            group: Group = {"orientation_distribution": dist.intensity, "frames": dist.frames}
            for name, centres in dist.axes.items():
                group[name] = centres
            if dist.intensity.ndim == 2:
                a, b = self.names[:2]
                group["contours"] = orientation_distribution.iso_contours(
                    dist.intensity, dist.axes[a], dist.axes[b], self.opt.contour_levels,
                    self.opt.contour_smoothing)
            group.update({"@signal": "orientation_distribution", "@axes": list(dist.axes)})
            self.groups["/entry/orientation_distribution"] = group
            return
        sums = self.acc.get("sums_along")
        if sums is None:
            self.skip("orientation distribution", "needs the frames or the sums_along accumulator")
            return
        values, images = weak_beam.zsum_of_accumulator(sums, (1, sums.n_pixels))
        self.groups["/entry/orientation_distribution"] = {
            "orientation_distribution": orientation_distribution.distribution_along(values, images),
            sums.motor: values, "@signal": "orientation_distribution", "@axes": [sums.motor]}

    def strain(self) -> None:
        coms = {m: self.maps[f"com_{m}"] for m in self.names if f"com_{m}" in self.maps}
        for motor, (eps, ref) in strain.strain_maps(coms, self.opt.strain_reference).items():
            name = f"strain_{motor}"
            self.groups[f"/entry/strain/{name}"] = _image_group(
                name, eps, self.axes, {"reference": ref}, units=None)
            self.groups[f"/entry/strain/{name}"].setdefault("@units", {})["reference"] = "deg"
            self.process[f"strain_reference_{motor}"] = ref

    def weak_beam(self) -> None:
        n_sigma = self.opt.weak_beam_sigma
        if n_sigma is None:
            return
        if self.frames is None or self.positions is None:
            self.skip("weak beam", "needs the frames")
            return
        for name, image in weak_beam.weak_beam_maps(self.frames, self.positions, self.motors, n_sigma).items():
            self.groups[f"/entry/weak_beam/{name}"] = _image_group(name, image, self.axes)
        self.process["weak_beam_sigma"] = n_sigma

    def zsum(self) -> None:
        motor = self.opt.zsum_motor
        if motor is None:
            return
        sums = self.acc.get("sums_along")
        if sums is not None and sums.motor == motor and self.shape is not None:
            values, images = weak_beam.zsum_of_accumulator(sums, self.shape)
        elif self.frames is not None and self.positions is not None and motor in self.positions:
            values, images = self._zsum_from_frames(motor)
        else:
            self.skip("zsum", f"needs the frames and positions of {motor!r}, or sums_along of it")
            return
        self.groups["/entry/zsum"] = {"zsum": images, motor: values, "@signal": "zsum",
                                      "@axes": [motor, ".", "."]}

    def _zsum_from_frames(self, motor: str) -> tuple[np.ndarray, np.ndarray]:
        values = np.asarray(self.positions[motor], dtype=np.float64)
        acc = None
        for indices, frames in self.frames():
            frames = np.asarray(frames)
            if acc is None:
                acc = SumsAlongMotor(frames.shape[1] * frames.shape[2], motor, normalise=False)
                shape = frames.shape[1:]
            acc.update(frames, {motor: values[np.asarray(indices)]})
        if acc is None:
            raise ValueError("no frames")
        return weak_beam.zsum_of_accumulator(acc, shape)

    def rsm(self) -> None:
        opt = self.opt
        if opt.rsm_q is None or opt.rsm_a is None:
            return
        if len(self.names) != 1:
            self.skip("rsm", "the RSM histogram is for a 1-D scan")
            return
        if self.frames is None or self.positions is None or opt.rsm_motor not in self.positions:
            self.skip("rsm", f"needs the frames and the positions of {opt.rsm_motor!r}")
            return
        ffz, mainx = _positioner(self.positioners, "ffz"), _positioner(self.positioners, "mainx")
        if ffz is None or mainx is None:
            self.skip("rsm", "positioners ffz and mainx are needed")
            return
        pixel = (sample_axes.optical_pixel_size(opt.rsm_pixel) * 1e-3)  # µm -> mm, as ffz/mainx
        energy = opt.rsm_energy or _positioner(self.positioners, "energy") or 17.0
        values = np.asarray(self.positions[opt.rsm_motor], dtype=np.float64)
        first = next(iter(self.frames()))[1]
        eta, tth = rsm.pixel_angles(np.shape(first)[1:], pixel, ffz, mainx)
        batches = ((values[np.asarray(i)], f) for i, f in self.frames())
        out = rsm.rsm_histogram(batches, float(values.mean()), tth, eta, opt.rsm_q, opt.rsm_a,
                                opt.rsm_range, opt.rsm_units, opt.rsm_shape, opt.rsm_normal, energy)
        qx, qy, qz = out.centres
        self.groups["/entry/rsm"] = {"rsm": out.intensity, "counts": out.counts, "q_x": qx,
                                     "q_y": qy, "q_z": qz, "@signal": "rsm",
                                     "@axes": ["q_x", "q_y", "q_z"]}
        self.process.update(rsm_units=opt.rsm_units, rsm_energy_kev=energy)

    # ---------------------------------------------------------------------------------

    def _dense_matrix(self) -> tuple[bss.DataMatrix, tuple[int, int]] | None:
        """The exact (binned) frame matrix, None when it exceeds `bss_max_dense_mb`."""
        b, rows, shape = self.opt.bss_binning, None, None
        for indices, frames in self.frames():
            binned = bin_frames(np.asarray(frames), b)
            if rows is None:
                shape = binned.shape[1:]
                size_mb = self.n_frames * shape[0] * shape[1] * 8 / 1e6
                if size_mb > self.opt.bss_max_dense_mb:
                    log.info("BSS: the frame matrix (%.0f MB) exceeds bss_max_dense_mb", size_mb)
                    return None
                rows = np.zeros((self.n_frames, shape[0] * shape[1]))
            rows[np.asarray(indices)] = binned.reshape(len(binned), -1)
        return (None if rows is None else (bss.DataMatrix.dense(rows), shape))

    def _bss_matrix(self) -> tuple[bss.DataMatrix | None, str, tuple[int, int] | None]:
        if self.frames is not None and self.n_frames:
            dense = self._dense_matrix()
            if dense is not None:
                return dense[0], "frames", dense[1]
        nmf_acc = self.acc.get("nmf")
        if isinstance(nmf_acc, ChunkedNMF) and nmf_acc.update_components:
            sketch = {key[7:]: v for key, v in nmf_acc.state().items() if key.startswith("sketch.")}
            snap = OnlinePCA.from_state(sketch).snapshot() if sketch else None
            if snap is not None:
                return (bss.DataMatrix.from_sketch(snap["mean"], snap["weights"], snap["components"]),
                        "online nmf sketch", nmf_acc.shape)
        pca_acc = self.acc.get("pca")
        if isinstance(pca_acc, OnlinePCA) and pca_acc.fitted:
            snap = pca_acc.snapshot()
            return (bss.DataMatrix.from_sketch(snap["mean"], snap["weights"], snap["components"]),
                    "online pca", pca_acc.shape)
        return None, "", None

    def blind_source_separation(self) -> None:
        if not self.opt.bss:
            return
        k = self.opt.bss_components
        for name in ("nmf", "pca"):
            if k is None and name in self.acc:
                k = self.acc[name].n_components
        k = 3 if k is None else int(k)
        matrix, source, shape = self._bss_matrix()
        if matrix is None:
            self.skip("bss", "needs the frames or the pca / nmf accumulators")
            return
        n = matrix.shape[0]

        def images(h: np.ndarray) -> np.ndarray:
            return h.reshape(h.shape[0], *shape) if shape is not None else h

        def factor_group(f: bss.Factorisation) -> Group:
            return {"components": images(f.components), "weights": f.weights,
                    "relative_error": f.relative_error, "iterations": f.iterations,
                    "@signal": "components"}

        pca_acc = self.acc.get("pca")
        if source == "frames" or not isinstance(pca_acc, OnlinePCA) or not pca_acc.fitted:
            spec = bss.pca(matrix, k)
            ratio, comps, scores = spec.explained_variance_ratio, spec.components, spec.scores
        else:  # the online PCA's spectrum: its denominator is the exact total variance
            snap = pca_acc.snapshot()
            ratio, comps, scores = snap["explained_variance_ratio"], snap["components"], snap["weights"]
        self.groups["/entry/bss/pca"] = {
            "explained_variance_ratio": ratio, "component": np.arange(ratio.size),
            "components": images(np.asarray(comps)), "weights": scores,
            "@signal": "explained_variance_ratio", "@axes": ["component"]}
        k = min(k, n)
        nmf_acc = self.acc.get("nmf")
        if (source != "frames" and isinstance(nmf_acc, ChunkedNMF) and nmf_acc.n_components == k
                and nmf_acc.snapshot() is not None):
            snap = nmf_acc.snapshot()
            self.groups["/entry/bss/nmf"] = {
                "components": images(snap["components"]), "weights": snap["weights"],
                "relative_error": snap["relative_error"], "@signal": "components"}
        else:
            self.groups["/entry/bss/nmf"] = factor_group(bss.nmf(matrix, k, max_iter=self.opt.bss_max_iter))
        first, second = bss.nica_nmf(matrix, k, max_iter=self.opt.bss_max_iter,
                                     nica_iter=self.opt.bss_max_iter)
        self.groups["/entry/bss/nica"] = factor_group(first)
        self.groups["/entry/bss/nica_nmf"] = factor_group(second)
        self.process.update(bss_components=k, bss_source=source)


def scan_end_groups(
    maps: Mapping[str, np.ndarray],
    motors: Sequence[MotorAxis],
    *,
    positions: Mapping[str, np.ndarray] | None = None,
    positioners: Mapping[str, Any] | None = None,
    accumulators: Mapping[str, Any] | None = None,
    frame_batches: Batches | None = None,
    n_frames: int | None = None,
    options: ScanEndOptions | None = None,
    only: Collection[str] | None = None,
) -> tuple[dict[str, Group], dict[str, Any]]:
    """Every scan-end analysis that its inputs allow: (groups, process fields); see the
    module docstring for the arguments, the group layout and what runs.

    `only` runs a subset (names of ANALYSES), as the ewoks graphs' stages do, each in its
    own task; the sample axes are always worked out (every group's axes need them)."""
    unknown = sorted(set(only or ()) - set(ANALYSES))
    if unknown:
        raise ValueError(f"unknown scan-end analysis {', '.join(unknown)} (known: {', '.join(ANALYSES)})")
    run = _Run(maps, motors, positions, positioners, accumulators, frame_batches, n_frames,
               options or ScanEndOptions())
    steps = {
        "sample axes": run.pixel_size, "gradient correction": run.gradient, "drift": run.drift,
        "mask": run.grain_mask, "domains": run.domains, "orientation distribution": run.distribution,
        "strain": run.strain, "weak beam": run.weak_beam, "zsum": run.zsum, "rsm": run.rsm,
        "bss": run.blind_source_separation,
    }
    for name in ANALYSES:
        if only is None or name in only or name == "sample axes":
            run.run(name, steps[name])
    if only is not None and "sample axes" not in only:
        run.groups.pop("/entry/sample_axes", None)
        run.skipped = [s for s in run.skipped if not s.startswith("sample axes:")]
    run.process["scan_end_skipped"] = "\n".join(run.skipped)
    return run.groups, run.process


#: the scan-end analyses in the order they run (a mask before the domains inside it)
ANALYSES = ("sample axes", "gradient correction", "drift", "mask", "domains", "orientation distribution",
            "strain", "weak beam", "zsum", "rsm", "bss")
