"""Maps -> one NeXus HDF5 file per scan, replaced atomically.

Layout (a contract: viewers and users rely on it):

    /entry                         NXentry, @default -> maps/<most useful map>
    /entry/maps/<map>              NXdata, @signal = "<map>", dataset <map>
    /entry/process                 NXprocess: program, version, config (JSON), state, reason,
                                   frames_processed, frames_expected, scan_key, updated

The file is written to a hidden temporary file in the same folder and renamed over the old
one (fsync'ed first when it must be durable), so a reader (silx, h5py) opening the path always sees a complete file: either the
previous version or the new one, never a torn one. On any error the temporary file is
removed and the previous file stays in place.
"""

from __future__ import annotations

import datetime
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from ewoksdata.data.nexus import select_default_plot

from .. import __version__

STATES = ("running", "complete", "aborted", "failed")


def sanitise(name: str) -> str:
    """A file-name-safe version of a session or scan name."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._")
    return cleaned or "unnamed"


def maps_path(output_dir: str | Path, session: str, scan_name: str, scan_number: int) -> Path:
    """`<output-dir>/<session>/<scan name>_<scan number>.h5`, names sanitised."""
    return Path(output_dir) / sanitise(session) / f"{sanitise(scan_name)}_{int(scan_number)}.h5"


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


def _write(path: Path, maps: Mapping[str, np.ndarray], info: ProcessInfo, default: str | None,
           title: str, axes: AxesSpec) -> None:
    with h5py.File(path, "w") as f:
        f.attrs["creator"] = "dfxm-online"
        f.attrs["NX_class"] = "NXroot"
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        if title:
            entry["title"] = title
        group = entry.create_group("maps")
        group.attrs["NX_class"] = "NXcollection"
        for name, values in maps.items():
            nxdata = group.create_group(name)
            nxdata.attrs["NX_class"] = "NXdata"
            nxdata.attrs["signal"] = name
            arr = np.asarray(values)
            if arr.dtype.kind == "f":
                arr = arr.astype(np.float32)
            dset = nxdata.create_dataset(name, data=arr)
            if arr.ndim == 2:
                dset.attrs["interpretation"] = "image"
            elif arr.ndim == 3 and arr.shape[-1] in (3, 4):
                dset.attrs["interpretation"] = "rgba-image"
            if name in axes:
                names = []
                for axis_name, values in axes[name]:
                    nxdata.create_dataset(axis_name, data=np.asarray(values))
                    names.append(axis_name)
                nxdata.attrs["axes"] = names
        if default and default in group:
            select_default_plot(group[default])
        process = entry.create_group("process")
        process.attrs["NX_class"] = "NXprocess"
        process["program"] = "dfxm-online"
        process["version"] = __version__
        process["config"] = info.config
        process["state"] = info.state
        process["reason"] = info.reason
        process["frames_processed"] = int(info.frames_processed)
        process["frames_expected"] = int(info.frames_expected)
        process["scan_key"] = info.scan_key
        process["updated"] = datetime.datetime.now(datetime.timezone.utc).isoformat()
        for key, value in info.extra.items():
            process[key] = value


def write_maps_file(
    path: str | Path,
    maps: Mapping[str, np.ndarray],
    info: ProcessInfo,
    default: str | None = None,
    title: str = "",
    axes: AxesSpec | None = None,
    durable: bool = True,
) -> Path:
    """Write the maps file atomically (temporary file + rename); return its path.

    The rename alone is what keeps readers from ever seeing a torn file. `durable` also
    fsyncs the file before the rename, so that the version on disk survives a power cut;
    the daemon asks for it for a scan's final file, not for the live rewrites that the
    next one replaces within a publish period (an fsync of a 2048^2 maps file costs
    ~0.05-0.15 s here).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        _write(tmp, maps, info, default, title, axes or {})
        if durable:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
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
