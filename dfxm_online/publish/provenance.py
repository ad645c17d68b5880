"""Where a maps file's numbers come from: the /entry/process fields that name the raw data.

A maps file outlives the session that made it; these fields let anyone find the raw scan
again and know what was done to it: the scan file and entry, the ESRF data policy's
proposal / collection / dataset and the sample, start and end time, detector and motors
(the background rule and the moment window are added by whoever runs the pipeline).
Values are plain strings so that every field exists in every file ("" when unknown).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from ..acquisition.geometry import ScanGeometry

#: the ESRF data policy's raw data path: /data/visitor/<proposal>/<beamline>/<session>/
#: RAW_DATA/<collection>/<collection>_<dataset>/<collection>_<dataset>.h5
_ESRF_RAW = re.compile(r"/(?P<proposal>[^/]+)/[^/]+/[^/]+/RAW_DATA/(?P<collection>[^/]+)/(?P=collection)_(?P<dataset>[^/]+)/[^/]+\.h5$")


def _text(value: object) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def _sample(info: Mapping) -> str:
    """The sample name BLISS puts in a scan's info (data policy metadata), if any."""
    metadata = info.get("dataset_metadata") or {}
    return _text(info.get("sample_name") or (metadata.get("Sample_name") if isinstance(metadata, Mapping) else ""))


def policy_names(scan_file: str | Path) -> dict[str, str]:
    """proposal / collection / dataset read off an ESRF data policy raw data path ("" else)."""
    match = _ESRF_RAW.search(str(scan_file))
    return {k: (match.group(k) if match else "") for k in ("proposal", "collection", "dataset")}


def common_fields(raw_file: str, raw_entry: str, geometry: ScanGeometry, detector: str) -> dict[str, str]:
    return {
        "raw_file": raw_file,
        "raw_entry": raw_entry,
        "detector": detector,
        "motors": ", ".join(geometry.motor_names),
        "scan_title": geometry.title,
    }


#: the fields of a live scan's files (every version has all of them: one layout)
LIVE_FIELDS = ("raw_file", "raw_entry", "detector", "motors", "scan_title", "proposal", "collection",
               "dataset", "session", "sample", "start_time", "end_time")


def live_provenance(scan, geometry: ScanGeometry) -> dict[str, str]:
    """The fields of a live scan (blissdata identity and scan_info)."""
    info = scan.info
    raw_file = _text(info.get("filename") or getattr(scan, "path", None))
    names = {k: _text(getattr(scan, k, None)) for k in ("proposal", "collection", "dataset")}
    if not all(names.values()):
        names = policy_names(raw_file) if raw_file else names
    return {
        **common_fields(raw_file, f"{int(scan.number)}.1", geometry, geometry.detector),
        **names,
        "session": _text(getattr(scan, "session", None)),
        "sample": _sample(info),
        "start_time": _text(info.get("start_time")),
        "end_time": "",
    }
