"""HDF5 files written so that a full disk is an ordinary OSError, never a crash.

libhdf5 does not survive a failed write: when a write fails while a file is open (a full
disk, a quota), closing the file fails too, leaves HDF5 object ids that can no longer be
closed, and a later close or garbage collection segfaults the process (h5py issues #914 and
#2160, "bug in external lib"; reproduced here with HDF5 2.0 / h5py 3.16: a 2 MB tmpfs and
maps files of a few hundred kB crashed the process within a few writes, one thread or four).

So libhdf5 is never shown a failed write. Files are written through h5py's "fileobj"
driver into a :class:`DiskSink`: a file-like object over a real file descriptor whose
`write` never fails. The first OSError it meets is recorded, and that write and every later
one are kept in memory instead (HDF5 may read back what it wrote, and gets it), so the file
closes cleanly; :func:`open_hdf5` then raises the recorded error, one clean OSError, and the
caller removes the half-written file. :func:`check_free_space` refuses a write the folder
clearly has no room for before HDF5 does any work (a disk that stays full for an hour costs
one statvfs per attempt, not a file's worth of writes). Speed: a 335 MB file (20 maps of
2048^2 float32) 0.43 s through the sink against 0.31 s through HDF5's own POSIX driver,
warm page cache, one run each on the shared 2-core machine.
"""

from __future__ import annotations

import errno
import io
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

#: bytes of HDF5 structure a maps file holds beside its arrays' data, counted generously when
#: checking the free space: the file's own (superblock, root group) and each dataset's
#: (object header, attributes, its group's entry); measured: ~12 kB per file, ~1.5 kB per map
HDF5_FILE_OVERHEAD = 64 << 10
HDF5_DATASET_OVERHEAD = 8 << 10


class DiskSink(io.RawIOBase):
    """A read/write file-like object over `path` for h5py's fileobj driver, whose writes
    never fail (module docstring). `error` is the first OSError met, or None."""

    def __init__(self, path: str | Path, truncate: bool = True) -> None:
        super().__init__()
        flags = os.O_RDWR | os.O_CREAT | (os.O_TRUNC if truncate else 0)
        self.path = Path(path)
        self.fd = os.open(self.path, flags, 0o666)  # the umask applies, as to h5py's own files
        self.pos = 0
        self.size = os.fstat(self.fd).st_size  # the logical end of file (kept writes included)
        self.error: OSError | None = None
        #: writes kept in memory after the first failure: (offset, bytes), in order
        self.kept: list[tuple[int, bytes]] = []

    # io.RawIOBase's protocol, as h5py's fileobj driver uses it ----------------------------
    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.size}[whence]
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        if self.error is None:
            try:
                done = 0
                while done < n:
                    done += os.pwrite(self.fd, view[done:], self.pos + done)
            except OSError as exc:
                self.error = exc
                self.kept.append((self.pos, bytes(view)))  # the whole write: part may be on disk
        else:
            self.kept.append((self.pos, bytes(view)))
        self.pos += n
        self.size = max(self.size, self.pos)
        return n

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        n = len(view)
        try:
            data = os.pread(self.fd, n, self.pos)
        except OSError as exc:  # not expected on a local disk; HDF5 still gets n bytes
            self.error = self.error or exc
            data = b""
        view[: len(data)] = data
        view[len(data):] = bytes(n - len(data))
        for offset, kept in self.kept:  # later writes over earlier ones, as on a disk
            lo, hi = max(offset, self.pos), min(offset + len(kept), self.pos + n)
            if lo < hi:
                view[lo - self.pos: hi - self.pos] = kept[lo - offset: hi - offset]
        self.pos += n
        return n

    def truncate(self, size: int | None = None) -> int:
        size = self.pos if size is None else int(size)
        if self.error is None:
            try:
                os.ftruncate(self.fd, size)
            except OSError as exc:
                self.error = exc
        self.size = size
        return size

    def flush(self) -> None:
        """Nothing to do: every write went to the descriptor (or to memory)."""

    def close(self) -> None:
        if not self.closed and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.kept = []
        super().close()

    def check(self) -> None:
        """Raise the first write error met, as one clean OSError naming the file."""
        if self.error is not None:
            code = self.error.errno or errno.EIO
            raise OSError(code, os.strerror(code))

    def fsync(self) -> None:
        """The file's data on disk (a clean OSError when the disk refuses it)."""
        os.fsync(self.fd)


def space_error(folder: Path, needed: int, free: int) -> OSError:
    """The OSError of a folder without room for `needed` bytes, with both figures."""
    return OSError(errno.ENOSPC, f"no space left on device: {needed / 1e6:.1f} MB needed, "
                                 f"{free / 1e6:.1f} MB free in {folder}")


def check_free_space(folder: str | Path, needed: int) -> None:
    """An OSError (ENOSPC) when `folder`'s file system has fewer than `needed` bytes free
    for an unprivileged writer (statvfs f_bavail: the blocks a file system reserves for
    root are left alone, also when the daemon runs as root)."""
    stats = os.statvfs(folder)
    free = stats.f_bavail * stats.f_frsize
    if free < needed:
        raise space_error(Path(folder), needed, free)


def data_bytes(arrays: Iterable[object]) -> int:
    """Bytes the arrays take in a maps file (floating ones stored as float32, nexus.py's
    `file_dtype`), plus HDF5's own structure: an estimate on the generous side, for
    `check_free_space`."""
    from .nexus import file_dtype  # here: nexus.py writes through this module

    total = HDF5_FILE_OVERHEAD
    for values in arrays:
        arr = np.asarray(values)
        itemsize = file_dtype(arr.dtype).itemsize if arr.dtype.kind in "fiubc" else 64
        total += arr.size * itemsize + HDF5_DATASET_OVERHEAD
    return total


@contextmanager
def open_hdf5(path: str | Path, mode: str = "w", durable: bool = False) -> Iterator[h5py.File]:
    """`h5py.File` over a :class:`DiskSink` on `path` ("w": created or truncated, "r+": an
    existing file); after the file is closed, the first write error is raised as an OSError
    (the caller removes the file). `durable`: fsync'ed before it is returned."""
    if mode not in ("w", "r+"):
        raise ValueError(f"mode {mode!r}: open_hdf5 writes files ('w' or 'r+')")
    sink = DiskSink(path, truncate=mode == "w")
    try:
        with h5py.File(sink, mode) as f:
            yield f
        sink.check()
        if durable:
            sink.fsync()
    finally:
        sink.close()
