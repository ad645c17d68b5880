"""A real small file system for disk-full tests and the soak run: a tmpfs of a few MB.

Mounting needs root (CAP_SYS_ADMIN), which the test machines have; `SmallDisk.available()`
says why not otherwise, and the tests that need one skip with that reason. tmpfs refuses a
write past its size with ENOSPC exactly as a full disk does (the error the daemon met in
service: h5py's RuntimeError on close, then a segfault of libhdf5).
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path


class SmallDisk:
    """A tmpfs of `size` bytes mounted on `path` (made if needed); `fill()` takes all its
    free space but `leave` bytes with a filler file, `free()` gives it back."""

    def __init__(self, path: str | Path, size: int) -> None:
        self.path = Path(path)
        self.size = int(size)
        self.filler = self.path / ".filler"
        self.mounted = False

    @staticmethod
    def available() -> str | None:
        """None when a tmpfs can be mounted here, else why not."""
        if os.geteuid() != 0:
            return "mounting a small tmpfs needs root"
        return None

    def __enter__(self) -> SmallDisk:
        self.path.mkdir(parents=True, exist_ok=True)
        run = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size}", "tmpfs", str(self.path)],
                             capture_output=True, text=True)
        if run.returncode != 0:
            raise OSError(errno.EPERM, f"mount -t tmpfs on {self.path} failed: {run.stderr.strip()}")
        self.mounted = True
        return self

    def __exit__(self, *exc) -> None:
        if self.mounted:
            # lazily: a file a daemon thread still holds open must not keep the mount busy
            subprocess.run(["umount", "-l", str(self.path)], check=False)
            self.mounted = False

    def free_bytes(self) -> int:
        stats = os.statvfs(self.path)
        return stats.f_bavail * stats.f_frsize

    def fill(self, leave: int = 0) -> None:
        """Take the free space but `leave` bytes (a page or two more may remain: tmpfs counts
        pages)."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            block = bytes(64 << 10)
            while (room := self.free_bytes() - leave) > 0:
                try:
                    os.write(fd, block[: min(len(block), room)])
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)
