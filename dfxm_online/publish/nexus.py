"""Maps -> one NeXus HDF5 file per scan, replaced atomically.

Layout (a contract: viewers and users rely on it):

    /entry                         NXentry, @default -> maps/<most useful map>
    /entry/maps/<map>              NXdata, @signal = "<map>", dataset <map>
    /entry/process                 NXprocess: program, version, config (JSON), state, reason,
                                   frames_processed, frames_expected, scan_key, updated
                                   (+ ProcessInfo.extra fields, e.g. the fits' settings)

and, for the scan-end analyses, further collections of maps laid out like /entry/maps
(`groups` of `write_maps_file`): /entry/fit/<map> (the per-pixel fits), /entry/strain/<map>,
/entry/bss/<map>, ... each <map> an NXdata whose signal is named like the group.

The file is written to a hidden temporary file in the same folder and renamed over the old
one (fsync'ed first when it must be durable), so a reader (silx, h5py) opening the path always sees a complete file: either the
previous version or the new one, never a torn one. On any error the temporary file is
removed and the previous file stays in place.
"""

from __future__ import annotations

import datetime
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from ewoksdata.data.nexus import select_default_plot

from .. import __version__
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


def _write_collection(parent: h5py.Group, name: str, maps: Mapping[str, np.ndarray], axes: AxesSpec) -> h5py.Group:
    """`parent/name` (NXcollection) with one NXdata per map: the dataset named like its group
    (the signal), image / rgba-image interpretation, and the map's axes when given."""
    group = parent.create_group(name)
    group.attrs["NX_class"] = "NXcollection"
    for map_name, values in maps.items():
        nxdata = group.create_group(map_name)
        nxdata.attrs["NX_class"] = "NXdata"
        nxdata.attrs["signal"] = map_name
        arr = file_array(values)
        dset = nxdata.create_dataset(map_name, data=arr)
        if arr.ndim == 2:
            dset.attrs["interpretation"] = "image"
        elif arr.ndim == 3 and arr.shape[-1] in (3, 4):
            dset.attrs["interpretation"] = "rgba-image"
        if map_name in axes:
            names = []
            for axis_name, axis_values in axes[map_name]:
                nxdata.create_dataset(axis_name, data=np.asarray(axis_values))
                names.append(axis_name)
            nxdata.attrs["axes"] = names
    return group


GroupsSpec = Mapping[str, Mapping[str, np.ndarray]]


def _write_nxdata(f: h5py.File, where: str, content: Mapping[str, object]) -> None:
    """One NXdata at the absolute path `where` (parents made as NXcollection): its entries
    in order, the first (or "@signal") the signal; "@axes" its axes' names ("." for a
    dimension without one), "@units" {dataset: unit} (the scan-end analyses' groups,
    analysis/scan_end.py)."""
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
    if "@axes" in content:
        group.attrs["axes"] = [str(a) for a in content["@axes"]]
    for name, unit in dict(content.get("@units") or {}).items():
        if name in group:
            group[name].attrs["units"] = str(unit)


def _write(path: Path, maps: Mapping[str, np.ndarray], info: ProcessInfo, default: str | None,
           title: str, axes: AxesSpec, groups: GroupsSpec | None = None,
           group_axes: Mapping[str, AxesSpec] | None = None,
           nxdata: Mapping[str, Mapping[str, object]] | None = None) -> None:
    groups, group_axes = groups or {}, group_axes or {}
    with h5py.File(path, "w") as f:
        f.attrs["creator"] = "dfxm-online"
        f.attrs["NX_class"] = "NXroot"
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        if title:
            entry["title"] = title
        group = _write_collection(entry, "maps", maps, axes)
        if default and default in group:
            select_default_plot(group[default])
        for name, group_maps in groups.items():
            if name in ("maps", "process", "title"):
                raise ValueError(f"group name {name!r} is taken by the maps file's own layout")
            _write_collection(entry, name, group_maps, group_axes.get(name, {}))
        for where, content in (nxdata or {}).items():
            _write_nxdata(f, where, content)
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    # a full disk is a clean OSError, before HDF5 works or while it writes; libhdf5 itself
    # never sees a failed write, which it does not survive (publish/disk_sink.py)
    arrays = [*maps.values(), *(v for g in (groups or {}).values() for v in g.values()),
              *(v for c in (nxdata or {}).values() for k, v in c.items() if not k.startswith("@"))]
    check_free_space(path.parent, data_bytes(arrays))
    try:
        sink = DiskSink(tmp)
        try:
            _write(sink, maps, info, default, title, axes or {}, groups or {}, group_axes or {}, nxdata or {})
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
            value = dset[()]
            process[name] = value.decode() if isinstance(value, bytes) else value
    return maps, process


def read_group(path: str | Path, name: str) -> dict[str, np.ndarray]:
    """The maps of one collection of a maps file (`read_group(path, "fit")`: /entry/fit)."""
    with h5py.File(path, "r") as f:
        return {map_name: nxdata[map_name][()] for map_name, nxdata in f[f"entry/{name}"].items()}
