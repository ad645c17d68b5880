"""A running scan's maps file, rewritten in place rather than written anew each publish.

Why: at 2048^2 a maps file holds ~300 MB of float32 maps. Written as a new file and renamed
over the previous version (`write_maps_file`), a live publish cost 0.73-0.86 s of writing
(every page of a new file is fresh page cache, which this VM faults in from the host) plus
0.10-0.15 s for the rename (ext4 flushes a file renamed over another, `auto_da_alloc`).
Rewriting the datasets of an existing file of the same layout cost 0.03-0.06 s (same
process, alternating, 4 rounds each).

How readers still never see a torn file: while the scan runs, the maps file's path is a
symbolic link to one of the hidden *generation* files `.<name>.live<k>.h5` beside it. A
publish rewrites a generation the link does not point to, then points the link at it (a new
link renamed over the old one: atomic). A generation is rewritten only when no process has
it open: the Linux write-lease test (`fcntl(F_SETLEASE, F_WRLCK)`) fails while any other
file descriptor is open on the file, e.g. a viewer that opened the path before the last
swap. Such a generation is unlinked instead (the reader keeps its version) and the publish
writes a new one in full. Leases see only this machine's processes, and network file
systems cache symbolic links on their clients, so in-place rewrites are used on local file
systems only; elsewhere (NFS, GPFS, Lustre...) every publish writes a new file and renames
it.

The scan's final file is a regular file again: the generation the link does not point to,
rewritten with the final maps, fsync'ed and renamed over the link (a new file when no
generation can be rewritten). The other generation is then kept as a spare for the next
scan of the same layout (`spare_generations.py`) or removed.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .nexus import (
    AxesSpec,
    ProcessInfo,
    _write,
    file_dtype,
    process_fields,
    rewrite_maps_file,
    write_maps_file,
)

if TYPE_CHECKING:
    from .spare_generations import SpareGenerations

logger = logging.getLogger(__name__)

#: file systems whose leases see every reader of a file (not network or cluster ones)
LOCAL_FILE_SYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs"})


def file_system_type(path: str | Path) -> str:
    """Type of the file system holding `path` (from /proc/self/mounts; "" if unknown)."""
    target = os.path.realpath(path)
    best, fstype = "", ""
    try:
        with open("/proc/self/mounts") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) < 3:
                    continue
                # mount points escape blanks as octal (\040)
                mount = parts[1].encode().decode("unicode_escape")
                inside = target == mount or target.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, fstype = mount, parts[2]
    except OSError:
        return ""
    return fstype


def rewrites_in_place(directory: str | Path) -> bool:
    """Whether maps files in `directory` can be rewritten in place safely (see module doc)."""
    return sys.platform.startswith("linux") and file_system_type(directory) in LOCAL_FILE_SYSTEMS


def open_elsewhere(path: Path) -> bool:
    """Whether any other file descriptor (any process, this one included) is open on
    `path`: a write lease is granted only when there is none. Unsupported leases count as
    open (the caller then writes a new file)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return True
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
    except OSError:
        return True
    else:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return False
    finally:
        os.close(fd)


def file_signature(path: Path) -> tuple:
    """What changes when a file is written to or replaced: inode, size, modification time."""
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


def _layout(maps: Mapping[str, np.ndarray], info: ProcessInfo, default: str | None, title: str,
            axes: AxesSpec) -> tuple:
    """What must be equal for a file to be rewritten in place: every dataset's name, shape
    and stored type, the default plot, and whether there is a title. Strings may change
    (the title, the process fields): HDF5 keeps them in a heap and rewrites them in place."""
    map_specs = tuple((name, np.shape(values), file_dtype(np.asarray(values).dtype).str)
                      for name, values in maps.items())
    axis_specs = tuple((name, tuple((a, np.shape(v), np.asarray(v).dtype.str) for a, v in axes[name]))
                       for name in sorted(axes))
    process = tuple((key, type(value).__name__, np.shape(value)) for key, value in process_fields(info).items())
    return map_specs, axis_specs, process, default, bool(title)


def _has_maps(layout: tuple) -> bool:
    """Whether files of `layout` are worth keeping as spares (a version without maps, e.g.
    before the first frame or of a failed scan, is a few kB: cheaper to write anew)."""
    return bool(layout[0])


class LiveMapsFile:
    """The maps file of one running scan (one writer at a time: the daemon's scan worker
    or its writer thread). `spares`: the daemon's pool of finished scans' generations,
    taken before writing a new generation and given the generations left at the end."""

    def __init__(self, path: str | Path, in_place: bool | None = None,
                 spares: SpareGenerations | None = None) -> None:
        self.path = Path(path)
        #: None: decided on the first write (the folder may not exist yet)
        self.in_place = in_place
        self.spares = spares
        self._layouts: dict[Path, tuple] = {}  # the generations this object wrote
        self._count = 0
        self._started = False  # the first write sets the folder up
        self._final: tuple[tuple, tuple] | None = None  # the final file's layout and signature
        self._fresh: dict[tuple, int] = {}  # new generations written, per layout
        self.rewrites = 0  # versions written in place, final one included (tests, logs)

    # -- generations ---------------------------------------------------------------------
    def _pattern(self) -> str:
        return f".{self.path.name}.live*.h5"

    def _active(self) -> Path | None:
        try:
            return self.path.parent / os.readlink(self.path)
        except OSError:  # no file yet, or a regular file
            return None

    def _drop(self, generation: Path) -> None:
        self._layouts.pop(generation, None)
        generation.unlink(missing_ok=True)

    def _sweep(self) -> None:
        """Remove generations left by an earlier daemon (killed during this scan), except
        the one the path still points to: the first swap makes it removable."""
        active = self._active()
        for stale in self.path.parent.glob(self._pattern()):
            if stale not in self._layouts and stale != active:
                stale.unlink(missing_ok=True)

    def _reusable(self, layout: tuple) -> Path | None:
        """A generation that can be rewritten in place (one of ours, else a spare); the
        others are unlinked."""
        active = self._active()
        found = None
        for generation, known in list(self._layouts.items()):
            if generation == active:
                continue
            if found is None and known == layout and not open_elsewhere(generation):
                found = generation
            else:
                self._drop(generation)
        if found is None and self.spares is not None:
            candidate = self._new_generation()
            if self.spares.take(layout, candidate):
                self._layouts[candidate] = layout
                found = candidate
        return found

    def _new_generation(self) -> Path:
        self._count += 1
        return self.path.with_name(f".{self.path.name}.live{self._count}.h5")

    def _start(self) -> None:
        """The first write sets the folder up."""
        if self._started:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.in_place is None:
            self.in_place = rewrites_in_place(self.path.parent)
        if self.in_place:
            self._sweep()
        self._started = True

    def _point_to(self, generation: Path) -> None:
        link = self.path.with_name(f".{self.path.name}.link.{os.getpid()}.{threading.get_ident()}")
        link.unlink(missing_ok=True)
        os.symlink(generation.name, link)
        try:
            os.replace(link, self.path)
        except BaseException:
            link.unlink(missing_ok=True)
            raise

    # -- publishing ----------------------------------------------------------------------
    def write(self, maps: Mapping[str, np.ndarray], info: ProcessInfo, default: str | None = None,
              title: str = "", axes: AxesSpec | None = None) -> Path:
        """Publish one live version of the maps (not fsync'ed: the next one replaces it)."""
        axes = axes or {}
        self._start()
        if not self.in_place:
            return write_maps_file(self.path, maps, info, default, title, axes, durable=False)
        layout = _layout(maps, info, default, title, axes)
        generation = self._reusable(layout)
        fresh = False
        try:
            if generation is not None:
                rewrite_maps_file(generation, maps, info, axes, title)
                self.rewrites += 1
            else:
                generation = self._new_generation()
                self._layouts[generation] = layout
                _write(generation, maps, info, default, title, axes)
                fresh = True
            self._point_to(generation)
        except BaseException:
            if generation is not None:  # possibly torn: never point the path at it
                self._drop(generation)
            raise
        if fresh and self.spares is not None and _has_maps(layout) and self.spares.count(layout) == 0:
            self._lay_in(generation, layout)
        return self.path

    def _lay_in(self, generation: Path, layout: tuple) -> None:
        """After this scan's second new generation of a layout the spares lack: a copy of
        it for the next scan. A scan gives back one generation at its end (the other
        becomes its final file) and the copy that makes up for it runs after the end, so
        without this a scan started right after the first of its layout would wait for
        that copy (~0.3 s at 2048^2). This scan is writing new files anyway; the copy runs
        here, on the writer, before the generation can be rewritten."""
        self._fresh[layout] = self._fresh.get(layout, 0) + 1
        if self._fresh[layout] == 2:
            self.spares.copy_in(generation, layout)

    def finish(self, maps: Mapping[str, np.ndarray], info: ProcessInfo, default: str | None = None,
               title: str = "", axes: AxesSpec | None = None, durable: bool = True) -> Path:
        """The scan's last version: a regular file (fsync'ed when `durable`) renamed over
        the link; then the generations go (to the spares, if any). If it cannot be
        written, the path keeps pointing at the last live version.

        In place, the final file is a generation the link does not point to, rewritten:
        at 2048^2 (one motor, 144 MB) 0.03 s plus the fsync, against 0.4-0.7 s for a new
        file on this VM (see `spare_generations.py`)."""
        axes = axes or {}
        self._start()
        generation = None
        layout = _layout(maps, info, default, title, axes)
        if self.in_place:
            generation = self._reusable(layout)
        if generation is None:
            write_maps_file(self.path, maps, info, default, title, axes, durable=durable)
        else:
            try:
                rewrite_maps_file(generation, maps, info, axes, title)
                if durable:
                    with open(generation, "rb") as fh:
                        os.fsync(fh.fileno())
                os.replace(generation, self.path)
            except BaseException:
                self._drop(generation)
                raise
            self._layouts.pop(generation, None)
            self.rewrites += 1
        self._final = (layout, file_signature(self.path))
        self.discard()
        return self.path

    def discard(self) -> None:
        """Give the generations the path does not point to to the spares (or remove them)."""
        active = self._active()
        for generation, layout in list(self._layouts.items()):
            if generation == active:
                continue
            if self.spares is not None and _has_maps(layout):  # give() drops a missing file
                self._layouts.pop(generation)
                self.spares.give(generation, layout)
            else:
                self._drop(generation)
        if self.in_place:
            self._sweep()

    def replenish(self) -> None:
        """Top the spares of the final file's layout up to their capacity with copies of it
        (after the scan: see `SpareGenerations.top_up`)."""
        if self.spares is not None and self._final is not None and self.in_place and _has_maps(self._final[0]):
            layout, signature = self._final
            self.spares.top_up(layout, self.path, signature)
