"""Generation files of finished scans, kept for the next scan of the same layout.

Why: a running scan's maps file is rewritten in place, alternating between two hidden
generation files (`live_file.py`). A scan that had to create its two generations wrote
~150-370 MB of new file at 2048^2, and on this VM a new file's pages cost far more than
rewriting warm ones: 0.4-0.7 s per 144 MB generation (one motor) in the daemon against
0.03-0.05 s in place, because freed guest memory goes back to the host and every page of
a new file is faulted in again. Those two writes were most of an in-service scan's p99
latency. A scan of the same layout (same maps, shapes, axes: the same detector and number
of motors) can instead take over the previous scan's generations, whose pages are warm, and
rewrite them like its own.

Each scan's final file keeps one inode for good (its last generation, rewritten and
renamed over the link), so after the scan ends the pool is topped up with a copy of that
final file, off the latency path of any publish. The spares held stay free meanwhile; a
scan that finds none of its layout while the copy runs waits for it rather than writing
a file of its own (the copy is the cheaper of the two).

Spares live in a hidden folder of the output directory (same file system as the scans'
folders, so a spare moves into a scan's folder by a rename). They are only ever moved into
place and rewritten in full before any reader can see them, so their stale contents never
reach a reader. A spare that some process holds open is dropped, never rewritten. A daemon
that starts removes the spares an earlier one left (their layouts are not known).
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import threading
import time
from pathlib import Path

from .live_file import file_signature, open_elsewhere

logger = logging.getLogger(__name__)

#: name of the spares' folder inside the output directory
SPARE_FOLDER = ".dfxm-online-spares"
#: longest a scan waits for a spare of its layout that is being copied
COPY_WAIT = 10.0
#: layouts kept (the most recently used): e.g. a session's dark scans and its scans
MAX_LAYOUTS = 3


class SpareGenerations:
    """Spare generation files, each with the layout it was written with: at most
    `capacity` per layout, for the MAX_LAYOUTS layouts used last (so that a dark scan's
    small maps do not push out the spares of the scans around it).

    Thread-safe: every scan worker of the daemon shares one pool.
    """

    def __init__(self, output_dir: str | Path, capacity: int = 2) -> None:
        self.directory = Path(output_dir) / SPARE_FOLDER
        self.capacity = max(0, capacity)
        self._spares: list[tuple[Path, tuple]] = []  # oldest first
        self._recent: list[tuple] = []  # layouts, the last used last
        self._copying: set[tuple] = set()  # layouts with a copy in flight
        self._names = itertools.count()
        self._cond = threading.Condition()
        self._swept = False
        self.taken = 0  # spares handed to scans (for tests, logs)

    def _ensure_folder(self) -> None:
        """Create the folder; the first time, remove what an earlier daemon left in it."""
        if self._swept:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.iterdir():
            if stale.is_file() or stale.is_symlink():
                stale.unlink(missing_ok=True)
        self._swept = True

    def _new_name(self) -> Path:
        return self.directory / f"spare-{os.getpid()}-{next(self._names)}.h5"

    def count(self, layout: tuple) -> int:
        """Spares of `layout` held now."""
        with self._cond:
            return sum(1 for _, known in self._spares if known == layout)

    def take(self, layout: tuple, destination: Path) -> bool:
        """Move a spare of `layout` to `destination`; False if there is none.

        Waits (up to COPY_WAIT s) for a copy of that layout still in flight. A spare that
        another process holds open is dropped; one that cannot be moved there (another file
        system) too.
        """
        if self.capacity == 0:
            return False
        deadline = time.monotonic() + COPY_WAIT
        with self._cond:
            while True:
                for k, (spare, known) in enumerate(self._spares):
                    if known != layout:
                        continue
                    del self._spares[k]
                    if open_elsewhere(spare):
                        spare.unlink(missing_ok=True)
                        break  # look again from the start: the list changed
                    try:
                        os.replace(spare, destination)
                    except OSError as exc:
                        logger.debug("spare %s cannot move to %s: %s", spare, destination, exc)
                        spare.unlink(missing_ok=True)
                        break
                    self.taken += 1
                    self._used(layout)
                    return True
                else:
                    remaining = deadline - time.monotonic()
                    if layout not in self._copying or remaining <= 0:
                        return False
                    self._cond.wait(remaining)

    def give(self, generation: Path, layout: tuple) -> None:
        """Keep `generation` (a file with `layout`) as a spare, or remove it when the pool
        is disabled or the file cannot be moved in. The oldest spares go beyond capacity."""
        if self.capacity == 0:
            generation.unlink(missing_ok=True)
            return
        with self._cond:
            try:
                self._ensure_folder()
                spare = self._new_name()
                os.replace(generation, spare)
            except OSError as exc:
                logger.debug("generation %s not kept as a spare: %s", generation, exc)
                generation.unlink(missing_ok=True)
                return
            self._spares.append((spare, layout))
            self._used(layout)
            self._trim()
            self._cond.notify_all()

    def _used(self, layout: tuple) -> None:
        if layout in self._recent:
            self._recent.remove(layout)
        self._recent.append(layout)
        del self._recent[:-MAX_LAYOUTS]

    def _trim(self) -> None:
        """Remove the oldest spares beyond `capacity` per layout, and those of layouts no
        longer among the recent ones."""
        kept: list[tuple[Path, tuple]] = []
        for spare, layout in reversed(self._spares):  # newest first
            if layout in self._recent and sum(1 for _, k in kept if k == layout) < self.capacity:
                kept.append((spare, layout))
            else:
                spare.unlink(missing_ok=True)
        self._spares = kept[::-1]

    def top_up(self, layout: tuple, source: Path, signature: tuple) -> None:
        """Copy `source` (a finished scan's final file, of `layout`) as spares until
        `capacity` spares of `layout` are held.

        Called after a scan ends, on its worker: the copy allocates the pages that the
        scan's final file took for good, while no publish of that scan waits, and the
        spares already held stay free for a scan that starts meanwhile. `signature` is the
        final file's `file_signature` when it was written: a file changed since (another
        program added to it) is not copied.
        """
        with self._cond:  # copies made now: a scan that takes spares meanwhile has its own
            missing = self.capacity - sum(1 for _, known in self._spares if known == layout)
        for _ in range(missing):
            if not self.copy_in(source, layout, signature):
                return

    def copy_in(self, source: Path, layout: tuple, signature: tuple | None = None) -> bool:
        """Add a copy of `source` (a maps file of `layout` that nobody writes meanwhile) to
        the spares; False if none was made: one copy of `layout` is already running, the
        file changed during the copy (its `signature` differs), or the copy failed (full
        disk: logged in one line, the pool stays as it was)."""
        with self._cond:
            if self.capacity == 0 or layout in self._copying:
                return False
            self._copying.add(layout)
            target = self._new_name()
        partial = target.with_suffix(".copying")
        copied = False
        try:
            with self._cond:
                self._ensure_folder()
            shutil.copyfile(source, partial)
            if signature is not None and file_signature(source) != signature:
                logger.info("%s changed since it was written: not kept as a spare", source)
            else:
                os.replace(partial, target)
                copied = True
        except OSError as exc:
            logger.warning("spare generation not copied from %s: %s", source, exc)
        finally:
            partial.unlink(missing_ok=True)
            with self._cond:
                self._copying.discard(layout)
                if copied:
                    self._spares.append((target, layout))
                    self._used(layout)
                    self._trim()
                self._cond.notify_all()
        return copied

    def clear(self) -> None:
        """Remove every spare (daemon shutdown keeps them: a restart sweeps them)."""
        with self._cond:
            for spare, _ in self._spares:
                spare.unlink(missing_ok=True)
            self._spares.clear()
