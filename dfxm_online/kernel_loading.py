"""The live path's compiled kernels loaded once, when the daemon starts, not on a scan's
first frames.

Why: numba loads a kernel from its on-disk cache at the kernel's first call in a process
(type inference of the call, the cached machine code read and linked): 0.1-0.3 s each on
any machine (the frame pass 0.30 s, the preview's block sums 0.25 s, measured). A new
daemon used to pay them on its first scan's first frames, one after the other, and every
frame queued behind them: the slowest frames of a new daemon's first 2048^2 scan were its
first ones (p99 1.5-1.9 s, bench/RESULTS.md). This is code, not data: a pipeline of 16 x 16
frames (the daemon's own analysis settings, one and two motors, uint16 frames as detectors
give them) takes a few frames through the preview and full-resolution paths and a snapshot,
which calls every kernel and type variant the live path calls; it holds no memory after.
It runs on a thread of its own, so the daemon serves at once; a scan that starts meanwhile
waits for a kernel at most as long as it would have loading it itself.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from .acquisition.geometry import MotorAxis, ScanGeometry
from .config import AnalysisConfig
from .online.maps import MapBuffers
from .online.pipeline import ScanPipeline

logger = logging.getLogger(__name__)

#: frames of the small scans that load the kernels
_SHAPE = (16, 16)
_POINTS = 6


def load_live_kernels(config: AnalysisConfig, dtype: np.dtype | type = np.uint16) -> float:
    """Call every kernel of the live path once on tiny frames of `dtype`; returns seconds.

    The preview's binning is 2 (the kernels are the same for every factor)."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    for motors in (("mu",), ("mu", "chi")):
        axes = tuple(MotorAxis(name, -1.0, 1.0, _POINTS) for name in motors)
        geometry = ScanGeometry(motors=axes, npoints=_POINTS ** len(motors), detector="kernels",
                                frame_shape=_SHAPE)
        pipeline = ScanPipeline(geometry, _SHAPE, config.model_copy(update={"preprocess": []}))
        preview = pipeline.preview(2)
        positions = {name: np.linspace(-1.0, 1.0, _POINTS) for name in motors}
        frames = rng.integers(0, 100, (_POINTS, *_SHAPE)).astype(dtype)
        prepared = pipeline.prepared(frames, positions)
        preview.update(*prepared)
        pipeline.add(*prepared)
        buffers = MapBuffers()
        for source in (preview, pipeline):
            source.snapshot(np.float32, 1, buffers)
    return time.perf_counter() - t0


def load_in_background(config: AnalysisConfig) -> threading.Thread:
    """`load_live_kernels` on a daemon thread (logged; a failure is only logged: the kernels
    then load at their first use, as without this)."""
    def run() -> None:
        try:
            seconds = load_live_kernels(config)
        except Exception as exc:  # noqa: BLE001 - loading ahead is an optimisation only
            logger.warning("compiled kernels not loaded ahead: %s: %s", type(exc).__name__, exc)
            return
        logger.info("compiled kernels of the live path loaded in %.2f s", seconds)

    thread = threading.Thread(target=run, name="dfxm-kernels", daemon=True)
    thread.start()
    return thread
