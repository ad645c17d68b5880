"""A live scan's next maps-file version made from its previous one's bytes, not rebuilt.

Why: a live version of a two-motor 2048^2 scan at its live binning (18 maps of 171^2: 55
HDF5 objects and 139 attributes, 2.5 MB) took 30-32 ms to write, 25 ms of it h5py and
libhdf5 making groups, datasets and attributes (measured, bench/RESULTS.md). At the 0.1 s
publish period that the latency budget asks for, that is up to a third of a core, on the
2 cores the accumulators and the scan-end workflow share. Within a scan, consecutive
versions have one layout (the same maps, shapes, axes and binning), so the first full
version's file is kept in memory with the offset of each map's data: a next version of
the same layout is those bytes with each map's new values copied in place (the maps are
contiguous datasets), written with one call, and the /entry/process fields that changed
written through h5py; then renamed over the path like every version (`replace_atomically`:
a reader never sees a torn file, a full disk is a clean OSError). One write instead of
~280 small ones also suits the GPFS and NFS file systems beamlines write to.

The file is the one `write_maps_file` would write, field for field and attribute for
attribute (tests/test_version_template.py compares them); its bytes differ only where a
text field that changed is stored again in the file's heap.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .disk_sink import DiskSink
from .nexus import (
    AxesSpec,
    ProcessInfo,
    file_array,
    file_dtype,
    process_fields,
    replace_atomically,
    write_maps_file,
)

#: largest file kept as a template: a live version is a few MB; a final full-resolution
#: file (hundreds of MB) is written once and never repeated
TEMPLATE_MAX_BYTES = 64 << 20

#: /entry/process values written in place when they change (scalars: text and numbers)
_PATCHABLE = (str, bool, int, float, np.bool_, np.integer, np.floating)


@dataclass(frozen=True)
class _Template:
    layout: tuple
    image: bytes  # the whole file
    data: dict[str, tuple[int, int]]  # dataset path -> (offset, bytes) of its values in `image`
    process: dict[str, object]  # the /entry/process values `image` holds


def _field_layout(value: object) -> tuple:
    """How an /entry/process value is stored: its type for a patchable scalar, else the
    value itself (a change makes a new layout)."""
    if isinstance(value, str):
        return ("text",)
    if isinstance(value, _PATCHABLE):
        return ("scalar", np.asarray(value).dtype.str)
    arr = np.asarray(value)
    return ("fixed", arr.dtype.str, arr.shape, arr.tobytes())


def layout(maps: Mapping[str, np.ndarray], fields: Mapping[str, object], default: str | None, title: str,
           axes: AxesSpec) -> tuple:
    """Everything of a version that shapes its file other than the maps' values and the
    patchable /entry/process values (`fields`: `process_fields` of its ProcessInfo): two
    versions with one layout differ only there."""
    return (
        tuple((name, file_dtype(np.asarray(v).dtype).str, np.shape(v)) for name, v in maps.items()),
        tuple((name, tuple((a, np.asarray(v).dtype.str, np.shape(v)) for a, v in spec)) for name, spec in axes.items()),
        tuple((key, _field_layout(value)) for key, value in fields.items()),
        # what nexus._Describer reads: the motors and the binning name the axes and units
        str(fields.get("motors") or ""), str(fields.get("map_binning") or ""),
        default, title,
    )


def _stored_values(maps: Mapping[str, np.ndarray], axes: AxesSpec) -> dict[str, np.ndarray]:
    """The arrays a version's file holds as they are stored, by dataset path: each map
    (`file_array`) and the axes given with it (their values change from version to version:
    the mosaicity key's motor ranges follow the data), as nexus._write_collection writes them
    (an axis named twice for one map is written once, the first)."""
    stored: dict[str, np.ndarray] = {}
    for name, values in maps.items():
        stored[f"entry/maps/{name}/{name}"] = file_array(values)
        for axis, axis_values in axes.get(name, ()):
            stored.setdefault(f"entry/maps/{name}/{axis}", np.ascontiguousarray(axis_values))
    return stored


def _same(a: object, b: object) -> bool:
    return type(a) is type(b) and a == b


class VersionWriter:
    """Writes one scan's versions (`write_maps_file`'s arguments, without the scan-end
    groups): through the template when the layout is the last full version's, else in full,
    keeping a live version's file as the next template."""

    def __init__(self, max_bytes: int = TEMPLATE_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._template: _Template | None = None
        #: versions written from the template (the rest were written in full)
        self.from_template = 0

    @property
    def has_template(self) -> bool:
        return self._template is not None

    def write(self, path: str | Path, maps: Mapping[str, np.ndarray], info: ProcessInfo,
              default: str | None = None, title: str = "", axes: AxesSpec | None = None,
              durable: bool = True) -> Path:
        axes = axes or {}
        fields = process_fields(info)
        this_layout = layout(maps, fields, default, title, axes)
        template = self._template
        if template is not None and template.layout == this_layout:
            path = self._from_template(Path(path), template, maps, axes, fields, durable)
            self.from_template += 1
            return path
        self._template = None  # a new layout; the old bytes go before the new file is made
        path = write_maps_file(path, maps, info, default, title, axes, durable)
        if info.state == "running":
            self._template = _read_template(path, this_layout, _stored_values(maps, axes), fields, self.max_bytes)
        return path

    @staticmethod
    def _from_template(path: Path, template: _Template, maps: Mapping[str, np.ndarray], axes: AxesSpec,
                       fields: Mapping[str, object], durable: bool) -> Path:
        image = bytearray(template.image)
        for dataset, values in _stored_values(maps, axes).items():
            offset, nbytes = template.data[dataset]
            image[offset:offset + nbytes] = memoryview(values).cast("B")
        changed = {k: v for k, v in fields.items() if not _same(v, template.process.get(k))}

        def fill(sink: DiskSink) -> None:
            sink.write(image)
            if changed and sink.error is None:
                with h5py.File(sink, "r+") as f:
                    process = f["entry/process"]
                    for key, value in changed.items():
                        process[key][()] = value

        return replace_atomically(path, len(image), fill, durable)


def _read_template(path: Path, this_layout: tuple, stored: Mapping[str, np.ndarray], fields: Mapping[str, object],
                   max_bytes: int) -> _Template | None:
    """The template of the version just written at `path` (`stored`: its arrays by dataset
    path), or None when it cannot be one (too large, an array not stored contiguously). Read
    back from the file: its bytes are what the next versions copy."""
    if os.path.getsize(path) > max_bytes:
        return None
    image = Path(path).read_bytes()
    data: dict[str, tuple[int, int]] = {}
    with h5py.File(io.BytesIO(image), "r") as f:
        for dataset, values in stored.items():
            dset = f[dataset]
            offset = dset.id.get_offset()
            if offset is None or dset.id.get_storage_size() != values.nbytes or dset.dtype != values.dtype:
                return None
            data[dataset] = (int(offset), values.nbytes)
    return _Template(this_layout, image, data, dict(fields))
