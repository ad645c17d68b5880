"""One scan's analysis: batches of frames in, accumulators updated, maps out.

The daemon, `dfxm-online process` and the ewoks tasks all drive this same class, so there is
one implementation of every algorithm. It does no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..acquisition.geometry import ScanError, ScanGeometry
from ..config import AnalysisConfig
from ..maps import moment_maps
from .accumulators.background import EdgeBaseline, RunningMean
from .accumulators.moments import PowerSums


class ScanPipeline:
    """Accumulators of one scan (mergeable: tiles or halves processed elsewhere add up)."""

    def __init__(
        self,
        geometry: ScanGeometry,
        frame_shape: tuple[int, int],
        config: AnalysisConfig | None = None,
        dark: RunningMean | np.ndarray | None = None,
    ) -> None:
        self.geometry = geometry
        self.config = config or AnalysisConfig()
        self.frame_shape = (int(frame_shape[0]), int(frame_shape[1]))
        n_pixels = self.frame_shape[0] * self.frame_shape[1]
        self.moments = PowerSums(geometry.motors, n_pixels)
        self.edges = EdgeBaseline(geometry.motors, n_pixels, self.config.edge_fraction)
        self.dark: np.ndarray | None = None  # mean dark image (P,)
        self.dark_frames: RunningMean | None = None  # its frames' statistics, when known
        if dark is not None:
            self.set_dark(dark)

    @property
    def frames_processed(self) -> int:
        return self.moments.count

    def set_dark(self, dark: RunningMean | np.ndarray) -> None:
        """Use this dark from now on (applied at snapshot time, so it may come late).

        A :class:`RunningMean` over a dark scan's frames can be pooled with the scan-edge
        frames; a bare image (H, W) can only be subtracted as it is.
        """
        if isinstance(dark, RunningMean):
            image = dark.snapshot()
            if image is None:
                raise ScanError("the dark scan has no frames")
            self.dark_frames = dark
        else:
            image = np.asarray(dark, dtype=np.float64)
            if image.shape != self.frame_shape:
                raise ScanError(f"dark image has shape {image.shape}, frames have {self.frame_shape}")
            self.dark_frames = None
        if image.size != self.frame_shape[0] * self.frame_shape[1]:
            raise ScanError(f"dark image has {image.size} pixels, frames have {self.frame_shape}")
        self.dark = image.reshape(-1)

    def update(self, frames: np.ndarray, positions: Mapping[str, np.ndarray]) -> None:
        """Add a batch of frames (B, H, W) recorded at `positions` (motor -> (B,))."""
        if frames.ndim != 3 or frames.shape[1:] != self.frame_shape:
            raise ScanError(
                f"frames of shape {tuple(frames.shape[1:])} where the scan's are {self.frame_shape}"
            )
        for axis in self.geometry.motors:
            values = positions.get(axis.name)
            if values is None or len(values) != frames.shape[0]:
                raise ScanError(f"no position of motor {axis.name!r} for every frame of the batch")
        self.moments.update(frames, positions)
        self.edges.update(frames, positions)

    def merge(self, other: ScanPipeline) -> None:
        self.moments.merge(other.moments)
        self.edges.merge(other.edges)

    def state(self) -> dict[str, np.ndarray]:
        out = {f"moments/{k}": v for k, v in self.moments.state().items()}
        out.update({f"edges/{k}": v for k, v in self.edges.state().items()})
        return out

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore accumulators saved by `state()` (checkpoint / restart)."""
        def part(prefix: str) -> dict[str, np.ndarray]:
            return {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith(prefix + "/")}

        self.moments = PowerSums.from_state(self.geometry.motors, part("moments"))
        self.edges = EdgeBaseline.from_state(
            self.geometry.motors, part("edges"), self.config.edge_fraction
        )

    def background(self) -> tuple[np.ndarray | None, str]:
        """The per-pixel constant subtracted before the moments, and what it is.

        "auto": a dark scan's frames pooled with the scan-edge frames that agree with them
        when a dark scan was taken; a bare dark image as it is; otherwise the edge baseline.
        """
        mode = self.config.background
        if mode == "auto":
            if self.dark_frames is not None:
                return self.edges.snapshot(self.dark_frames), "dark+edges"
            mode = "dark" if self.dark is not None else "edges"
        if mode == "none":
            return None, "none"
        if mode == "dark":
            if self.dark is None:
                raise ScanError("background='dark' but no dark scan or dark file is available")
            return self.dark, "dark"
        return self.edges.snapshot(), "edges"

    def snapshot(self) -> dict[str, np.ndarray]:
        """The current maps (cheap relative to the scan; read-only on the accumulators)."""
        offset, _ = self.background()
        snap = self.moments.snapshot(offset)
        return moment_maps(
            snap, self.geometry.motor_names, self.frame_shape, self.config.min_intensity_fraction
        )
