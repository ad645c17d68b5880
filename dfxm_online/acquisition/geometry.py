"""The scan model: which detector, which motors, what grid, derived from `scan_info` or a file.

Pure functions, no I/O. Everything that cannot be decided raises :class:`ScanError` with a
one-line reason, which the daemon logs and writes into the scan's output file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

#: scan types that are meshes (several motors on a grid)
MESH_TYPES = {"amesh", "dmesh", "fscan2d", "zigzag", "amesh_zigzag", "fscan3d", "mesh"}


class ScanError(Exception):
    """A scan cannot be processed; the message is the one-line reason shown to the user."""


@dataclass(frozen=True)
class MotorAxis:
    """One scanned motor: its nominal range and number of points along its own axis.

    `centre` and `scale` define the dimensionless coordinate u = (x - centre) / scale in
    which the moment sums are accumulated: relative to the scan centre and in units of the
    step, so that 4th powers stay O(npoints^4) and float64 sums keep their precision.
    """

    name: str
    start: float
    stop: float
    npoints: int

    @property
    def low(self) -> float:
        return min(self.start, self.stop)

    @property
    def high(self) -> float:
        return max(self.start, self.stop)

    @property
    def centre(self) -> float:
        return 0.5 * (self.start + self.stop)

    @property
    def scale(self) -> float:
        span = self.high - self.low
        if span <= 0 or self.npoints < 2:
            return 1.0
        return span / (self.npoints - 1)

    def to_dict(self) -> dict:
        return {"name": self.name, "start": self.start, "stop": self.stop, "npoints": self.npoints}


@dataclass(frozen=True)
class ScanGeometry:
    """What the analysis needs to know about a scan before its first frame."""

    motors: tuple[MotorAxis, ...]
    npoints: int
    detector: str
    scan_type: str = "ascan"
    title: str = ""
    image_stream: str = ""
    motor_streams: tuple[str, ...] = field(default=())
    frame_shape: tuple[int, int] | None = None
    monitor_stream: str = ""  # counter stream normalising each frame (e.g. beam current)

    @property
    def motor_names(self) -> list[str]:
        return [m.name for m in self.motors]

    def to_dict(self) -> dict:
        return {
            "motors": [m.to_dict() for m in self.motors],
            "npoints": self.npoints,
            "detector": self.detector,
            "scan_type": self.scan_type,
            "title": self.title,
        }


def _is_image(shape: Sequence[int] | None) -> bool:
    return shape is not None and len(shape) == 2


def select_image_stream(
    streams: Mapping[str, Sequence[int] | None], detector: str | None = None
) -> str:
    """Name of the 2D image stream to analyse.

    `streams` maps stream name -> per-point shape (None when unknown). With `detector`
    configured, only that detector's image stream is accepted; otherwise the 2D stream is
    taken automatically (preferring names ending in ':image', as Lima streams are named).
    """
    images = [name for name, shape in streams.items() if _is_image(shape)]
    if detector:
        wanted = [n for n in images if n == detector or n.split(":")[0] == detector]
        if not wanted:
            raise ScanError(
                f"no 2D image stream for detector {detector!r} (2D streams: {images or 'none'})"
            )
        images = wanted
    if not images:
        raise ScanError("scan has no 2D image stream")
    images.sort(key=lambda n: (not n.endswith(":image"), n))
    return images[0]


#: more points than any scan takes (a malformed scan_info, not a scan)
MAX_POINTS = 10**9


def _axis_channels(scan_info: Mapping) -> dict[str, dict]:
    channels = scan_info.get("channels") or {}
    if not isinstance(channels, Mapping):
        raise ScanError(f"scan_info 'channels' is a {type(channels).__name__}, not a table of channels")
    return {
        name: dict(meta)
        for name, meta in channels.items()
        if isinstance(name, str) and name.startswith("axis:") and isinstance(meta, Mapping)
    }


def _number(where: str, value, kind: type = float) -> float | int:
    """`value` as a finite `kind`, or a ScanError saying which scan_info field is not one."""
    try:
        number = kind(value)
        if kind is int and number != value and not isinstance(value, str):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise ScanError(f"scan_info {where} is {value!r:.60}, not a {'whole ' if kind is int else ''}number") from None
    if kind is float and not math.isfinite(number):
        raise ScanError(f"scan_info {where} is {value!r:.60}, not a finite number")
    return number


def geometry_from_scan_info(
    scan_info: Mapping,
    streams: Mapping[str, Sequence[int] | None],
    detector: str | None = None,
    motors: Sequence[str] | None = None,
    monitor: str | None = None,
) -> ScanGeometry:
    """Build the scan model from a BLISS `scan_info` and the scan's stream shapes.

    Motors are those configured, or else the `axis:<motor>` channels that move
    (start != stop). Their stream must exist: positions are always read per point.
    """
    image = select_image_stream(streams, detector)
    npoints = _number("'npoints'", scan_info.get("npoints") or 0, int)
    if npoints <= 0:
        raise ScanError("scan_info has no positive 'npoints'")
    if npoints > MAX_POINTS:
        raise ScanError(f"scan_info 'npoints' is {npoints:.3g}: more points than a scan takes")
    channels = _axis_channels(scan_info)
    if motors:
        names = [f"axis:{m}" if not m.startswith("axis:") else m for m in motors]
    else:
        names = []
        for name, meta in sorted(channels.items(), key=lambda kv: kv[1].get("axis_id", 0)):
            start, stop = meta.get("start"), meta.get("stop")
            if start is None or stop is None or _number(f"{name} start", start) != _number(f"{name} stop", stop):
                names.append(name)
        if not channels:
            names = sorted(n for n in streams if n.startswith("axis:"))
    if not names:
        raise ScanError("scan has no moving motor (no axis:<motor> channel that moves)")
    missing = [n for n in names if n not in streams]
    if missing:
        raise ScanError(f"motor stream {', '.join(missing)} missing from the scan")
    if len(names) > 3:
        raise ScanError(f"{len(names)} moving motors: at most 3 are supported; configure 'motors'")
    axes = []
    for name in names:
        meta = channels.get(name, {})
        start, stop = meta.get("start"), meta.get("stop")
        if start is None or stop is None:
            raise ScanError(f"scan_info gives no start/stop for {name}")
        n = _number(f"{name} axis_points", meta.get("axis_points") or (npoints if len(names) == 1 else 0), int)
        if n <= 0:
            raise ScanError(f"scan_info gives no axis_points for {name}")
        if n > MAX_POINTS:
            raise ScanError(f"scan_info {name} axis_points is {n:.3g}: more points than a scan takes")
        axes.append(MotorAxis(name.split(":", 1)[1], _number(f"{name} start", start), _number(f"{name} stop", stop), n))
    shape = streams[image]
    if shape is not None and (len(shape) != 2 or not all(isinstance(d, int) and -1 <= d < 2**20 for d in shape)):
        raise ScanError(f"image stream {image} declares frames of shape {tuple(shape)!r:.60}")
    monitor_stream = find_counter_stream(streams, monitor) if monitor else ""
    return ScanGeometry(
        motors=tuple(axes),
        npoints=npoints,
        detector=image.split(":")[0],
        scan_type=str(scan_info.get("type", "")),
        title=str(scan_info.get("title", "")),
        image_stream=image,
        motor_streams=tuple(names),
        frame_shape=tuple(int(s) for s in shape) if shape else None,
        monitor_stream=monitor_stream,
    )


def find_counter_stream(streams: Mapping[str, Sequence[int] | None], counter: str) -> str:
    """The scalar stream of counter `counter` ('mon' matches 'p201:mon' or 'mon'), or ""
    when the scan does not record it (frames are then not normalised, with a warning)."""
    found = [
        n for n, shape in streams.items()
        if (n == counter or n.split(":")[-1] == counter) and shape is not None and len(shape) == 0
    ]
    if not found:
        return ""
    if len(found) > 1:
        raise ScanError(f"monitor counter {counter!r} is ambiguous: {', '.join(sorted(found))}")
    return found[0]


def axis_from_positions(name: str, values: np.ndarray, decimals: int = 6) -> MotorAxis:
    """A motor axis reconstructed from the recorded positions of a scan (offline, replay).

    The range is the recorded min..max and the number of points the number of distinct
    positions (rounded), so that a mesh's fast axis gets its own count, not the frame count.
    """
    values = np.asarray(values, dtype=float)
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise ScanError(f"motor {name!r} has no finite recorded positions")
    distinct = np.unique(np.round(values, decimals)).size
    return MotorAxis(name, float(values.min()), float(values.max()), int(distinct))


def moving_motors(positioners: Mapping[str, np.ndarray], npoints: int) -> list[str]:
    """Names of the positioners recorded per point that move, fastest first.

    The fastest motor (most changes between consecutive points) comes first, as in a BLISS
    mesh's axis order, so map names (`cov_mu_chi`) match those of the live path.
    """
    changes = {}
    for name, values in positioners.items():
        arr = np.asarray(values)
        if arr.ndim == 1 and arr.shape[0] >= npoints > 1 and np.ptp(arr[:npoints]) > 0:
            changes[name] = int(np.count_nonzero(np.diff(arr[:npoints])))
    return sorted(changes, key=lambda n: (-changes[n], n))


def finite_points(positions: Mapping[str, np.ndarray], axes: Sequence[MotorAxis], n_points: int) -> np.ndarray:
    """(n_points,) True where every scanned motor of `axes` whose positions are given for
    all the points has a finite position (a point elsewhere stays out of the maps)."""
    finite = np.ones(n_points, dtype=bool)
    for axis in axes:
        values = positions.get(axis.name)
        if values is not None and len(values) == n_points:
            finite &= np.isfinite(np.asarray(values, dtype=np.float64))
    return finite
