"""Frames of an uncompressed HDF5 dataset read straight from the file with `pread`.

Why: HDF5 reads a selection of a chunk larger than its chunk cache slowly. The fits read a
962-frame 2048^2 scan (one 8 MiB chunk per frame, uncompressed, in the page cache) in bands
of detector rows: a 136-row band took 1.40 s through h5py's `read_direct` (0.38 GB/s) and
0.11 s copied from the file's pages (4.9 GB/s); that scan's fits (the next band read on
a thread, started from whole-scan moments) took 70 s reading through h5py, 56 s straight
from the file.
A band's rows are contiguous in each frame, so each frame is one `pread` into the band. Not
a memory map: a map's pages count in the process's RSS (11 GB for that scan's fits).

Only layouts whose bytes are the frames as they are qualify: a contiguous dataset, or chunks
that each hold whole frames (`(k, H, W)`), every chunk written, no filter (compression,
shuffle, checksum), a native numeric type, a plain file (not virtual, not external, the
default file driver). Anything else (Lima's compressed files, a virtual dataset) gives None
and is read through h5py as before: `read_frames` chooses.
"""

from __future__ import annotations

import logging
import os

import h5py
import numpy as np

logger = logging.getLogger(__name__)


class PlainFrames:
    """Where a dataset's frames are in its file, and reads of them with `os.preadv`.

    `chunk_offsets[c]` is the file offset of the `frames_per_chunk` frames starting at frame
    `c * frames_per_chunk` (one entry for a contiguous dataset, whose frames are all back to
    back). The file is opened read-only once, apart from h5py's handle.
    """

    def __init__(self, path: str, dtype: np.dtype, shape: tuple[int, int, int], chunk_offsets: np.ndarray,
                 frames_per_chunk: int) -> None:
        self.dtype = np.dtype(dtype)
        self.shape = shape
        self.frames_per_chunk = frames_per_chunk
        self._offsets = np.asarray(chunk_offsets, dtype=np.int64)
        self._fd = os.open(path, os.O_RDONLY)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()

    @classmethod
    def of(cls, dataset: h5py.Dataset) -> PlainFrames | None:
        """The dataset's frames located in its file, or None when its layout is not them."""
        try:
            return cls._of(dataset)
        except (OSError, ValueError, RuntimeError) as exc:  # an odd file: h5py reads it
            logger.debug("frames of %s not read directly: %s", dataset.name, exc)
            return None

    @classmethod
    def _of(cls, dataset: h5py.Dataset) -> PlainFrames | None:
        if dataset.ndim != 3 or dataset.is_virtual or dataset.external or dataset.size == 0:
            return None
        if dataset.dtype.kind not in "uif" or not dataset.dtype.isnative:
            return None
        if dataset.file.driver not in ("sec2", "stdio"):
            return None
        if dataset.id.get_create_plist().get_nfilters() != 0:
            return None
        n, height, width = (int(v) for v in dataset.shape)
        frame_bytes = height * width * dataset.dtype.itemsize
        # HDF5's offsets are from the file's start (a user block included)
        if dataset.chunks is None:
            offset = dataset.id.get_offset()
            if offset is None:  # never written
                return None
            return cls(dataset.file.filename, dataset.dtype, (n, height, width), np.array([offset]), n)
        k, ch, cw = dataset.chunks
        if (ch, cw) != (height, width):
            return None
        n_chunks = -(-n // k)
        if dataset.id.get_num_chunks() != n_chunks:  # some chunk never written (fill value)
            return None
        offsets = np.empty(n_chunks, dtype=np.int64)
        for i in range(n_chunks):
            info = dataset.id.get_chunk_info(i)
            if info.filter_mask != 0 or info.size != k * frame_bytes or info.byte_offset is None:
                return None
            offsets[info.chunk_offset[0] // k] = info.byte_offset
        return cls(dataset.file.filename, dataset.dtype, (n, height, width), offsets, k)

    def read(self, start: int, stop: int, out: np.ndarray, rows: tuple[int, int] | None = None) -> None:
        """Frames [start, stop) (their detector rows [r0, r1) if given) into `out[: stop - start]`."""
        _, height, width = self.shape
        r0, r1 = rows if rows is not None else (0, height)
        row_bytes = width * self.dtype.itemsize
        for i in range(start, stop):
            chunk, within = divmod(i, self.frames_per_chunk)
            offset = int(self._offsets[chunk]) + (within * height + r0) * row_bytes
            target = out[i - start]
            if target.flags.c_contiguous and target.dtype == self.dtype:
                self._read_into(memoryview(target).cast("B"), offset)
            else:
                part = np.empty((r1 - r0, width), self.dtype)
                self._read_into(memoryview(part).cast("B"), offset)
                target[...] = part

    def _read_into(self, buffer: memoryview, offset: int) -> None:
        done = 0
        while done < len(buffer):
            got = os.preadv(self._fd, [buffer[done:]], offset + done)
            if got == 0:
                raise OSError(f"the file ends before frame data at offset {offset + done}")
            done += got


def read_frames(dataset: h5py.Dataset, plain: PlainFrames | None, start: int, stop: int, out: np.ndarray,
                rows: tuple[int, int] | None = None) -> None:
    """Frames [start, stop) of `dataset` (rows [r0, r1) if given) into `out[: stop - start]`,
    straight from the file where they are stored plainly, else through h5py."""
    if plain is not None:
        plain.read(start, stop, out, rows)
        return
    sel = np.s_[start:stop] if rows is None else np.s_[start:stop, rows[0] : rows[1], :]
    dataset.read_direct(out, sel, np.s_[0 : stop - start])
