"""Where a scan's maps file goes: one file per scan of each dataset, never another scan's.

BLISS numbers scans per *dataset*: scan 1 of dataset sample_0002 has the same session, name
and number as scan 1 of sample_0001. So the layout (a contract: users and tools find maps
by it) follows the scan's data:

- with the ESRF data policy (the scan's blissdata identity carries proposal, collection and
  dataset): ``<output-dir>/<proposal>/<collection>/<dataset>/<scan name>_<scan number>.h5``;
- otherwise: ``<output-dir>/<session>/<scan file stem>/<scan name>_<scan number>.h5``.

Every level is made file-name safe and bounded in length; a name that had to be changed for
that gets a short hash of the original, so that two distinct names never land on one path.
A file already there that belongs to a *different* scan (its ``/entry/process/scan_key``) is
never replaced: the new scan's file gets a ``_2``, ``_3``... suffix instead (logged).
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from pathlib import Path

import h5py

logger = logging.getLogger(__name__)

#: characters kept of one path level (file systems allow 255 bytes; GPFS/NFS paths get long)
MAX_LEVEL = 80


def sanitise(name: object, limit: int = MAX_LEVEL) -> str:
    """A file-name-safe, bounded version of one path level (a session, dataset, scan name).

    Names that are safe and short stay as they are; any other gets an 8-character hash of
    the original appended, so that distinct names stay distinct ("a b" and "a_b" differ)."""
    text = str(name)
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "unnamed"
    if cleaned == text and len(cleaned) <= limit:
        return cleaned
    digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{cleaned[: limit - 9]}-{digest}"


def scan_folder(output_dir: str | Path, session: str | None, scan_file: str | None,
                proposal: str | None = None, collection: str | None = None,
                dataset: str | None = None) -> Path:
    """The folder of a scan's maps file (module docstring)."""
    if proposal and collection and dataset:
        return Path(output_dir) / sanitise(proposal) / sanitise(collection) / sanitise(dataset)
    stem = Path(str(scan_file)).stem if scan_file else "no_file"
    return Path(output_dir) / sanitise(session or "no_session") / sanitise(stem)


def maps_path(folder: str | Path, scan_name: str, scan_number: int) -> Path:
    """``<folder>/<scan name>_<scan number>.h5``."""
    return Path(folder) / f"{sanitise(scan_name)}_{int(scan_number)}.h5"


def scan_key_of(path: Path) -> str | None:
    """The scan key a maps file says it belongs to; None if it is not a readable maps file."""
    try:
        with h5py.File(path, "r") as f:
            value = f["entry/process/scan_key"][()]
    except (OSError, KeyError):
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


class PathClaims:
    """Maps file paths handed to the scans of one process, so that two scans never share
    one, including scans running at the same time whose files do not exist yet."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owners: dict[Path, str] = {}

    def claim(self, path: Path, scan_key: str) -> Path:
        """`path`, or the first free `<stem>_<n>.h5` beside it, for `scan_key`: a path is
        taken when another scan claimed it or a file of another scan is there."""
        path = Path(path)
        with self._lock:
            candidate, n = path, 1
            while True:
                owner = self._owners.get(candidate)
                if owner is None and candidate.exists():
                    owner = scan_key_of(candidate) or "an unreadable file"
                if owner is None or owner == scan_key:
                    break
                n += 1
                candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
            if candidate != path:
                logger.warning("scan %s: %s belongs to scan %s; maps go to %s instead",
                               scan_key, path, self._owners.get(path) or scan_key_of(path), candidate.name)
            self._owners[candidate] = scan_key
            return candidate
