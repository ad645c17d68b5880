"""Maps -> one NeXus HDF5 file per scan, replaced atomically.

Layout (a contract: viewers and users rely on it):

    /entry                         NXentry, @default -> maps/<most useful map>
    /entry/maps/<map>              NXdata, @signal = "<map>", dataset <map>, @title, @axes
                                   and the axes datasets (see "Self-describing" below)
    /entry/process                 NXprocess: program, version, config (JSON), state, reason,
                                   frames_processed, frames_expected, scan_key, updated
                                   (+ ProcessInfo.extra fields, e.g. the fits' settings)

and, for the scan-end analyses, further collections of maps laid out like /entry/maps
(`groups` of `write_maps_file`): /entry/fit/<map> (the per-pixel fits), /entry/strain/<map>,
/entry/bss/<map>, ... each <map> an NXdata whose signal is named like the group.

Self-describing: every NXdata the file holds (the maps, the fits, the scan-end groups) has
a `title` attribute, and its signal `long_name` and `units` (publish/describe.py: deg for
angles, COM and FWHM, counts for intensities, dimensionless for skewness, kurtosis and
ratios). Images have axes datasets `y` (rows) and `x` (columns) named in `@axes`: the
frame's pixel index of each map pixel's centre (a live map binned b x b: b i + (b - 1)/2,
so binned and final maps share coordinates), or the sample position in µm when the scan-end
analyses know the pixel size (/entry/sample_axes). An axis made once is hard-linked into
every group that has it (one copy in the file). The mosaicity map is an RGB image
(`@interpretation = "rgba-image"`) and its key an RGB image whose axes are the two motors
(deg). /entry/@default names the most useful plot (the caller's `default`, else intensity).

The file is written to a hidden temporary file in the same folder and renamed over the old
one (fsync'ed first when it must be durable), so a reader (silx, h5py) opening the path always sees a complete file: either the
previous version or the new one, never a torn one. On any error the temporary file is
removed and the previous file stays in place.
"""

from __future__ import annotations

import datetime
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from ewoksdata.data.nexus import select_default_plot

from .. import __version__
from .describe import (
    COLUMN_AXIS,
    DIMENSIONLESS,
    ROW_AXIS,
    Description,
    describe,
    label,
    motor_unit,
    pixel_axes_descriptions,
    pixel_axis,
)
from .disk_sink import DiskSink, check_free_space, data_bytes

STATES = ("running", "complete", "aborted", "failed")


@dataclass
class ProcessInfo:
    """What /entry/process says about the analysis of one scan."""

    state: str = "running"
    reason: str = ""
    frames_processed: int = 0
    frames_expected: int = 0
    scan_key: str = ""
    config: str = "{}"
    extra: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"state {self.state!r} is not one of {STATES}")


AxesSpec = Mapping[str, Sequence[tuple[str, np.ndarray]]]


def file_dtype(dtype: np.dtype) -> np.dtype:
    """The type a map of `dtype` is stored as: floating maps as float32 (what a viewer
    needs; half the bytes of the float64 the accumulators compute in), others as they are."""
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype.kind == "f" else dtype


def file_array(values: np.ndarray) -> np.ndarray:
    """A map as the file stores it (`file_dtype`), C-contiguous."""
    arr = np.asarray(values)
    return np.ascontiguousarray(arr, dtype=file_dtype(arr.dtype))


def process_fields(info: ProcessInfo) -> dict[str, object]:
    """The datasets of /entry/process, in file order."""
    fields_ = {
        "program": "dfxm-online",
        "version": __version__,
        "config": info.config,
        "state": info.state,
        "reason": info.reason,
        "frames_processed": int(info.frames_processed),
        "frames_expected": int(info.frames_expected),
        "scan_key": info.scan_key,
        "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }
    fields_.update(info.extra)
    return fields_


#: maps that are per-frame curves (frames, components), not images
_TABLES = ("pca_weights", "nmf_weights")
#: units of the axes the scan-end groups name, other than motors
_AXIS_UNITS = {"component": DIMENSIONLESS, "frames": DIMENSIONLESS, "q_x": "r.l.u.", "q_y": "r.l.u.",
               "q_z": "r.l.u.", ROW_AXIS: "pixel", COLUMN_AXIS: "pixel"}


class _Describer:
    """What makes one file's NXdata self-describing: the scan's motors, the maps' binning
    and the intensity map's shape (pixel axes in frame pixels), the sample axes when known
    (µm), and the axes datasets already written (hard-linked, not written again)."""

    def __init__(self, motors: Sequence[str], binning: int, reference: tuple[int, ...] | None,
                 sample: tuple[np.ndarray, np.ndarray] | None) -> None:
        self.motors = tuple(motors)
        self.binning = max(1, int(binning))
        self.reference = reference
        self.sample = sample
        self._made: dict[tuple, h5py.Dataset] = {}

    def annotate(self, dset: h5py.Dataset, description: Description, units: str | None = None) -> str:
        """`long_name` and `units` of a dataset (`units` given wins over the table's); the
        long name is the label a viewer shows (silx shows it instead of the dataset's name,
        without the units): "centre of mass along mu (deg)". Returns it."""
        unit = description.units if units is None else units
        dset.attrs["long_name"] = text = label(description.long_name, unit)
        dset.attrs["units"] = unit
        return text

    def signal(self, group: h5py.Group, dset: h5py.Dataset, name: str, units: str | None = None) -> None:
        """The signal's long_name and units, and the group's title (`name`: "com_mu",
        "fit/peak_mu", "bss/nmf")."""
        description = describe(name, self.motors)
        if name.startswith("fit/") and "fit" not in description.long_name:
            description = Description(f"fitted {description.long_name}", description.units)
        text = self.annotate(dset, description, units)
        group.attrs["title"] = (name.rsplit("/", 1)[0] + ": " if "/" in name else "") + text

    def axis(self, group: h5py.Group, name: str, values: np.ndarray) -> None:
        """A named axis dataset in `group`, described (`describe_axis`)."""
        if name not in group:
            self.describe_axis(group.create_dataset(name, data=np.asarray(values)))

    def describe_axis(self, dset: h5py.Dataset) -> None:
        """An axis dataset's long_name and units, unless it has units (or is text): a
        motor's unit for a motor's values, the table's for the others."""
        if "units" in dset.attrs or dset.dtype.kind in "OSU":
            return
        name = dset.name.rsplit("/", 1)[-1]
        unit = _AXIS_UNITS.get(name) or (motor_unit(name) if name in self.motors else describe(name).units)
        self.annotate(dset, Description(name, unit))

    def image_axes(self, group: h5py.Group, shape: tuple[int, int]) -> list[str]:
        """`y` and `x` of an image of `shape` in `group`: sample µm when known and of this
        shape, else the frame pixel index of each map pixel's centre."""
        sample = self.sample is not None and tuple(shape) == (len(self.sample[0]), len(self.sample[1]))
        descriptions = pixel_axes_descriptions(sample)
        for i, (axis_name, description) in enumerate(zip((ROW_AXIS, COLUMN_AXIS), descriptions)):
            if axis_name in group:
                continue
            if sample:
                key, values = (axis_name, "um"), self.sample[i]
            else:
                ref = self.reference[i] if self.reference is not None else shape[i]
                block = self.binning * ref / shape[i]
                key, values = (axis_name, shape[i], block), None
            made = self._made.get(key)
            if made is not None and made.shape == (shape[i],):
                group[axis_name] = made  # a hard link: one copy in the file
                continue
            dset = group.create_dataset(axis_name, data=values if values is not None else pixel_axis(shape[i], block))
            self.annotate(dset, description)
            self._made[key] = dset
        return [ROW_AXIS, COLUMN_AXIS]


def _is_rgb(arr: np.ndarray, given_axes: int) -> bool:
    return arr.ndim == 3 and arr.shape[-1] in (3, 4) and given_axes != 1


def _write_collection(parent: h5py.Group, name: str, maps: Mapping[str, np.ndarray], axes: AxesSpec,
                      describer: _Describer) -> h5py.Group:
    """`parent/name` (NXcollection) with one NXdata per map: the dataset named like its group
    (the signal) with its long_name and units, image / rgba-image interpretation, and the
    map's axes: those given, then the pixel (or sample) axes of its images."""
    group = parent.create_group(name)
    group.attrs["NX_class"] = "NXcollection"
    for map_name, values in maps.items():
        nxdata = group.create_group(map_name)
        nxdata.attrs["NX_class"] = "NXdata"
        nxdata.attrs["signal"] = map_name
        arr = file_array(values)
        dset = nxdata.create_dataset(map_name, data=arr)
        describer.signal(nxdata, dset, map_name if name == "maps" else f"{name}/{map_name}")
        names = []
        for axis_name, axis_values in axes.get(map_name, ()):
            describer.axis(nxdata, axis_name, axis_values)
            names.append(axis_name)
        if map_name in _TABLES and arr.ndim == 2:
            describer.axis(nxdata, "frames", np.arange(arr.shape[0]))
            describer.axis(nxdata, "component", np.arange(arr.shape[1]))
            names = ["frames", "component"]
        elif _is_rgb(arr, len(names)):
            dset.attrs["interpretation"] = "rgba-image"
            if not names:
                names = describer.image_axes(nxdata, arr.shape[:2])
        elif arr.ndim >= 2:
            dset.attrs["interpretation"] = "image"
            if len(names) == arr.ndim - 2:
                names += describer.image_axes(nxdata, arr.shape[-2:])
        if names:
            nxdata.attrs["axes"] = names
    return group


GroupsSpec = Mapping[str, Mapping[str, np.ndarray]]


def _write_nxdata(f: h5py.File, where: str, content: Mapping[str, object], describer: _Describer) -> None:
    """One NXdata at the absolute path `where` (parents made as NXcollection): its entries
    in order, the first (or "@signal") the signal; "@axes" its axes' names ("." for a
    dimension without one), "@units" {dataset: unit} (the scan-end analyses' groups,
    analysis/scan_end.py). What the content does not say is added: the signal's long_name
    and units, the title, the units of the named axes, and the pixel (or sample) axes of an
    image signal whose last two dimensions have none."""
    parent = f
    parts = [p for p in where.strip("/").split("/") if p]
    for part in parts[:-1]:
        if part not in parent:
            parent.create_group(part).attrs["NX_class"] = "NXcollection"
        parent = parent[part]
    group = parent.create_group(parts[-1])
    group.attrs["NX_class"] = "NXdata"
    data = {k: v for k, v in content.items() if not k.startswith("@")}
    signal = str(content.get("@signal") or next(iter(data)))
    group.attrs["signal"] = signal
    units = {str(k): str(v) for k, v in dict(content.get("@units") or {}).items()}
    for name, values in data.items():
        arr = np.asarray(values)
        if arr.dtype.kind == "U":
            group[name] = str(values) if arr.ndim == 0 else np.array(arr, dtype=h5py.string_dtype())
            continue
        dset = group.create_dataset(name, data=file_array(arr) if arr.dtype.kind == "f" else arr)
        if name == signal and arr.ndim == 2:
            dset.attrs["interpretation"] = "image"
        elif name == signal and arr.ndim == 3 and arr.shape[-1] in (3, 4):
            dset.attrs["interpretation"] = "rgba-image"
        elif name == signal and arr.ndim == 3 and "@axes" not in content:  # a stack of images (components)
            dset.attrs["interpretation"] = "image"
    for name, unit in units.items():
        if name in group:
            group[name].attrs["units"] = unit
    relative = "/".join(parts[1:]) if parts and parts[0] == "entry" else "/".join(parts)
    sig = group[signal]
    describer.signal(group, sig, relative if signal == parts[-1] else f"{relative}/{signal}", units.get(signal))
    axes = [str(a) for a in content["@axes"]] if "@axes" in content else None
    if sig.ndim >= 2 and sig.dtype.kind not in "OSU":
        rgb = sig.attrs.get("interpretation") == "rgba-image"
        image_dims = slice(0, 2) if rgb else slice(sig.ndim - 2, sig.ndim)
        if axes is None:
            axes = ["."] * (2 if rgb else sig.ndim)
        if axes[image_dims] == [".", "."]:
            axes[image_dims] = describer.image_axes(group, sig.shape[image_dims])
    if axes is not None:
        group.attrs["axes"] = axes
        for name in axes:
            if name != "." and isinstance(group.get(name), h5py.Dataset):
                describer.describe_axis(group[name])


def _motors(info: ProcessInfo, maps: Mapping[str, np.ndarray]) -> list[str]:
    """The scan's motors: /entry/process/motors ("mu, chi") when the caller gave it, else
    read off the COM maps' names."""
    given = str(info.extra.get("motors") or "")
    if given:
        return [m.strip() for m in given.split(",") if m.strip()]
    return [name[4:] for name in maps if name.startswith("com_")]


def _sample_axes(nxdata: Mapping[str, Mapping[str, object]]) -> tuple[np.ndarray, np.ndarray] | None:
    """The sample axes (µm) the scan-end analyses found, if any (/entry/sample_axes)."""
    group = nxdata.get("/entry/sample_axes")
    if not group or ROW_AXIS not in group or COLUMN_AXIS not in group:
        return None
    return np.asarray(group[ROW_AXIS], dtype=np.float64), np.asarray(group[COLUMN_AXIS], dtype=np.float64)


def _write(path: Path, maps: Mapping[str, np.ndarray], info: ProcessInfo, default: str | None,
           title: str, axes: AxesSpec, groups: GroupsSpec | None = None,
           group_axes: Mapping[str, AxesSpec] | None = None,
           nxdata: Mapping[str, Mapping[str, object]] | None = None) -> None:
    groups, group_axes, nxdata = groups or {}, group_axes or {}, nxdata or {}
    intensity = maps.get("intensity")
    describer = _Describer(_motors(info, maps), int(info.extra.get("map_binning") or 1),
                           None if intensity is None else np.shape(intensity), _sample_axes(nxdata))
    with h5py.File(path, "w") as f:
        f.attrs["creator"] = "dfxm-online"
        f.attrs["NX_class"] = "NXroot"
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        if title:
            entry["title"] = title
        group = _write_collection(entry, "maps", maps, axes, describer)
        default = default if default and default in group else ("intensity" if "intensity" in group else None)
        if default:
            select_default_plot(group[default])
        for name, group_maps in groups.items():
            if name in ("maps", "process", "title"):
                raise ValueError(f"group name {name!r} is taken by the maps file's own layout")
            _write_collection(entry, name, group_maps, group_axes.get(name, {}), describer)
        for where, content in nxdata.items():
            _write_nxdata(f, where, content, describer)
        process = entry.create_group("process")
        process.attrs["NX_class"] = "NXprocess"
        for key, value in process_fields(info).items():
            process[key] = value


def write_maps_file(
    path: str | Path,
    maps: Mapping[str, np.ndarray],
    info: ProcessInfo,
    default: str | None = None,
    title: str = "",
    axes: AxesSpec | None = None,
    durable: bool = True,
    groups: GroupsSpec | None = None,
    group_axes: Mapping[str, AxesSpec] | None = None,
    nxdata: Mapping[str, Mapping[str, object]] | None = None,
) -> Path:
    """Write the maps file atomically (temporary file + rename); return its path.

    `groups`: further collections beside /entry/maps, {"fit": {"amplitude": ..., ...}} ->
    /entry/fit/amplitude/amplitude (NXdata, as the maps), with `group_axes` per group
    ({"fit": {map: [(axis name, values), ...]}}). A name may hold a slash ("bss/nmf").
    `nxdata`: single NXdata groups by absolute path ({"/entry/drift": {...}}), as the
    scan-end analyses give them (`_write_nxdata`).

    The rename alone is what keeps readers from ever seeing a torn file. `durable` also
    fsyncs the file before the rename, so that the version on disk survives a power cut;
    the daemon asks for it for a scan's final file, not for the live rewrites that the
    next one replaces within a publish period (an fsync of a 2048^2 maps file costs
    ~0.05-0.15 s here).
    """
    arrays = [*maps.values(), *(v for g in (groups or {}).values() for v in g.values()),
              *(v for c in (nxdata or {}).values() for k, v in c.items() if not k.startswith("@"))]
    return replace_atomically(path, data_bytes(arrays), lambda sink: _write(
        sink, maps, info, default, title, axes or {}, groups or {}, group_axes or {}, nxdata or {}), durable)


def replace_atomically(path: str | Path, nbytes: int, fill: Callable[[DiskSink], None], durable: bool) -> Path:
    """A new file at `path`: `fill` writes it (at most ~`nbytes`) through a DiskSink on a
    hidden temporary file in the same folder, which is then renamed over `path` (fsync'ed
    first if `durable`). On any error the temporary file is removed and `path` stays as it
    was. A full disk is a clean OSError, before any work when the folder has clearly no
    room, or from the sink; libhdf5 never sees a failed write, which it does not survive
    (publish/disk_sink.py)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    check_free_space(path.parent, nbytes)
    try:
        sink = DiskSink(tmp)
        try:
            fill(sink)
            sink.check()
            if durable:
                sink.fsync()
        finally:
            sink.close()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_maps_file(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """Maps and process fields of a maps file (for tests, the viewer and tools)."""
    maps: dict[str, np.ndarray] = {}
    process: dict[str, object] = {}
    with h5py.File(path, "r") as f:
        for name, group in f["entry/maps"].items():
            maps[name] = group[name][()]
        for name, dset in f["entry/process"].items():
            if isinstance(dset, h5py.Group):  # a record such as /entry/process/post_scan
                continue
            value = dset[()]
            process[name] = value.decode() if isinstance(value, bytes) else value
    return maps, process


def read_group(path: str | Path, name: str) -> dict[str, np.ndarray]:
    """The maps of one collection of a maps file (`read_group(path, "fit")`: /entry/fit)."""
    with h5py.File(path, "r") as f:
        return {map_name: nxdata[map_name][()] for map_name, nxdata in f[f"entry/{name}"].items()}
