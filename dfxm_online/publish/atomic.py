"""HDF5 files that appear whole or not at all: written under a hidden temporary name in the
same folder and renamed over the final path (a reader never sees a torn file)."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py


def temporary_name(path: Path) -> Path:
    """A hidden name beside `path`, unique per process and thread (same file system, so the
    rename is atomic; hidden, so that folder watchers skip it)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


@contextmanager
def atomic_h5(path: str | Path, mode: str = "w") -> Iterator[h5py.File]:
    """An HDF5 file open for writing that replaces `path` when the block ends without an
    error; on an error the temporary file is removed and `path` is left as it was.

    `mode` "a" starts from a copy of the existing file (an update of a few fields)."""
    path = Path(path)
    tmp = temporary_name(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if mode == "a":
            with open(path, "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(16 << 20):
                    dst.write(chunk)
        with h5py.File(tmp, "a" if mode == "a" else "w") as f:
            yield f
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Exclusive use of `path` between the processes that update it (the daemon recording a
    workflow's state, the workflow writing its result). The lock is on the folder that holds
    it (flock: local file systems, NFSv4, GPFS), so it leaves no file behind; the updates it
    guards take a moment. Readers never need it: writers replace files whole."""
    fd = os.open(Path(path).parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
