"""The scan a daemon rehearses at start-up (`[warmup]`): its geometry and its frames.

Why rehearse: on the VMs measured here, memory a process touches for the first time, and
files it writes anew, cost a host-side page fault per page. A new daemon's first 2048^2
scan paid ~2-4 s for them (the pipeline's ~0.8 GB of sums, the first snapshot's maps, the
batch buffer, two 144 MB generation files): latency p99 3.4-4.0 s against ~0.5 s for a
daemon in service, and 81 against 119 frames/s (bench/RESULTS.md). A daemon in service
has all of that at hand: the warm pool holds the arrays, the spare folder the files. The
rehearsal makes a new daemon one: the daemon's own scan worker code runs these frames
through a real pipeline and maps file (see `daemon.Rehearsal`), and what they allocated
stays for the first real scan of the same frame shape, motors and analysis settings.

Pure numpy, no I/O. The frames only need to look like a rocking scan (a bright crystal
whose peak moves across the image, on a dark offset) so that every map is computed as for
a real scan; they are cheap to make: a separable peak, ~10 ms per 2048^2 frame.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from .acquisition.frames import Batch
from .acquisition.geometry import MotorAxis, ScanGeometry

#: the rehearsal's scan title (the maps file's title must exist for the same layout)
TITLE = "dfxm-online warm-up rehearsal"
#: counts of the synthetic frames: dark offset and peak height
OFFSET = 100.0
PEAK = 2000.0


def rehearsal_geometry(frame_shape: Sequence[int], motors: Sequence[str], points: int,
                       monitor: str | None = None) -> ScanGeometry:
    """A mesh over `motors` with about `points` points in all (at least 3 per motor, so that
    every motor has edge bands and a width)."""
    per_motor = max(3, math.ceil(points ** (1.0 / len(motors))))
    axes = tuple(MotorAxis(name, -1.0, 1.0, per_motor) for name in motors)
    return ScanGeometry(
        motors=axes, npoints=per_motor ** len(axes), detector="rehearsal", scan_type="amesh",
        title=TITLE, image_stream="rehearsal:image",
        motor_streams=tuple(f"axis:{name}" for name in motors),
        frame_shape=(int(frame_shape[0]), int(frame_shape[1])),
        monitor_stream=f"rehearsal:{monitor}" if monitor else "",
    )


def rehearsal_positions(geometry: ScanGeometry) -> np.ndarray:
    """(npoints, motors) positions of the mesh, the first motor fastest (as BLISS's amesh)."""
    axes = [np.linspace(a.start, a.stop, a.npoints) for a in geometry.motors]
    grids = np.meshgrid(*axes[::-1], indexing="ij")  # the first argument varies slowest
    return np.stack([g.reshape(-1) for g in grids[::-1]], axis=1)


def rehearsal_batches(geometry: ScanGeometry, batch_size: int,
                      stop_requested: Callable[[], bool] = lambda: False) -> Iterator[Batch]:
    """The rehearsal's frames (uint16), `batch_size` at a time, all in one buffer.

    The buffer has room for a whole batch, like the live frame source's, so the first real
    scan's batch buffer is the same size and comes warm from the pool. Each pixel's peak
    centre moves with its column along the first motor and with its row along the second,
    so the centre-of-mass maps vary across the image; a third motor has the same peak for
    every pixel. A batch's frames are overwritten by the next batch.
    """
    height, width = geometry.frame_shape
    positions = rehearsal_positions(geometry)
    # a round crystal covering most of the frame, on the dark offset outside it
    y = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
    crystal = (np.float32(PEAK) * (x * x + y * y < 0.8)).astype(np.float32)
    centre_x = 0.5 * x[0]  # first motor's peak centre per column
    centre_y = 0.5 * y[:, 0]  # second motor's per row
    buffer = np.empty((batch_size, height, width), dtype=np.uint16)
    frame = np.empty((height, width), dtype=np.float32)
    for start in range(0, len(positions), batch_size):
        count = min(batch_size, len(positions) - start)
        for k in range(count):
            if stop_requested():  # between frames: a real scan waits for the rehearsal to end
                return
            point = positions[start + k]
            along_x = np.exp(-0.5 * ((point[0] - centre_x) / 0.4) ** 2, dtype=np.float32)
            along_y = (np.exp(-0.5 * ((point[1] - centre_y) / 0.4) ** 2, dtype=np.float32)
                       if len(point) > 1 else np.ones(height, dtype=np.float32))
            scale = math.exp(-0.5 * (point[2] / 0.4) ** 2) if len(point) > 2 else 1.0
            np.multiply(crystal, along_y[:, None] * np.float32(scale), out=frame)
            frame *= along_x[None, :]
            frame += np.float32(OFFSET)
            buffer[k] = frame  # values within uint16: OFFSET + PEAK
        chunk = positions[start : start + count]
        named = {axis.name: chunk[:, i].copy() for i, axis in enumerate(geometry.motors)}
        monitor = np.full(count, 200.0) if geometry.monitor_stream else None
        yield Batch(start, buffer[:count], named, monitor)
