"""One typed configuration for the daemon and offline processing, validated with clear messages.

A TOML file (see services/dfxm-online.toml) with top-level daemon keys and an `[analysis]`
table; command-line flags override the file. Unknown keys are errors, not silent typos.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

BACKGROUND_MODES = ("auto", "dark", "edges", "none")


class ConfigError(ValueError):
    """The configuration is invalid; the message says which key and why."""


@dataclass
class AnalysisConfig:
    """How one scan is analysed; the same for the daemon, `process` and the ewoks tasks."""

    #: detector name (e.g. "pco"); None picks the scan's 2D image stream automatically
    detector: str | None = None
    #: motors to use (e.g. ["mu", "chi"]); None uses the motors that move
    motors: list[str] | None = None
    #: background before moments: "auto" = the scan-edge baseline (it holds the dark and
    #: the diffuse pedestal above it that a dark scan does not record), the session's dark
    #: scan alone only until the first edge frame; or "dark" (dark only), "edges" (edges
    #: only), "none". See docs/science.md.
    background: str = "auto"
    #: final moment maps within this many standard deviations (Mahalanobis) of each
    #: pixel's centre of mass, corrected for a Gaussian's loss to the cut: the tails' noise
    #: stays out of the moments (online/moment_window.py). Needs the frames a second time
    #: (offline: the file; daemon: the scan, at its end). 0: moments over the whole scan
    moment_window: float = 3.0
    #: times the window is re-centred from the windowed moments (each reads the frames)
    moment_window_passes: int = 2
    #: fraction of each motor's range at each end whose frames estimate the edge baseline
    edge_fraction: float = 0.2
    #: pixels whose integrated intensity is below this fraction of the bright pixels'
    #: (99.5th percentile) get NaN maps
    min_intensity_fraction: float = 0.05
    #: frames per accumulator update (one matrix product per batch)
    batch_size: int = 64
    #: MiB of raw frames a batch may hold (0: no bound): fewer than `batch_size` frames per
    #: batch when the frames are large. A batch's frames are all in memory at once; at
    #: 2048^2 uint16 the default makes batches of 32 frames (256 MiB) instead of 64 (512 MiB),
    #: which keeps a daemon on a two-motor scan under 2 GB (bench/RESULTS.md)
    batch_mb: int = 256
    #: seconds a complete point may wait for its batch to fill (latency budget)
    batch_delay: float = 0.1
    #: per-frame preprocessing, in order: [{"step": "hot_pixels", "k": 8}, ...]
    #: (steps: dark, hot_pixels, threshold, mask, roi, binning, flatfield, monitor, cornice)
    preprocess: list[dict] = field(default_factory=list)
    #: images the steps refer to by name: {"mask": "mask.h5::/mask", "flatfield": "flat.edf"}
    images: dict[str, str] = field(default_factory=dict)
    #: counter normalising each frame when the chain has a "monitor" step and the scan
    #: records it (e.g. "mon", "srcur"); scans without it are not normalised (warning)
    monitor: str | None = None
    #: KAM neighbourhood radius in pixels (8-connected)
    kam_radius: int = 1
    #: optional accumulators besides the moments and the edge baseline: projections (sum,
    #: max, half sums), median_background, rolling_median, minimum, low_quantile,
    #: sums_along (one summed image per value of a motor), pca, nmf
    accumulators: list[str] = field(default_factory=lambda: ["projections"])
    #: MedianByStep: every k-th frame
    median_step: int = 10
    #: RollingMedian window (odd)
    rolling_window: int = 9
    #: LowQuantile's q
    low_quantile: float = 0.1
    #: motor of the per-value sums (topo-tomo: omega); default the slowest scanned motor
    sums_along_motor: str | None = None
    #: components of the incremental PCA / chunked NMF, and their spatial binning
    pca_components: int = 5
    nmf_components: int = 3
    decomposition_binning: int = 4
    #: "float64": moment sums exact to ~1e-12; "float32": each batch's product in float32
    #: (faster, ~1e-7 relative error), the sums still accumulated in float64
    precision: str = "float64"

    def frames_per_batch(self, frame_shape: tuple[int, ...] | None, dtype: np.dtype | str | None) -> int:
        """Frames per batch for frames of this shape and dtype: `batch_size`, or fewer so that
        the batch's raw frames fit in `batch_mb` MiB (at least one frame). An unknown shape
        (None, or a free dimension <= 0) or dtype gives `batch_size`."""
        if not self.batch_mb or not frame_shape or dtype is None or any(int(n) <= 0 for n in frame_shape):
            return self.batch_size
        frame_bytes = int(np.prod([int(n) for n in frame_shape])) * np.dtype(dtype).itemsize
        return max(1, min(self.batch_size, (self.batch_mb << 20) // frame_bytes))

    def validate(self) -> None:
        if self.background not in BACKGROUND_MODES:
            raise ConfigError(
                f"analysis.background={self.background!r}: expected one of {', '.join(BACKGROUND_MODES)}"
            )
        if not 0 < self.edge_fraction < 0.5:
            raise ConfigError(f"analysis.edge_fraction={self.edge_fraction}: must be in (0, 0.5)")
        if not 0 <= self.min_intensity_fraction < 1:
            raise ConfigError("analysis.min_intensity_fraction must be in [0, 1)")
        if not (self.moment_window == 0 or 1.0 <= self.moment_window <= 10.0):
            raise ConfigError(f"analysis.moment_window={self.moment_window}: 0 (off) or 1 to 10 standard deviations")
        if self.moment_window_passes < 1:
            raise ConfigError("analysis.moment_window_passes must be >= 1")
        if self.batch_size < 1:
            raise ConfigError("analysis.batch_size must be >= 1")
        if self.batch_mb < 0:
            raise ConfigError("analysis.batch_mb must be >= 0 (0: no bound)")
        if self.batch_delay < 0:
            raise ConfigError("analysis.batch_delay must be >= 0 seconds")
        if self.motors is not None and not 1 <= len(self.motors) <= 3:
            raise ConfigError("analysis.motors must name 1 to 3 motors")
        if self.precision not in ("float64", "float32"):
            raise ConfigError(f"analysis.precision={self.precision!r}: expected float64 or float32")
        from .online.optional import NAMES

        unknown = [a for a in self.accumulators if a not in NAMES]
        if unknown:
            raise ConfigError(f"analysis.accumulators: unknown {unknown}; known: {', '.join(NAMES)}")
        if self.median_step < 1 or self.rolling_window < 1 or self.rolling_window % 2 == 0:
            raise ConfigError("analysis.median_step must be >= 1 and rolling_window odd and >= 1")
        if not 0 <= self.low_quantile <= 1:
            raise ConfigError("analysis.low_quantile must be in [0, 1]")
        if min(self.pca_components, self.nmf_components, self.decomposition_binning) < 1:
            raise ConfigError("analysis.pca_components, nmf_components, decomposition_binning must be >= 1")
        if self.kam_radius < 1:
            raise ConfigError("analysis.kam_radius must be >= 1")
        from .online.preprocess import PreprocessChain

        # step names and parameters only: stand-in images of the right kind (a boolean mask);
        # the real images and their shapes are checked when a scan's chain is built
        stand_ins: dict[str, np.ndarray] = {}
        for entry in self.preprocess:
            if isinstance(entry, dict) and isinstance(entry.get("image", entry.get("step")), str):
                kind = bool if entry.get("step") == "mask" else np.float64
                stand_ins[entry.get("image", entry.get("step"))] = np.ones((1, 1), dtype=kind)
        try:
            PreprocessChain.from_config(self.preprocess, stand_ins)
        except ValueError as exc:
            raise ConfigError(f"analysis.preprocess: {exc}") from None


@dataclass
class DaemonConfig:
    """The daemon's own settings plus the analysis settings."""

    #: seconds between two rewrites of a scan's maps file while it runs
    publish_period: float = 1.0
    #: regular expression (case-insensitive) on a scan's title or name marking a dark scan
    dark_pattern: str = "dark"
    #: a dark scan to use when the session has none before a scan: "FILE::SCAN"
    dark: str | None = None
    #: port of the HTTP server giving /metrics (prometheus) and /status; 0 disables it
    metrics_port: int = 0
    #: seconds one blocking read of the live streams waits before checking for shutdown
    read_timeout: float = 0.2
    #: frame-to-published-map latency (p99, seconds) the live maps hold: their binning is
    #: chosen for it (live_binning "auto")
    latency_budget: float = 0.5
    #: the running scan's maps over blocks of live_binning x live_binning pixels (block
    #: sums of the full-resolution accumulators, online/binned_maps.py); the final maps at
    #: scan end, and `process`, are at full resolution. "auto": the smallest binning whose
    #: cycle holds `latency_budget`, following the measured latencies (live_binning.py);
    #: an integer forces it (1: live maps at full resolution)
    live_binning: int | str = "auto"
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)

    def validate(self) -> None:
        if self.publish_period <= 0:
            raise ConfigError("publish_period must be > 0 seconds")
        if self.read_timeout <= 0:
            raise ConfigError("read_timeout must be > 0 seconds")
        if self.live_binning != "auto" and (
            isinstance(self.live_binning, bool) or not isinstance(self.live_binning, int) or self.live_binning < 1
        ):
            raise ConfigError(f"live_binning={self.live_binning!r}: expected \"auto\" or an integer >= 1 "
                              "(1: live maps at full resolution)")
        if not self.latency_budget > 0:
            raise ConfigError(f"latency_budget={self.latency_budget}: must be > 0 seconds")
        if not 0 <= self.metrics_port < 65536:
            raise ConfigError("metrics_port must be a TCP port number (0 disables)")
        import re

        try:
            re.compile(self.dark_pattern)
        except re.error as exc:
            raise ConfigError(f"dark_pattern={self.dark_pattern!r} is not a regex: {exc}") from None
        self.analysis.validate()

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


#: settings that existed and were removed, with why: a config file that still names one gets
#: this message instead of "unknown key"
RETIRED = {
    "warm_pool_mb": "the warm memory pool hid first-touch page faults of one VM; buffers are now allocated once per scan",
    "warm_pool_rss_limit_mb": "the warm memory pool was removed with warm_pool_mb",
    "live_in_place": "every live version is now a new file renamed over the scan's path",
    "live_spare_files": "spare generation files were removed with live_in_place",
    "warmup": "the start-up rehearsal scan was removed: the live maps' binning holds the latency budget instead",
}


def _apply(obj: Any, values: dict[str, Any], where: str) -> None:
    known = {f.name: f for f in fields(obj)}
    for key, value in values.items():
        if key in RETIRED and not where:
            raise ConfigError(f"{key!r} was removed: {RETIRED[key]}; delete it from the configuration")
        if key not in known:
            raise ConfigError(f"unknown key {where}{key!r} (known: {', '.join(sorted(known))})")
        current = getattr(obj, key)
        if isinstance(current, AnalysisConfig):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}{key} must be a table")
            _apply(current, value, f"{key}.")
            continue
        if key == "live_binning":
            pass  # "auto" or an integer: checked by validate()
        elif current is not None:
            if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            elif not isinstance(value, type(current)):
                raise ConfigError(f"{where}{key}={value!r}: expected {type(current).__name__}")
        elif key == "motors" and not (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        ):
            raise ConfigError(f"{where}motors={value!r}: expected a list of motor names")
        elif key in ("monitor", "sums_along_motor", "dark") and not isinstance(value, str):
            raise ConfigError(f"{where}monitor={value!r}: expected a counter name")
        elif key == "detector" and not isinstance(value, str):
            raise ConfigError(f"{where}detector={value!r}: expected a name")
        setattr(obj, key, value)


def load_config(path: str | Path | None = None, **overrides: Any) -> DaemonConfig:
    """Read a TOML file (optional), apply non-None `overrides`, validate, return."""
    config = DaemonConfig()
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        _apply(config, data, "")
    analysis_keys = {f.name for f in fields(AnalysisConfig)}
    for key, value in overrides.items():
        if value is None:
            continue
        if key in analysis_keys:
            _apply(config.analysis, {key: value}, "analysis.")
        else:
            _apply(config, {key: value}, "")
    config.validate()
    return config
