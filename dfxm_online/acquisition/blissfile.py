"""Read recorded scans from BLISS HDF5 files: the detector stack and the moving motors.

Detector and motors are found as darfix does: the 3-D dataset under `measurement/` (or an
NXdetector's `data`) and the positioners recorded per point that move.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from .batch import Batch
from .geometry import ScanError, ScanGeometry, axis_from_positions, moving_motors
from .plain_frames import PlainFrames, read_frames


@dataclass
class RecordedScan:
    """One scan of a BLISS file; `frames` stays a lazy h5py dataset (file kept open)."""

    path: Path
    scan: str
    title: str
    detector: str
    frames: h5py.Dataset
    positions: dict[str, np.ndarray]  # the motors used, recorded per point
    _file: h5py.File
    monitor: np.ndarray | None = None  # the monitor counter per point, when asked for
    _plain: list[PlainFrames | None] = field(default_factory=list, repr=False)

    @property
    def npoints(self) -> int:
        return int(self.frames.shape[0])

    @property
    def frame_shape(self) -> tuple[int, int]:
        return (int(self.frames.shape[1]), int(self.frames.shape[2]))

    def geometry(self) -> ScanGeometry:
        """The scan model from the recorded positions (range = min..max, distinct points)."""
        axes = tuple(axis_from_positions(n, v) for n, v in self.positions.items())
        scan_type = self.title.split()[0] if self.title else ""
        return ScanGeometry(
            motors=axes, npoints=self.npoints, detector=self.detector, scan_type=scan_type,
            title=self.title, frame_shape=self.frame_shape,
        )

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """Batches in acquisition order, `batch_size` frames at a time."""
        for start in range(0, self.npoints, batch_size):
            stop = min(start + batch_size, self.npoints)
            yield Batch(
                start, np.asarray(self.frames[start:stop]),
                {k: v[start:stop] for k, v in self.positions.items()},
                None if self.monitor is None else self.monitor[start:stop],
            )

    @property
    def stored_plainly(self) -> bool:
        """Whether the frames lie plainly in the file (`plain_frames`): then a band of rows of
        every frame reads at the cost of its bytes; compressed frames would each be
        decompressed whole for every band."""
        if not self._plain:
            self._plain.append(PlainFrames.of(self.frames))
        return self._plain[0] is not None

    def read(self, start: int, stop: int, out: np.ndarray, rows: tuple[int, int] | None = None) -> None:
        """Frames [start, stop) (detector rows [r0, r1) if given) into `out[: stop - start]`:
        straight from the file where the frames are stored plainly (several times faster for
        bands of rows, see `plain_frames`), else through h5py."""
        if not self._plain:
            self._plain.append(PlainFrames.of(self.frames))
        read_frames(self.frames, self._plain[0], start, stop, out, rows)

    def positioners(self) -> dict[str, np.ndarray | float]:
        """The scan's recorded positioners (`instrument/positioners`): a value, or one per
        point, by name (mainx, obx, obpitch, ffz... for the scan-end analyses)."""
        group = self._file[self.scan].get("instrument/positioners", {})
        out: dict[str, np.ndarray | float] = {}
        for name, item in group.items():
            if isinstance(item, h5py.Dataset) and item.dtype.kind in "fiu":
                value = item[()]
                out[name] = float(value) if np.ndim(value) == 0 else np.asarray(value, dtype=np.float64)
        return out

    def close(self) -> None:
        for plain in self._plain:
            if plain is not None:
                plain.close()
        self._plain.clear()
        self._file.close()

    def __enter__(self) -> RecordedScan:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def list_scans(path: str | Path) -> list[str]:
    with h5py.File(path, "r") as f:
        return sorted(f, key=lambda k: [int(p) if p.isdigit() else p for p in k.split(".")])


def find_detector(entry: h5py.Group, detector: str | None) -> tuple[str, h5py.Dataset]:
    candidates: dict[str, h5py.Dataset] = {}
    for name, item in entry.get("measurement", {}).items():
        if isinstance(item, h5py.Dataset) and item.ndim == 3:
            candidates[name.split(":")[0]] = item
    for name, item in entry.get("instrument", {}).items():
        if isinstance(item, h5py.Group) and "data" in item and item["data"].ndim == 3:
            candidates.setdefault(name, item["data"])
    if detector:
        if detector not in candidates:
            raise ScanError(f"no 3-D detector dataset {detector!r} (found: {sorted(candidates) or 'none'})")
        return detector, candidates[detector]
    if not candidates:
        raise ScanError("scan has no 3-D detector dataset")
    if len(candidates) > 1:
        raise ScanError(f"several detectors ({', '.join(sorted(candidates))}): choose one with --detector")
    return next(iter(candidates.items()))


def open_scan(
    path: str | Path, scan: str = "1.1", detector: str | None = None,
    motors: Sequence[str] | None = None, monitor: str | None = None, require_motors: bool = True,
) -> RecordedScan:
    """Open scan `scan` ('2.1', or '2' for '2.1') of a BLISS file; raises ScanError with the
    reason if it cannot. `require_motors` False accepts a scan with no moving motor (a
    `loopscan`, `ct` or `timescan`: a dark scan), whose positions are then empty."""
    path = Path(path)
    scan = scan_name(scan)
    f = h5py.File(path, "r")
    try:
        if scan not in f:
            raise ScanError(f"{path} has no scan {scan} (scans: {', '.join(list(f)[:10])})")
        entry = f[scan]
        title = _text(entry["title"][()]) if "title" in entry else ""
        det_name, frames = find_detector(entry, detector)
        n = frames.shape[0]
        recorded: dict[str, np.ndarray] = {}
        for group in ("instrument/positioners", "measurement"):
            for name, item in entry.get(group, {}).items():
                if isinstance(item, h5py.Dataset) and item.ndim == 1 and name not in recorded:
                    recorded[name] = item[()]
        if motors:
            missing = [m for m in motors if m not in recorded]
            if missing:
                raise ScanError(f"motor {', '.join(missing)} not recorded in scan {scan}")
            names = list(motors)
        else:
            positioners = entry.get("instrument/positioners", {})
            names = moving_motors({k: recorded[k] for k in positioners if k in recorded}, n)
            if not names and require_motors:
                raise ScanError(f"scan {scan} has no moving motor")
        positions = {}
        for name in names:
            values = np.asarray(recorded[name], dtype=np.float64)
            if values.shape[0] < n:
                raise ScanError(f"motor {name} has {values.shape[0]} positions for {n} frames")
            positions[name] = values[:n]
        monitor_values = None
        if monitor and monitor in recorded:  # a scan without it is not normalised
            monitor_values = np.asarray(recorded[monitor], dtype=np.float64)[:n]
            if monitor_values.shape[0] < n:
                raise ScanError(f"monitor {monitor} has {monitor_values.shape[0]} values for {n} frames")
        return RecordedScan(path, scan, title, det_name, frames, positions, f, monitor_values)
    except BaseException:
        f.close()
        raise


def scan_provenance(rec: RecordedScan) -> dict[str, str]:
    """The /entry/process provenance fields of a recorded scan (publish/provenance.py)."""
    from ..publish.provenance import common_fields, policy_names

    entry = rec._file[rec.scan]

    def text(name: str) -> str:
        return _text(entry[name][()]) if name in entry and isinstance(entry[name], h5py.Dataset) else ""

    return {
        **common_fields(str(rec.path.resolve()), rec.scan, rec.geometry(), rec.detector),
        **policy_names(rec.path.resolve()),
        "session": "",
        "sample": text("sample/name"),
        "start_time": text("start_time"),
        "end_time": text("end_time"),
    }


def scan_name(scan: str | int) -> str:
    """A scan as the file names it: '2' or 2 -> '2.1' (BLISS's first subscan); '2.1' as is."""
    text = str(scan).strip()
    return f"{text}.1" if text.isdigit() else text


def first_scan_with_motors(path: str | Path, detector: str | None = None,
                           motors: Sequence[str] | None = None) -> str:
    """The first scan of the file (in scan order) with a detector stack and moving motors:
    what `process` takes when no scan is named (a session usually starts with a dark scan,
    `loopscan` or `ct`, which has none)."""
    reasons = []
    for scan in list_scans(path):
        try:
            with open_scan(path, scan, detector=detector, motors=motors):
                return scan
        except ScanError as exc:
            reasons.append(f"{scan}: {exc}")
    raise ScanError(f"{path} has no scan with a detector and moving motors ({'; '.join(reasons) or 'no scans'})")


def parse_scan_url(url: str, default_file: str | Path | None = None) -> tuple[Path, str]:
    """'FILE::2.1' -> (FILE, '2.1'); '2.1' alone refers to `default_file`."""
    if "::" in url:
        file_part, scan = url.rsplit("::", 1)
        return Path(file_part), scan_name(scan)
    if default_file is None:
        raise ScanError(f"{url!r}: expected FILE::SCAN (e.g. data.h5::2.1)")
    return Path(default_file), scan_name(url)
