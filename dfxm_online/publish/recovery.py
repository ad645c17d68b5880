"""What a daemon finds on disk when it starts: scans it has finished, and files left "running".

A daemon that was stopped or killed during a scan, or down when a scan ended, left maps
files whose state says "running" for ever; a restart must neither process again a scan
that is done nor leave such files. Both checks read only `/entry/process` (a few small
datasets), so they cost little even on a folder of many scans.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import h5py

from ..logtext import one_line
from .disk_sink import open_hdf5

logger = logging.getLogger(__name__)

FINAL_STATES = ("complete", "aborted", "failed")
#: the reason written into a file left "running" whose scan the store no longer holds
GONE = "the daemon was down when the scan ended and the data store no longer holds it"


def _process_fields(path: Path) -> dict[str, str] | None:
    try:
        with h5py.File(path, "r") as f:
            process = f["entry/process"]
            return {k: (v.decode() if isinstance(v, bytes) else str(v))
                    for k, v in ((k, process[k][()]) for k in ("state", "scan_key", "reason") if k in process)}
    except (OSError, KeyError):
        return None


def final_process_fields(path: Path, scan_key: str) -> dict[str, str] | None:
    """The process fields of `path` if it is the final maps file of `scan_key`, else None
    (no file, another scan's, or still "running")."""
    fields = _process_fields(Path(path)) if Path(path).exists() else None
    if fields is None or fields.get("scan_key") != scan_key or fields.get("state") not in FINAL_STATES:
        return None
    return fields


def maps_files(output_dir: Path) -> Iterator[Path]:
    """The maps files under `output_dir` (hidden files and folders left out)."""
    for folder, dirs, files in os.walk(output_dir):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.endswith(".h5") and not name.startswith("."):
                yield Path(folder) / name


def abandon_running_files(output_dir: Path, live_keys: set[str]) -> int:
    """Mark "aborted" (with the reason GONE) every maps file under `output_dir` still
    "running" whose scan key is not in `live_keys`; returns how many. Each is rewritten as
    a copy renamed over it, so a reader never sees a torn file."""
    marked = 0
    for path in maps_files(Path(output_dir)):
        fields = _process_fields(path)
        if fields is None or fields.get("state") != "running" or fields.get("scan_key") in live_keys:
            continue
        tmp = path.with_name(f".{path.name}.{os.getpid()}.recover.tmp")
        try:
            shutil.copyfile(path, tmp)
            # through publish/disk_sink.py: a full disk is an OSError, not a crash of libhdf5
            with open_hdf5(tmp, "r+", durable=True) as f:
                process = f["entry/process"]
                for key, value in (("state", "aborted"), ("reason", GONE)):
                    del process[key]
                    process[key] = value
            os.replace(tmp, path)
        except (OSError, KeyError, RuntimeError) as exc:
            tmp.unlink(missing_ok=True)
            logger.error("%s: left running, cannot be marked aborted: %s", path, one_line(exc))
            continue
        marked += 1
        logger.warning("%s: scan %s was left running; marked aborted (%s)", path, fields.get("scan_key"), GONE)
    return marked
