"""Publish a scan the way BLISS does: blissdata streams in Redis plus the BLISS HDF5 file.

Used by the simulator and by `replay`. The image stream is either a plain array stream
(frames in Redis) or a Lima-plugin stream (Redis holds only a JSON status; frames are in
HDF5 files written as the scan goes, as a PCO camera's Lima server saves them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from blissdata.redis_engine.store import DataStore
from blissdata.streams.default import Stream
from blissdata.streams.lima import LimaStream

logger = logging.getLogger(__name__)

IMAGE_MODES = ("array", "lima")
LIMA_DATA_PATH = "/entry_0000/measurement/data"
FLUSH_PERIOD = 0.5  # s between flushes of the BLISS scan file while the scan runs


@dataclass
class ScanDescription:
    """Identity and scan_info of one scan to publish."""

    session: str
    number: int
    name: str  # e.g. "ascan", "amesh", "loopscan"
    title: str
    filename: Path  # the BLISS dataset file the scan is written into
    detector: str
    frame_shape: tuple[int, int]
    npoints: int
    motors: Sequence[tuple[str, float, float, int]] = ()  # (name, start, stop, points)
    zigzag: bool = False
    dtype: str = "uint16"
    count_time: float = 0.1
    static_positioners: Mapping[str, float] = field(default_factory=dict)
    declared_frame_shape: tuple[int, int] | None = None  # (-1, -1) to allow any shape
    monitor: str | None = None  # a counter published per point (e.g. "mon"), as "p201:<name>"
    #: the ESRF data policy's identity (all three set: published with data_policy "ESRF")
    proposal: str | None = None
    collection: str | None = None
    dataset: str | None = None

    def scan_info(self) -> dict:
        """A BLISS-like scan_info (the fields our daemon and BLISS tools read)."""
        channels: dict[str, dict] = {}
        for axis_id, (name, start, stop, points) in enumerate(self.motors):
            channels[f"axis:{name}"] = {
                "display_name": name,
                "dim": 0,
                "axis_id": axis_id,
                "axis_points": int(points),
                "axis_kind": "backnforth" if (self.zigzag and axis_id == 0) else "forth",
                "start": float(start),
                "stop": float(stop),
                "points": int(self.npoints),
            }
        channels[f"{self.detector}:image"] = {"dim": 2, "display_name": self.detector}
        if self.monitor:
            channels[f"p201:{self.monitor}"] = {"dim": 0, "display_name": self.monitor}
        info = {
            "name": self.name,
            "type": self.name,
            "title": self.title,
            "scan_nb": self.number,
            "session_name": self.session,
            "npoints": int(self.npoints),
            "count_time": self.count_time,
            "filename": str(self.filename),
            "save": True,
            "data_dim": max(1, len(self.motors)),
            "channels": channels,
            "positioners": {
                "positioners_start": {**self.static_positioners, **{m[0]: m[1] for m in self.motors}},
            },
            "acquisition_chain": {
                "axis": {
                    "devices": ["axis", "timer", self.detector],
                    "scalars": ["timer:elapsed_time", "timer:epoch"],
                    "images": [f"{self.detector}:image"],
                    "master": {"scalars": [f"axis:{m[0]}" for m in self.motors], "images": []},
                }
            },
        }
        if self.zigzag:
            info["zigzag"] = True
        for i, (_, _, _, points) in enumerate(self.motors[:2]):
            info[f"npoints{i + 1}"] = int(points)
        return info


def n_points(positions: Mapping[str, np.ndarray], frames: np.ndarray | None) -> int:
    """Points in a block: the length of the positions, else of the frames, else one."""
    if positions:
        return len(next(iter(positions.values())))
    return 1 if frames is None else len(frames)


def write_frames(dset: h5py.Dataset, first: int, frames: np.ndarray) -> None:
    """Frames into a dataset chunked one frame per chunk, uncompressed, from `first` on.

    Direct chunk writes, as Lima's own HDF5 saving does: 2048^2 uint16 frames went in at
    ~370 frames/s, against 70-160 through h5py's selection writes (measured here).
    """
    frames = np.ascontiguousarray(frames, dtype=dset.dtype)
    for k, frame in enumerate(frames):
        dset.id.write_direct_chunk((first + k, 0, 0), frame)


class BlissScanFile:
    """Writes one scan into a BLISS dataset file, point by point.

    `/<n>.1/instrument/<det>/data`, `/<n>.1/measurement/<det>`,
    `/<n>.1/instrument/positioners/<motor>`, `/<n>.1/measurement/<motor>`, `title`.
    In Lima mode the detector dataset is a virtual dataset over the Lima files.
    """

    def __init__(self, desc: ScanDescription, lima_files: Sequence[Path] | None = None) -> None:
        self.desc = desc
        self.lima_files = lima_files
        desc.filename.parent.mkdir(parents=True, exist_ok=True)
        self._file = h5py.File(desc.filename, "a")
        root = f"{desc.number}.1"
        if root in self._file:
            raise FileExistsError(f"scan {root} already exists in {desc.filename}")
        self.entry = self._file.create_group(root)
        self.entry.attrs["NX_class"] = "NXentry"
        self.entry["title"] = desc.title
        self.entry["start_time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        inst = self.entry.create_group("instrument")
        inst.attrs["NX_class"] = "NXinstrument"
        self.measurement = self.entry.create_group("measurement")
        self.measurement.attrs["NX_class"] = "NXcollection"
        self.positioners = inst.create_group("positioners")
        self.positioners.attrs["NX_class"] = "NXcollection"
        for name, value in desc.static_positioners.items():
            self.positioners[name] = value
        self._motor_dsets = {}
        for name, *_ in desc.motors:
            grp = inst.create_group(name)
            grp.attrs["NX_class"] = "NXpositioner"
            dset = grp.create_dataset("value", shape=(0,), maxshape=(None,), dtype="f8")
            self._motor_dsets[name] = dset
            self.positioners[name] = h5py.SoftLink(dset.name)
            self.measurement[name] = h5py.SoftLink(dset.name)
        self._monitor = None
        if desc.monitor:
            grp = inst.create_group(desc.monitor)
            grp.attrs["NX_class"] = "NXdetector"
            self._monitor = grp.create_dataset("data", shape=(0,), maxshape=(None,), dtype="f8")
            self.measurement[desc.monitor] = h5py.SoftLink(self._monitor.name)
        self.detector_group = inst.create_group(desc.detector)
        self.detector_group.attrs["NX_class"] = "NXdetector"
        self._frames = None
        if lima_files is None:
            h, w = desc.frame_shape
            self._frames = self.detector_group.create_dataset(
                "data", shape=(0, h, w), maxshape=(None, None, None), dtype=desc.dtype,
                chunks=(1, h, w),
            )
            self.measurement[desc.detector] = h5py.SoftLink(self._frames.name)
        self.count = 0
        self._flushed = time.monotonic()

    def append(self, frames: np.ndarray | None, positions: Mapping[str, np.ndarray],
               monitor: np.ndarray | None = None) -> None:
        """Points `count .. count + k`: positions (motor -> (k,)), frames (k, H, W) or None."""
        end = self.count + n_points(positions, frames)
        for name, dset in self._motor_dsets.items():
            dset.resize((end,))
            dset[self.count : end] = positions[name]
        if self._monitor is not None:
            self._monitor.resize((end,))
            self._monitor[self.count : end] = monitor
        if self._frames is not None and frames is not None:
            if self._frames.shape[1:] != frames.shape[1:]:
                self._frames.resize((self._frames.shape[0], *frames.shape[1:]))
            self._frames.resize((end, *self._frames.shape[1:]))
            write_frames(self._frames, self.count, frames)
        self.count = end
        # flushed at most every FLUSH_PERIOD, as the BLISS writer does: a flush per point
        # costs ~14 ms (2048^2 or blocks of 512^2 frames), more than sending the point
        now = time.monotonic()
        if now - self._flushed >= FLUSH_PERIOD:
            self._file.flush()
            self._flushed = now

    def close(self, lima_counts: Sequence[int] = ()) -> None:
        if self.lima_files is not None and self.count:
            h, w = self.desc.frame_shape
            layout = h5py.VirtualLayout(shape=(self.count, h, w), dtype=self.desc.dtype)
            offset = 0
            base = self.desc.filename.parent
            for path, n in zip(self.lima_files, lima_counts):
                if n == 0:
                    continue
                rel = str(Path(path).relative_to(base)) if Path(path).is_relative_to(base) else str(path)
                layout[offset : offset + n] = h5py.VirtualSource(rel, LIMA_DATA_PATH, shape=(n, h, w))
                offset += n
            dset = self.detector_group.create_virtual_dataset("data", layout)
            self.measurement[self.desc.detector] = h5py.SoftLink(dset.name)
        self.entry["end_time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        self._file.close()


class LimaFileWriter:
    """Writes frames into Lima-style HDF5 files, `frames_per_file` frames each."""

    def __init__(self, directory: Path, detector: str, scan_number: int, frames_per_file: int,
                 frame_shape: tuple[int, int], dtype: str) -> None:
        self.directory = directory / f"scan{scan_number:04d}"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.template = str(self.directory / f"{detector}_%04d.h5")
        self.frames_per_file = frames_per_file
        self.frame_shape = frame_shape
        self.dtype = dtype
        self.files: list[Path] = []
        self.counts: list[int] = []
        self._file: h5py.File | None = None
        self._dset = None

    def write(self, frames: np.ndarray) -> None:
        """Append frames (k, H, W), closing each file when it holds `frames_per_file`.

        Files are not flushed frame by frame: readers only open closed files (blissdata's
        rule), as with Lima's own HDF5 saving.
        """
        done = 0
        while done < len(frames):
            if self._file is None:
                path = Path(self.template % len(self.files))
                self._file = h5py.File(path, "w")
                self._dset = self._file.create_dataset(
                    LIMA_DATA_PATH, shape=(0, *self.frame_shape),
                    maxshape=(self.frames_per_file, *self.frame_shape),
                    dtype=self.dtype, chunks=(1, *self.frame_shape),
                )
                self.files.append(path)
                self.counts.append(0)
            n = self.counts[-1]
            take = min(len(frames) - done, self.frames_per_file - n)
            self._dset.resize((n + take, *self.frame_shape))
            write_frames(self._dset, n, frames[done : done + take])
            self.counts[-1] = n + take
            done += take
            if n + take == self.frames_per_file:
                self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class ScanPublisher:
    """One scan published through blissdata, with its BLISS file (and Lima files)."""

    def __init__(
        self,
        data_store: DataStore,
        desc: ScanDescription,
        image_mode: str | None = "array",
        frames_per_file: int = 10,
        omit_motor_streams: Sequence[str] = (),
    ) -> None:
        """`image_mode` None publishes no image stream and `omit_motor_streams` leaves out
        declared motor streams: faults a beamline produces, which tests reproduce."""
        if image_mode is not None and image_mode not in IMAGE_MODES:
            raise ValueError(f"image mode must be one of {IMAGE_MODES}")
        self.desc = desc
        self.image_mode = image_mode
        identity = {
            "name": desc.name,
            "number": desc.number,
            "data_policy": "no_policy",
            "session": desc.session,
            "path": str(desc.filename),
        }
        if desc.proposal and desc.collection and desc.dataset:
            identity.update(data_policy="ESRF", proposal=desc.proposal, collection=desc.collection,
                            dataset=desc.dataset)
        self.scan = data_store.create_scan(identity, info=desc.scan_info())
        self.motor_streams = {
            name: self.scan.create_stream(Stream.make_definition(f"axis:{name}", "float64"))
            for name, *_ in desc.motors
            if name not in omit_motor_streams
        }
        self.monitor_stream = (
            self.scan.create_stream(Stream.make_definition(f"p201:{desc.monitor}", "float64"))
            if desc.monitor else None
        )
        self.timer_streams = {
            name: self.scan.create_stream(Stream.make_definition(f"timer:{name}", "float64"))
            for name in ("elapsed_time", "epoch")
        }
        image_name = f"{desc.detector}:image"
        shape = desc.declared_frame_shape or desc.frame_shape
        self.lima: LimaFileWriter | None = None
        if image_mode == "lima":
            self.lima = LimaFileWriter(
                desc.filename.parent / desc.filename.stem, desc.detector, desc.number,
                frames_per_file, desc.frame_shape, desc.dtype,
            )
            definition = LimaStream.make_definition(
                name=image_name, dtype=desc.dtype, shape=list(shape),
                server_url=f"id00/limaccds/{desc.detector}", buffer_max_number=16,
                frames_per_acquisition=desc.npoints, acquisition_offset=0,
                saving={
                    "file_path": self.lima.template, "data_path": LIMA_DATA_PATH,
                    "file_format": "hdf5", "file_offset": 0, "frames_per_file": frames_per_file,
                },
            )
        else:
            definition = Stream.make_definition(image_name, desc.dtype, tuple(shape))
        self.image_stream = self.scan.create_stream(definition) if image_mode else None
        self.file = BlissScanFile(desc, lima_files=self.lima.files if self.lima else None)
        self.index = 0
        self._t0 = time.time()

    @property
    def key(self) -> str:
        return self.scan.key

    def start(self) -> None:
        self.scan.prepare()
        self.scan.start()
        self._t0 = time.time()

    def publish(self, positions: Mapping[str, float], frame: np.ndarray | None,
                monitor: float | None = None) -> None:
        """One point of the scan: motor positions, counters, then the frame."""
        self.publish_points(
            {name: np.array([value], dtype=np.float64) for name, value in positions.items()},
            None if frame is None else np.asarray(frame)[np.newaxis],
            None if monitor is None else np.array([monitor], dtype=np.float64),
        )

    def publish_points(self, positions: Mapping[str, np.ndarray], frames: np.ndarray | None,
                       monitor: np.ndarray | None = None) -> None:
        """k points at once (motor -> (k,), frames (k, H, W)): one blissdata entry per
        stream, as a fast detector's points arrive in BLISS in blocks."""
        k = n_points(positions, frames)
        for name, stream in self.motor_streams.items():
            stream.send(np.asarray(positions[name], dtype=np.float64))
        if self.monitor_stream is not None:
            self.monitor_stream.send(np.asarray(monitor, dtype=np.float64))
        now = time.time()
        self.timer_streams["elapsed_time"].send(np.full(k, now - self._t0))
        self.timer_streams["epoch"].send(np.full(k, now))
        self.file.append(frames if self.lima is None else None, positions, monitor)
        if frames is not None and self.image_stream is not None:
            if self.lima is not None:
                self.lima.write(frames)
                last = self.index + k - 1
                self.image_stream.send({"last_index": last, "last_index_saved": last})
            else:
                self.image_stream.send(frames)
        self.index += k

    def finish(self, end_reason: str = "SUCCESS") -> None:
        """Seal the streams, close the files, close the scan with its end reason."""
        if self.lima is not None:
            self.lima.close()
        self.file.close(self.lima.counts if self.lima else ())
        self.scan.stop()
        self.scan.info["end_reason"] = end_reason
        self.scan.close()
        logger.info("scan %s #%d published (%d points, %s)", self.desc.name, self.desc.number, self.index, end_reason)


def describe_title(name: str, motors: Sequence[tuple[str, float, float, int]], count_time: float, npoints: int) -> str:
    """A BLISS-style title: `ascan mu -0.4 0.4 40 0.1`, `amesh mu .. 20 chi .. 20 0.1`."""
    parts = [name]
    for motor, start, stop, points in motors:
        parts += [motor, f"{start:g}", f"{stop:g}", str(max(points - 1, 0))]
    if not motors:
        parts.append(str(npoints))
    parts.append(f"{count_time:g}")
    return " ".join(parts)
