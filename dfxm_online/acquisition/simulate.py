"""Simulated DFXM scans published exactly as a beamline would, from a known crystal model.

Rocking curves (`ascan mu`), mosaicity meshes (`amesh mu chi`, optionally zigzag) and strain
meshes (`amesh mu ffz`), with an optional dark scan first; frames from
:class:`~dfxm_online.acquisition.model.CrystalModel`, so tests know the truth.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from blissdata.redis_engine.store import DataStore

from .geometry import MotorAxis
from .model import CrystalModel, scan_positions
from .publisher import ScanDescription, ScanPublisher, describe_title

logger = logging.getLogger(__name__)

MotorSpec = tuple[str, float, float, int]

DEFAULT_MOTORS: dict[str, list[MotorSpec]] = {
    "rocking": [("mu", -0.4, 0.4, 41)],
    "mosaicity": [("mu", -0.4, 0.4, 21), ("chi", -1.5, 1.5, 16)],
    "strain": [("mu", -0.4, 0.4, 21), ("ffz", -0.3, 0.3, 11)],
}
STATIC_POSITIONERS = {"omega": 0.0, "tth": 17.0, "ffz": 0.0, "chi": 0.0, "mu": 0.0, "diffry": 0.0}


@dataclass
class SimulationSpec:
    """Everything that defines a simulated scan (the `simulate` command's options)."""

    kind: str = "mosaicity"
    motors: Sequence[MotorSpec] | None = None
    points: int | None = None  # override the number of points of every default motor
    frame_shape: tuple[int, int] = (128, 128)
    frame_rate: float = 0.0  # frames per second; 0 publishes as fast as possible
    dark_offset: float = 100.0
    read_noise: float = 2.0
    background: float = 0.0  # diffuse pedestal, photons per pixel per frame, not in the dark
    #: the pedestal varies across the detector: background * (1 + gradient * x), x from -1
    #: (left edge) to 1 (right edge)
    background_gradient: float = 0.0
    #: "grains": sub-grains with smooth orientation fields (CrystalModel.make); "random":
    #: every pixel of the upper half its own curve, amplitude 200-300 counts, centres
    #: within +-0.1 (first motor) / +-0.2 (second) of the scan centre, sigma 0.06-0.08 /
    #: 0.14-0.16 (CrystalModel.random_spread; `peak_counts` unused)
    crystal: str = "grains"
    peak_counts: float = 1000.0
    noise: bool = True  # Poisson and read noise; False publishes the rounded expectation
    seed: int = 0
    zigzag: bool = False
    image_mode: str | None = "array"
    frames_per_file: int = 10
    session: str = "dfxm"
    detector: str = "pco"
    scan_dir: Path = Path("scans")
    dataset: str = "sample_0001"
    dark_frames: int = 0  # > 0: publish a dark scan of this many frames first
    number: int | None = None  # scan number; None takes the next free one in the file
    omit_motor_streams: Sequence[str] = ()
    wrong_shape_at: int | None = None  # publish a frame of another shape at this index
    end_reason: str = "SUCCESS"
    stop_after: int | None = None  # publish only this many points (an aborted scan)
    monitor: str | None = None  # publish a beam-current monitor counter of this name
    #: publish under the ESRF data policy: proposal and collection (the dataset is `dataset`)
    proposal: str | None = None
    collection: str | None = None

    def motor_specs(self) -> list[MotorSpec]:
        if self.motors:
            return [(m[0], float(m[1]), float(m[2]), int(m[3])) for m in self.motors]
        if self.kind not in DEFAULT_MOTORS:
            raise ValueError(f"scan kind must be one of {', '.join(DEFAULT_MOTORS)}")
        specs = DEFAULT_MOTORS[self.kind]
        if self.points:
            specs = [(n, a, b, self.points) for n, a, b, _ in specs]
        return list(specs)

    @property
    def filename(self) -> Path:
        return Path(self.scan_dir) / f"{self.dataset}.h5"


@dataclass
class SimulationResult:
    """What was published: scan keys, the truth model, the positions and the files."""

    model: CrystalModel
    positions: np.ndarray  # (npoints, M)
    scan_key: str
    scan_number: int
    filename: Path
    dark_key: str | None = None
    dark_number: int | None = None
    frames: list[np.ndarray] = field(default_factory=list)  # kept only with keep_frames

    @property
    def motors(self) -> list[str]:
        return [m.name for m in self.model.motors]


REFERENCE_CURRENT = 200.0


def beam_current(npoints: int) -> np.ndarray:
    """A storage-ring current over the scan (mA): decays by 15 %, refilled once at 60 %."""
    t = np.arange(npoints) / max(npoints - 1, 1)
    since_fill = np.where(t < 0.6, t, t - 0.6)
    return REFERENCE_CURRENT * (1.0 - 0.25 * since_fill)


def next_scan_number(filename: Path) -> int:
    """1 + the highest `<n>.1` scan number already in a BLISS file (1 for a new file)."""
    if not Path(filename).exists():
        return 1
    with h5py.File(filename, "r") as f:
        numbers = [int(k.split(".")[0]) for k in f if k.split(".")[0].isdigit()]
    return max(numbers, default=0) + 1


def _pace(t0: float, index: int, rate: float) -> None:
    if rate > 0:
        delay = t0 + index / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def make_model(spec: SimulationSpec) -> CrystalModel:
    axes = [MotorAxis(n, a, b, p) for n, a, b, p in spec.motor_specs()]
    background: float | np.ndarray = spec.background
    if spec.background_gradient:
        x = np.linspace(-1.0, 1.0, spec.frame_shape[1])
        background = spec.background * (1.0 + spec.background_gradient * np.broadcast_to(x, spec.frame_shape))
    if spec.crystal == "random":
        return CrystalModel.random_spread(spec.frame_shape, axes, seed=spec.seed, background=background,
                                          dark_offset=spec.dark_offset, read_noise=spec.read_noise)
    if spec.crystal != "grains":
        raise ValueError(f"crystal must be 'grains' or 'random', not {spec.crystal!r}")
    return CrystalModel.make(
        spec.frame_shape, axes, seed=spec.seed, peak_counts=spec.peak_counts,
        background=background, dark_offset=spec.dark_offset, read_noise=spec.read_noise,
    )


def policy_identity(spec: SimulationSpec) -> dict[str, str | None]:
    """The ESRF data policy fields of the scans of `spec` (none without a proposal)."""
    if not spec.proposal:
        return {}
    return {"proposal": spec.proposal, "collection": spec.collection or "sample", "dataset": spec.dataset}


def publish_dark(store: DataStore, spec: SimulationSpec, model: CrystalModel, number: int,
                 rng: np.random.Generator) -> str:
    """A dark scan (`loopscan`, title 'dark ...'): offset and read noise only."""
    desc = ScanDescription(
        session=spec.session, number=number, name="loopscan",
        title=f"dark loopscan {spec.dark_frames} 0.1", filename=spec.filename,
        detector=spec.detector, frame_shape=spec.frame_shape, npoints=spec.dark_frames,
        static_positioners=STATIC_POSITIONERS, **policy_identity(spec),
    )
    pub = ScanPublisher(store, desc, spec.image_mode or "array", spec.frames_per_file)
    pub.start()
    t0 = time.monotonic()
    for i in range(spec.dark_frames):
        _pace(t0, i, spec.frame_rate)
        pub.publish({}, model.dark_frame(rng))
    pub.finish()
    return pub.key


def simulate(url: str, spec: SimulationSpec, keep_frames: bool = False) -> SimulationResult:
    """Publish the scan (and its dark scan) described by `spec` to the store at `url`."""
    store = DataStore(url)
    model = make_model(spec)
    rng = np.random.default_rng(spec.seed + 1)
    number = spec.number or next_scan_number(spec.filename)
    dark_key = dark_number = None
    if spec.dark_frames > 0:
        dark_number = number
        dark_key = publish_dark(store, spec, model, number, rng)
        number += 1
    motors = spec.motor_specs()
    positions = scan_positions(model.motors, zigzag=spec.zigzag)
    name = "ascan" if len(motors) == 1 else "amesh"
    desc = ScanDescription(
        session=spec.session, number=number, name=name,
        title=describe_title(name, motors, 0.1, len(positions)), filename=spec.filename,
        detector=spec.detector, frame_shape=spec.frame_shape, npoints=len(positions),
        motors=motors, zigzag=spec.zigzag, static_positioners={
            k: v for k, v in STATIC_POSITIONERS.items() if k not in {m[0] for m in motors}
        },
        declared_frame_shape=(-1, -1) if spec.wrong_shape_at is not None else None,
        monitor=spec.monitor, **policy_identity(spec),
    )
    pub = ScanPublisher(store, desc, spec.image_mode, spec.frames_per_file, spec.omit_motor_streams)
    pub.start()
    frames = []
    t0 = time.monotonic()
    n = len(positions) if spec.stop_after is None else min(spec.stop_after, len(positions))
    monitor = beam_current(len(positions)) if spec.monitor else None
    for i in range(n):
        _pace(t0, i, spec.frame_rate)
        point = positions[i]
        flux = monitor[i] / REFERENCE_CURRENT if monitor is not None else 1.0
        if spec.noise:
            frame = model.frame(point, rng, flux)
        else:
            frame = np.rint(model.expected_photons(point, flux) + model.dark_offset).astype(np.uint16)
        if spec.wrong_shape_at is not None and i >= spec.wrong_shape_at:
            frame = np.zeros((spec.frame_shape[0] + 1, spec.frame_shape[1]), dtype=np.uint16)
        if keep_frames:
            frames.append(frame)
        pub.publish({m[0]: float(point[j]) for j, m in enumerate(motors)}, frame,
                    None if monitor is None else float(monitor[i]))
    pub.finish(spec.end_reason)
    return SimulationResult(
        model=model, positions=positions, scan_key=pub.key, scan_number=number,
        filename=spec.filename, dark_key=dark_key, dark_number=dark_number, frames=frames,
    )


def write_truth(path: str | Path, model: CrystalModel) -> None:
    """The model's per-pixel truth (centre, FWHM per motor, amplitude) for comparisons."""
    with h5py.File(path, "w") as f:
        f["amplitude"] = model.amplitude
        for i, axis in enumerate(model.motors):
            f[f"com_{axis.name}"] = model.centre[i]
            f[f"fwhm_{axis.name}"] = model.fwhm[i]
