"""What one stage of a scan-end workflow hands to the next: a *part* file on disk.

ewoks tasks may run in other processes or on other hosts (ewoksjob workers), so they pass
file paths, never big arrays. A part holds maps (float64, exactly as computed: the fits
start from them), their axes, map collections (the fits), NXdata groups of the scan-end
analyses and /entry/process fields. The last stage assembles the parts into the maps file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..publish.atomic import atomic_h5

PART_FORMAT = "dfxm-online workflow part"


@dataclass
class Part:
    """One stage's results (any field may be empty)."""

    maps: dict[str, np.ndarray] = field(default_factory=dict)
    #: map name -> [(axis name, values)] (`online.maps.Maps.axes`)
    axes: dict[str, list[tuple[str, np.ndarray]]] = field(default_factory=dict)
    #: further map collections beside /entry/maps ({"fit": {...}})
    groups: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    #: single NXdata groups by absolute path, as the scan-end analyses give them
    nxdata: dict[str, dict[str, object]] = field(default_factory=dict)
    #: /entry/process fields (numbers and text)
    process: dict[str, object] = field(default_factory=dict)

    def update(self, other: Part) -> None:
        """Add `other`'s results (a later stage's win on a name both give)."""
        self.maps.update(other.maps)
        self.axes.update(other.axes)
        for name, maps in other.groups.items():
            self.groups.setdefault(name, {}).update(maps)
        self.nxdata.update(other.nxdata)
        self.process.update(other.process)


def _arrays(group: h5py.Group) -> dict[str, np.ndarray]:
    return {name: group[name][()] for name in group}


def _plain(value: object) -> object:
    """numpy values of /entry/process fields as JSON (arrays as lists: the same dataset)."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def write_part(path: str | Path, part: Part) -> Path:
    """`part` to `path`, atomically (a retried stage never leaves half a part)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_h5(path) as f:
        f.attrs["format"] = PART_FORMAT
        f.attrs["process"] = json.dumps(part.process, default=_plain)
        maps = f.create_group("maps")
        for name, values in part.maps.items():
            maps.create_dataset(name, data=np.asarray(values))
        axes = f.create_group("axes")
        for name, spec in part.axes.items():
            group = axes.create_group(name)
            group.attrs["names"] = json.dumps([axis for axis, _ in spec])
            for i, (_, values) in enumerate(spec):
                group.create_dataset(str(i), data=np.asarray(values))
        groups = f.create_group("groups")
        for name, maps_ in part.groups.items():
            group = groups.create_group(name)
            for key, values in maps_.items():
                group.create_dataset(key, data=np.asarray(values))
        nxdata = f.create_group("nxdata")
        for i, (where, content) in enumerate(part.nxdata.items()):
            group = nxdata.create_group(str(i))
            group.attrs["where"] = where
            group.attrs["order"] = json.dumps([k for k in content if not k.startswith("@")])
            group.attrs["meta"] = json.dumps({k: v for k, v in content.items() if k.startswith("@")})
            for key, values in content.items():
                if key.startswith("@"):
                    continue
                arr = np.asarray(values)
                group.create_dataset(key, data=np.array(arr, dtype=h5py.string_dtype()) if arr.dtype.kind == "U" else arr)
    return path


def _text_or_array(value: np.ndarray | bytes) -> object:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray) and value.dtype.kind == "O":
        return np.array([v.decode() if isinstance(v, bytes) else v for v in value.ravel()]).reshape(value.shape)
    return value


def read_part(path: str | Path) -> Part:
    """The part written by `write_part`; ValueError if `path` is not one."""
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != PART_FORMAT:
            raise ValueError(f"{path} is not a dfxm-online workflow part")
        part = Part(process=json.loads(f.attrs["process"]))
        part.maps = _arrays(f["maps"])
        for name, group in f["axes"].items():
            names = json.loads(group.attrs["names"])
            part.axes[name] = [(axis, group[str(i)][()]) for i, axis in enumerate(names)]
        part.groups = {name: _arrays(group) for name, group in f["groups"].items()}
        for i in sorted(f["nxdata"], key=int):
            group = f["nxdata"][i]
            content: dict[str, object] = {k: _text_or_array(group[k][()]) for k in json.loads(group.attrs["order"])}
            content.update(json.loads(group.attrs["meta"]))
            part.nxdata[group.attrs["where"]] = content
    return part
