"""Live scans -> batches of (frames, positions), read point by point with blissdata cursors.

One :class:`LiveFrameSource` per scan. It reads the image stream and the motor streams with
one `CursorGroup`, pairs frame k with the recorded positions of point k (never an assumed
grid), and yields batches as soon as both are there.

Lima image streams carry only a JSON status in Redis; their frames are read from the
saved HDF5 files, a whole file's worth of frames at a time. Only frames in files that Lima
has closed are read (blissdata's own rule: a file is closed once a frame is saved into the
next one, or the stream is sealed), because reading an HDF5 file that another process is
still writing is unsafe without SWMR. Frames still only in the Lima server's memory would
need Tango, which this service does not use.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Iterator

import h5py
import numpy as np
from blissdata.exceptions import EndOfStream, IndexNoMoreThereError
from blissdata.streams import CursorGroup
from blissdata.streams.event_stream import StreamEntry

from .batch import Batch
from .geometry import ScanError, ScanGeometry
from .resp import RespReader

logger = logging.getLogger(__name__)


MONITOR_KEY = "\0monitor"


def lima_readable(stream) -> int:
    """Number of frames of a Lima stream that can be read from closed files now.

    blissdata 2.4's Lima client tracks this (`_last_index_saved_and_closed`) but does not
    expose it; we read it rather than re-implement its file-closure rule.
    """
    client = stream._client  # blissdata 2.4.x internals, pinned in pyproject.toml
    if not getattr(client, "_saved", False):
        raise ScanError("Lima image stream is not saved to files: frames need Tango access")
    return int(client._last_index_saved_and_closed) + 1


def read_lima_frames(stream, start: int, stop: int, allocate=None) -> np.ndarray:
    """Frames start..stop of a Lima stream, from its files: one h5py read per file, straight
    into the output array (no per-file chunks to concatenate: half the peak memory).
    `allocate(count, frame_shape, dtype)` gives the output array (default: np.empty)."""
    refs = stream.get_references(slice(start, stop))
    out: np.ndarray | None = None
    i = 0
    while i < len(refs):
        ref = refs[i]
        j = i
        while j + 1 < len(refs) and refs[j + 1].file_path == ref.file_path and refs[j + 1].index == refs[j].index + 1:
            j += 1
        if not ref.format.lower().startswith("hdf5"):
            raise ScanError(f"Lima file format {ref.format} is not supported (HDF5 only)")
        with h5py.File(ref.file_path, "r") as f:
            dset = f[ref.data_path]
            held = max(0, min(dset.shape[0], refs[j].index + 1) - ref.index)
            if held != j - i + 1:
                raise ScanError(
                    f"Lima file {ref.file_path} holds {ref.index + held} frames, "
                    f"frame {refs[j].index} was announced in it"
                )
            if out is None:
                shape = tuple(dset.shape[1:])
                out = (allocate(len(refs), shape, dset.dtype) if allocate is not None
                       else np.empty((len(refs), *shape), dtype=dset.dtype))
            elif dset.shape[1:] != out.shape[1:]:
                raise ScanError(
                    f"frame {start + i} has shape {tuple(dset.shape[1:])}, expected {out.shape[1:]}"
                )
            _read_frames(dset, ref.index, out[i : j + 1])
        i = j + 1
    return out if out is not None else np.empty((0,))


def _read_frames(dset: h5py.Dataset, first: int, out: np.ndarray) -> None:
    """Frames first.. of a Lima dataset into `out` (len(out), H, W).

    One frame per chunk and no filters (Lima's uncompressed HDF5 saving): each chunk's
    bytes are read straight into its frame (`read_direct_chunk`), ~1250 frames/s of 2048^2
    uint16 from the page cache here, against 60-480 through h5py's selection reads, which
    made the daemon read-bound on Lima scans. Anything else (compressed files, other
    chunking) goes through HDF5's own read.
    """
    one_frame_chunks = dset.chunks == (1, *dset.shape[1:])
    if one_frame_chunks and dset.id.get_create_plist().get_nfilters() == 0 and out.flags.c_contiguous:
        raw = out.reshape(len(out), -1).view(np.uint8)
        for k in range(len(out)):
            dset.id.read_direct_chunk((first + k, 0, 0), out=raw[k])
    else:
        dset.read_direct(out, np.s_[first : first + len(out)])


def root_of(array: np.ndarray) -> np.ndarray:
    """The array that owns the memory `array` views."""
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


def _span(root: np.ndarray, frames: np.ndarray) -> tuple[int, int]:
    """The frames of a batch buffer `root` that `frames` (a contiguous view of it) are."""
    start = (frames.ctypes.data - root.ctypes.data) // max(1, root[0].nbytes) if len(root) else 0
    return start, start + len(frames)


_MAX_STREAM_ID = 2**64 - 1  # id of a blissdata stream's seal entry


class ArrayFrameReader:
    """A plain array image stream read with XREAD in byte-bounded batches.

    blissdata's cursors ask Redis for up to 100 entries per read; with 8 MB frames such
    replies are hundreds of MB and read back at ~25-35 frames/s, where one bounded reply
    at a time runs an order of magnitude faster (issue 3's probe). This reads at most
    about `max_bytes` of frames per request (`max_points` frames, or fewer when
    `read(max_points=...)` says so); an entry may carry several points (a publisher
    sending blocks), so the number of entries asked for follows the points per entry seen
    (one entry on the first read, before that is known).

    Frames of a fixed shape are read on a connection of the reader's own, its replies
    parsed by `RespReader`: each entry's payload goes from the socket straight into the
    output array, given by `allocate(count, frame_shape, dtype)` (default np.empty), which
    may recycle memory. Through redis-py, hiredis and blissdata's decoder each frame was
    copied three more times, into fresh memory: a queued 3000-frame 512^2 uint16 scan was
    read at ~1050 frames/s, against ~4500-7000 this way (micro-benchmark on this VM).
    Smaller replies are faster too: the same reads with 32 MB per reply ran at ~2500
    frames/s, with 4-8 MB at ~4500-6000, hence the 8 MB default. Free-shape streams
    (shape embedded in each payload) use blissdata 2.4's stream entry decoding
    (`StreamEntry`, `EventStream._decode_entries`), pinned in pyproject.toml.
    """

    def __init__(self, stream, max_bytes: int = 8 << 20, allocate=None) -> None:
        self._events = stream.event_stream
        shape = [int(s) for s in (stream.shape or ())]
        self.dtype = np.dtype(stream.dtype)
        fixed = bool(shape) and all(s > 0 for s in shape)
        frame_bytes = self.dtype.itemsize * int(np.prod(shape)) if fixed else 8 << 20
        self.frame_shape = tuple(shape) if fixed else None
        self.frame_bytes = frame_bytes
        self.max_points = max(1, max_bytes // max(frame_bytes, 1))
        # entries per XREAD: one until the points per entry are known, so that the first
        # reply is bounded too (64 entries of 8 points were 256 MB at 512^2)
        self.count = 1
        self.points_per_entry: int | None = None
        self.index = 0
        self.sealed = False
        self.last_read_full = False  # the last read hit `count`: more frames are waiting
        self._allocate = allocate
        encoding = self._events.encoding
        self.direct = (fixed and frame_bytes > 0 and isinstance(encoding, dict)
                       and encoding.get("type") == "numeric")
        self._conn = None
        self._resp: RespReader | None = None

    def read(self, timeout: float | None, max_points: int | None = None) -> list | np.ndarray:
        """Frames published since the last read; waits up to `timeout` s (None: don't wait).
        `max_points` bounds the frames asked for further (at least one entry is)."""
        if self.sealed:
            return []
        if self.points_per_entry is not None:
            limit = self.max_points if max_points is None else min(self.max_points, max_points)
            self.count = max(1, limit // self.points_per_entry)
        block = None if timeout is None else max(1, int(timeout * 1000))
        if self.direct:
            return self._read_direct(block)
        events = self._events
        raw = events._data_store._redis.xread({events.key: self.index}, block=block, count=self.count)
        if not raw:
            self.last_read_full = False
            return []
        entries = [StreamEntry.from_raw(item) for item in raw[0][1]]
        index, data = events._decode_entries(entries)
        self._advance(index, len(data), [e.length for e in entries if not e.is_seal],
                      len(entries), entries[-1].is_seal)
        return data

    def _advance(self, index: int, n: int, points: list[int], n_entries: int, sealed: bool) -> None:
        if index > self.index:
            raise ScanError(
                f"frames {self.index}..{index - 1} were trimmed from Redis before the daemon "
                "read them (daemon lagging behind the memory tracker)"
            )
        self.index = index + n
        self.sealed = sealed
        self.last_read_full = n_entries >= self.count
        if points:
            self.points_per_entry = max(1, round(sum(points) / len(points)))
        if sealed:
            self.close()

    def _read_direct(self, block: int | None) -> np.ndarray | list:
        out: np.ndarray | None = None  # (frames, H, W)
        raw: memoryview | None = None  # its bytes
        used = 0
        fb = self.frame_bytes

        def sink(nbytes: int) -> memoryview:
            nonlocal out, raw, used
            if out is None or used + nbytes > raw.nbytes:
                # room for the frames asked for, else (entries bigger than those seen
                # before) twice as much as before
                expected = self.count * (self.points_per_entry or 1)
                want = max(-(-(used + nbytes) // fb), expected if out is None else 2 * len(out))
                bigger = (self._allocate(want, self.frame_shape, self.dtype) if self._allocate is not None
                          else np.empty((want, *self.frame_shape), dtype=self.dtype))
                if not bigger.flags.c_contiguous:
                    raise ValueError("allocate() must give a C-contiguous array")
                braw = memoryview(bigger.reshape(-1).view(np.uint8))
                if used:
                    braw[:used] = raw[:used]
                out, raw = bigger, braw
            used += nbytes
            return raw[used - nbytes : used]

        args: list = ["XREAD", "COUNT", self.count]
        if block is not None:
            args += ["BLOCK", block]
        args += ["STREAMS", self._events.key, self.index]
        if self._conn is None:
            pool = self._events._data_store._redis.connection_pool
            self._conn = pool.connection_class(**pool.connection_kwargs)
        conn = self._conn
        try:
            conn.send_command(*args)
            if self._resp is None or self._resp.sock is not conn._sock:
                self._resp = RespReader(conn._sock)
            reply = self._resp.read(sink)
        except BaseException:
            # a reply read in part leaves the connection unusable
            conn.disconnect()
            self._resp = None
            raise
        if not reply:
            self.last_read_full = False
            return []
        entries = reply[0][1]
        first, n, points, sealed = None, 0, [], False
        for entry_id, fields in entries:
            fields = dict(fields) if fields and isinstance(fields[0], tuple) else dict(zip(fields[::2], fields[1::2]))
            eid = int(entry_id.split(b"-")[0])
            if eid >= _MAX_STREAM_ID:
                sealed = True
                if first is None:
                    first = int(fields[b"id"])
                continue
            length = int(fields.get(b"len", 1))
            payload = fields.get(b"payload")
            if payload is None or len(payload) != length * fb:
                raise ScanError(
                    f"entry {eid} of {self._events.name}: {0 if payload is None else len(payload)} bytes "
                    f"for {length} frames of {self.frame_shape} {self.dtype}"
                )
            if first is None:
                first = eid
            points.append(length)
            n += length
        self._advance(first, n, points, len(entries), sealed)
        if n == 0:
            return []
        assert used == n * fb
        return out[:n]

    def close(self) -> None:
        """Close the reader's own connection (reopened by the next read)."""
        if self._conn is not None:
            self._conn.disconnect()
            self._conn = None
            self._resp = None


class ScanIdle(ScanError):
    """A scan that stopped sending points without being closed."""


class LiveFrameSource:
    """Batches of a live scan's frames and positions, in acquisition order.

    Frames held in memory are bounded: Lima files are read at most `read_ahead` frames
    beyond the last batch handed out (default one batch: reading happens between batches,
    on the worker's thread, so more would not overlap anything). A daemon that falls
    behind a Lima scan would otherwise read every closed file at once: 300 frames of 2048^2
    took the daemon to 3.9 GB in the benchmark. Plain array frames are bounded by the size
    of one Redis read (`ArrayFrameReader`). Consecutive reads of either kind go into one
    batch-sized buffer while it has room (`_allocate_tail`); buffers are recycled.
    """

    def __init__(self, scan, geometry: ScanGeometry, batch_size: int = 64, read_timeout: float = 0.2,
                 max_delay: float = 0.1, read_ahead: int | None = None, idle_timeout: float = 0.0) -> None:
        """`idle_timeout` > 0: a ScanError after that many seconds without a new point in a
        scan that is not closed (a publisher that died leaves its scan open for ever)."""
        self.scan = scan
        self.idle_timeout = idle_timeout
        self.geometry = geometry
        self.batch_size = batch_size
        self.read_ahead = max(1, read_ahead if read_ahead is not None else batch_size)
        self.read_timeout = min(read_timeout, max_delay) if max_delay > 0 else read_timeout
        self.max_delay = max_delay
        self._pending_since: float | None = None
        streams = scan.streams
        self.image = streams[geometry.image_stream]
        self.is_lima = getattr(self.image, "plugin", None) == "lima"
        # scalar channels read per point: the motors, and the monitor under a reserved key
        self.motor_streams = {name.split(":", 1)[1]: streams[name] for name in geometry.motor_streams}
        if geometry.monitor_stream:
            self.motor_streams[MONITOR_KEY] = streams[geometry.monitor_stream]
        # Lima streams carry a small JSON status: read with the motors. Plain array frames
        # are read separately, in byte-bounded batches.
        cursor_streams = list(self.motor_streams.values()) + ([self.image] if self.is_lima else [])
        self._group = CursorGroup(cursor_streams) if cursor_streams else None
        self._array = None if self.is_lima else ArrayFrameReader(self.image, allocate=self._allocate_tail)
        self._cursors_done = self._group is None
        self._positions: dict[str, list[np.ndarray]] = {m: [] for m in self.motor_streams}
        self._n_positions = dict.fromkeys(self.motor_streams, 0)
        self._frames: list[np.ndarray] = []
        self._n_frames = 0  # frames received (array) or read from files (Lima)
        self._announced = 0  # frames the image stream says exist
        self._lima_backlog = 0  # frames in closed Lima files not read yet (read-ahead bound)
        self._owned: list[weakref.ref] = []  # batch buffers this source allocated (alive)
        self._free: np.ndarray | None = None  # a buffer whose batches all came back
        self._going_round = False  # the last read went round the tail buffer, not to a new one
        #: the consumer's way to give batches back when a read finds no room (it waits for
        #: its own work on them, `recycle`s some, and says whether it did): set, the reads
        #: wait for the consumer instead of taking a new buffer
        self.reclaim: Callable[[], bool] | None = None
        #: the frames (index ranges) of batches handed out and not recycled yet, per buffer
        #: (by id): no read goes where they are (`_free_until`)
        self._lent: dict[int, list[tuple[int, int]]] = {}
        # the buffer plain array reads are appended to, and how many frames it holds
        self._tail: np.ndarray | None = None
        self._tail_used = 0
        self._emitted = 0
        self._sealed = False
        self.frame_shape: tuple[int, int] | None = geometry.frame_shape if (
            geometry.frame_shape and all(s > 0 for s in geometry.frame_shape)) else None

    @property
    def frames_received(self) -> int:
        return self._n_frames

    @property
    def behind(self) -> bool:
        """True when frames are known to be waiting: received but not handed out, announced
        by Lima but not read yet, or the last Redis read was cut at its size bound."""
        if self._n_frames > self._emitted:
            return True
        if self.is_lima:
            return self._announced > self._n_frames
        return self._array is not None and self._array.last_read_full

    def _take_views(self, views) -> None:
        for stream, view in views.items():
            if stream is self.image:  # Lima status: frames announced
                self._announced = max(self._announced, view.index + len(view))
                continue
            for motor, mstream in self.motor_streams.items():
                if stream is mstream:
                    try:
                        values = np.asarray(view.get_data(), dtype=np.float64).reshape(-1)
                    except IndexNoMoreThereError:
                        raise ScanError(
                            f"positions of {motor} were trimmed from Redis before the daemon read them"
                        ) from None
                    self._positions[motor].append(values)
                    self._n_positions[motor] += values.size

    def _read_once(self, wait: bool = True) -> bool:
        """One round of reads; True if anything new arrived. `wait` False never blocks."""
        before = (self._n_frames, self._announced, sum(self._n_positions.values()))
        if not self._cursors_done:
            # don't block on the motors when frames are read separately and may be waiting,
            # nor while closed Lima files hold frames not read yet
            waiting = not wait or self._array is not None or self._lima_backlog > 0
            timeout = None if waiting else self.read_timeout
            try:
                views = self._group.read(block=timeout is not None, timeout=timeout or 0)
            except EndOfStream:
                self._cursors_done = True
                views = {}
            self._take_views(views)
        if self._array is not None:
            # wait for frames only when nothing arrived on the other streams
            got = (self._announced, sum(self._n_positions.values())) != before[1:]
            data = self._array.read(self.read_timeout if wait and not got else None, self._tail_room())
            if len(data):
                # free-shape streams decode to a list of arrays: check each frame first
                self._check_shape(data, self._n_frames)
                self._append_frames(np.stack(data) if isinstance(data, list) else np.asarray(data))
                self._n_frames += len(data)
            self._sealed = self._array.sealed and self._cursors_done
        else:
            self._read_lima()
        return (self._n_frames, self._announced, sum(self._n_positions.values())) != before

    def _read_lima(self) -> None:
        """Read the frames of closed Lima files, up to `read_ahead` beyond the last batch.

        Once the image stream is sealed every announced frame is in a closed file; the
        scan counts as sealed only when all of them have been read.
        """
        if self._cursors_done:
            readable = self._announced
        else:
            readable = min(self._announced, lima_readable(self.image))
        stop = min(readable, self._emitted + self.read_ahead)
        if stop > self._n_frames:
            # after the frames of the last read when its buffer has room: a live scan's
            # files close one by one and are read while earlier frames wait for their
            # positions, and a new batch buffer for each such read held two (2 x 256 MB
            # at 2048^2)
            frames = read_lima_frames(self.image, self._n_frames, stop, self._allocate_tail)
            self._check_shape(frames, self._n_frames)
            self._append_frames(frames)
            self._n_frames += frames.shape[0]
        self._lima_backlog = readable - self._n_frames
        self._sealed = self._cursors_done and self._n_frames >= self._announced

    def _allocate(self, count: int, frame_shape: tuple[int, ...], dtype) -> np.ndarray:
        """Room for `count` frames at the start of a buffer that later reads go round
        (`_allocate_tail`): the one kept by `recycle` when it fits, else a new one with room
        for at least a whole batch."""
        buf = self._free
        self._free = None
        if buf is not None and buf.shape[1:] == tuple(frame_shape) and buf.dtype == dtype and len(buf) >= count:
            return buf[:count]
        self._owned = [ref for ref in self._owned if ref() is not None]
        alive = {id(ref()) for ref in self._owned}  # a freed buffer's id may be taken again
        self._lent = {key: n for key, n in self._lent.items() if key in alive}
        buf = np.empty((max(count, self.batch_size), *frame_shape), dtype=dtype)
        self._owned.append(weakref.ref(buf))
        return buf[:count]

    def _allocate_tail(self, count: int, frame_shape: tuple[int, ...], dtype) -> np.ndarray:
        """Room for `count` frames: right after the last frames read, when the buffer
        holding them has room left, else from that buffer's start again when the frames
        there have come back (`recycle`; with `reclaim` set, after waiting for the consumer to
        give some back), else as `_allocate`. So consecutive reads fill
        one batch-sized buffer, and a batch is handed out as one view of it, not copied
        together from several reads; and a consumer that recycles its batches a little
        later (the daemon's full-resolution updates run behind its reads) goes round one
        buffer instead of holding two."""
        tail = self._tail
        if tail is not None and tail.shape[1:] == tuple(frame_shape) and tail.dtype == dtype and count <= len(tail):
            found = self._room(count)
            if found is not None:
                start = found[0]
                if start == 0:  # the reads go round: a buffer kept for want of room goes
                    self._free, self._going_round = None, True
                return tail[start : start + count]
        self._going_round = False
        buf = self._allocate(count, frame_shape, dtype)
        self._tail, self._tail_used = root_of(buf), 0
        return buf

    def _free_until(self, root: np.ndarray, start: int) -> int:
        """The end of the free frames of `root` from `start` on: the first frame after it
        that is lent out (a batch not recycled yet) or not handed out yet, else its end."""
        end = len(root)
        spans = list(self._lent.get(id(root), []))
        spans += [_span(root, chunk) for chunk in self._frames if root_of(chunk) is root]
        for first, stop in spans:
            if stop > start:
                end = min(end, max(first, start))
        return end

    def _room(self, want: int) -> tuple[int, int] | None:
        """Where in the tail buffer the next read goes and how many frames fit there: after
        the last frames read, else from its start again; while fewer than `want` fit, the
        consumer is asked to give batches back (`reclaim`). None when they do not fit."""
        while self._tail is not None:
            for start in (self._tail_used, 0):
                room = self._free_until(self._tail, start) - start
                if room >= want:
                    return start, room
            if self.reclaim is None or not self.reclaim():
                break
        return None

    def _tail_room(self) -> int:
        """Frames the next plain array read should ask for at most: those that fit in the
        buffer the last read went into (`_room`), else a batch (a new buffer's size)."""
        found = self._room(1)
        return self.batch_size if found is None else found[1]

    def _append_frames(self, frames: np.ndarray) -> None:
        """Frames read, after those held; a read that continues the previous one in the same
        buffer extends its view."""
        root = root_of(frames)
        if root is self._tail and len(frames) and frames.flags.c_contiguous:
            self._tail_used = _span(root, frames)[1]
            last = self._frames[-1] if self._frames else None
            if (last is not None and root_of(last) is root and last.flags.c_contiguous
                    and last.ctypes.data + last.nbytes == frames.ctypes.data):
                self._frames[-1] = root[_span(root, last)[0] : self._tail_used]
                return
        self._frames.append(frames)

    def recycle(self, frames: np.ndarray) -> None:
        """The consumer is done with a batch's frames (once per batch): their place in the
        buffer may take later reads.

        Only for a consumer that keeps no reference to them (the daemon asks its pipeline,
        `ScanPipeline.retains_frames`). No read goes where frames not handed out yet are,
        or batches the consumer has not given back (the daemon's full-resolution updates
        run behind its reads, `behind_preview`): a consumer may recycle its batches late,
        and in any order. Frames this source did not allocate are left alone.
        """
        base = root_of(frames)
        if not any(ref() is base for ref in self._owned):
            return
        lent = self._lent.get(id(base), [])
        span = _span(base, frames)
        if span in lent:
            lent.remove(span)
        # the tail buffer's frames that came back take later reads there (`_allocate_tail`);
        # another buffer (the tail had no room for a read: the consumer was behind) is kept
        # whole once all its batches are back, for the next time the tail has no room,
        # unless the reads have gone round the tail since (the consumer caught up)
        if (base is not self._tail and not self._going_round and not lent
                and not any(root_of(chunk) is base for chunk in self._frames)):
            self._free = base

    def _check_shape(self, frames, first_index: int) -> None:
        for k, frame in enumerate(frames):
            shape = tuple(np.shape(frame))
            if len(shape) != 2:
                raise ScanError(f"frame {first_index + k} is not a 2D image (shape {shape})")
            if self.frame_shape is None:
                self.frame_shape = shape  # type: ignore[assignment]
            elif shape != self.frame_shape:
                raise ScanError(
                    f"frame {first_index + k} has shape {shape}, expected {self.frame_shape}"
                )

    def _ready(self) -> int:
        return min([self._n_frames, *self._n_positions.values()]) - self._emitted

    def _drain(self) -> Iterator[Batch]:
        while self._ready() > 0:
            yield self._pop(min(self.batch_size, self._ready()))

    def _pop(self, count: int) -> Batch:
        # take whole chunks (and a slice of the last) until `count` frames: the frames left
        # stay views of their chunks. Concatenating everything held on every pop copied the
        # remainder again for each batch (one 512-frame Redis read at 512^2 = 16 batches).
        taken, n = [], 0
        while n < count:
            chunk = self._frames[0]
            need = count - n
            if len(chunk) <= need:
                taken.append(self._frames.pop(0))
            else:
                taken.append(chunk[:need])
                self._frames[0] = chunk[need:]
            n += len(taken[-1])
        batch_frames = taken[0] if len(taken) == 1 else np.concatenate(taken)
        root = root_of(batch_frames)
        if any(ref() is root for ref in self._owned):
            self._lent.setdefault(id(root), []).append(_span(root, batch_frames))
        positions = {}
        for motor, chunks in self._positions.items():
            values = np.concatenate(chunks) if len(chunks) != 1 else chunks[0]
            positions[motor] = values[:count]
            self._positions[motor] = [values[count:]] if values.size > count else []
        monitor = positions.pop(MONITOR_KEY, None)
        batch = Batch(self._emitted, batch_frames, positions, monitor)
        self._emitted += count
        self._pending_since = None
        return batch

    def batches(self, stop_requested=lambda: False) -> Iterator[Batch]:
        """Yield batches until the scan's streams end (or `stop_requested()` is true).

        A batch is yielded when `batch_size` points are complete, as soon as the streams
        are idle (a read that does not wait finds nothing new), or when the oldest complete
        point has waited `max_delay` seconds while points keep arriving (the latency
        budget). So a slow scan's points go out at once, and a fast scan's, or those that
        piled up while the worker was busy, go out in full batches. If reading fails (store
        gone, bad frame), the points already complete are yielded first, so the maps keep
        them, then the error propagates. The plain array reader's own connection is closed
        when the generator ends, however it ends.
        """
        try:
            yield from self._batches(stop_requested)
        finally:
            if self._array is not None:
                self._array.close()

    def _batches(self, stop_requested) -> Iterator[Batch]:
        wait = True
        last_data = time.monotonic()
        while not self._sealed:
            if stop_requested():
                return
            try:
                views = self._read_once(wait)
            except Exception:
                yield from self._drain()
                raise
            now = time.monotonic()
            if views:
                last_data = now
            elif self.idle_timeout and now - last_data > self.idle_timeout:
                yield from self._drain()
                raise ScanIdle(f"no new point for {self.idle_timeout:g} s and the scan is not closed: "
                               "its publisher stopped (scan_idle_timeout)")
            while self._ready() >= self.batch_size:
                yield self._pop(self.batch_size)
            if self._ready() > 0:
                now = time.monotonic()
                if self._pending_since is None:
                    self._pending_since = now
                if not views or now - self._pending_since >= self.max_delay:
                    yield self._pop(self._ready())
            # after new data, look again without waiting: pending points go out as soon
            # as the streams are idle
            wait = not views
        yield from self._drain()
        leftover = {m: n - self._emitted for m, n in self._n_positions.items()}
        if self._n_frames != self._emitted or any(leftover.values()):
            logger.warning(
                "scan %s ended with unpaired points: %d frames, positions %s",
                self.scan.key, self._n_frames, self._n_positions,
            )
