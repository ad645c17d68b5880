"""A batch of consecutive scan points: what every frame source hands the pipeline.

In a module of its own so that recorded scans (`blissfile`) and offline processing name it
without importing blissdata, which only live scans need (0.35-0.46 s of a process's start,
measured)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Batch:
    """Consecutive points `start .. start + len(frames)` of a scan."""

    start: int
    frames: np.ndarray  # (B, H, W)
    positions: dict[str, np.ndarray]  # motor -> (B,)
    monitor: np.ndarray | None = None  # (B,) monitor counts, when a monitor is configured
