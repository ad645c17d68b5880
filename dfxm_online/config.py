"""One typed configuration for the daemon, offline processing and the ewoks tasks.

A TOML file (see services/dfxm-online.toml) with top-level daemon keys and an `[analysis]`
table; command-line flags override the file. The models are pydantic models: unknown keys
and bad values are rejected with one line that names the key, the value and what is
allowed. This module imports nothing from `online/`: the names it accepts for the
accumulators and the preprocessing steps are declared here, and the registries in
`online/` are checked against them (tests/test_config.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

BACKGROUND_MODES = ("auto", "dark", "edges", "none")
#: the optional accumulators, by the name `analysis.accumulators` gives them
#: (`online/registry.py` builds each)
AccumulatorName = Literal["projections", "median_background", "rolling_median", "minimum", "low_quantile",
                          "sums_along", "pca", "nmf"]
ACCUMULATOR_NAMES: tuple[str, ...] = get_args(AccumulatorName)
#: the preprocessing steps, by the name `analysis.preprocess` gives them (their parameters
#: are checked by `online/preprocess.py`, which builds them)
PREPROCESS_STEPS = ("dark", "hot_pixels", "threshold", "mask", "roi", "binning", "flatfield", "monitor", "cornice")


class ConfigError(ValueError):
    """The configuration is invalid; the message says which key and why."""


class _Model(BaseModel):
    """Strict models: no unknown key, no silent conversion ("2" is not a number)."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


class AnalysisConfig(_Model):
    """How one scan is analysed; the same for the daemon, `process` and the ewoks tasks."""

    #: detector name (e.g. "pco"); None picks the scan's 2D image stream automatically
    detector: str | None = None
    #: motors to use (e.g. ["mu", "chi"]); None uses the motors that move
    motors: list[str] | None = Field(None, min_length=1, max_length=3)
    #: background before moments: "auto" = the scan-edge baseline (it holds the dark and
    #: the diffuse pedestal above it that a dark scan does not record), the session's dark
    #: scan alone only until the first edge frame; or "dark" (dark only), "edges" (edges
    #: only), "none". See docs/science.md.
    background: Literal["auto", "dark", "edges", "none"] = "auto"
    #: final moment maps within this many standard deviations (Mahalanobis) of each
    #: pixel's centre of mass, corrected for a Gaussian's loss to the cut: the tails' noise
    #: stays out of the moments (online/moment_window.py). Needs the frames a second time
    #: (offline: the file; daemon: the scan, at its end). 0: moments over the whole scan
    moment_window: float = 3.0
    #: times the window is re-centred from the windowed moments (each reads the frames)
    moment_window_passes: int = Field(2, ge=1)
    #: fraction of each motor's range at each end whose frames estimate the edge baseline
    edge_fraction: float = Field(0.2, gt=0, lt=0.5)
    #: pixels whose integrated intensity is below this fraction of the bright pixels'
    #: (99.5th percentile) get NaN maps
    min_intensity_fraction: float = Field(0.05, ge=0, lt=1)
    #: frames per accumulator update (one matrix product per batch)
    batch_size: int = Field(64, ge=1)
    #: MiB of raw frames a batch may hold (0: no bound): fewer than `batch_size` frames per
    #: batch when the frames are large. A batch's frames are all in memory at once; at
    #: 2048^2 uint16 the default makes batches of 32 frames (256 MiB) instead of 64 (512 MiB),
    #: which keeps a daemon on a two-motor scan under 2 GB (bench/RESULTS.md)
    batch_mb: int = Field(256, ge=0)
    #: seconds a complete point may wait for its batch to fill (latency budget)
    batch_delay: float = Field(0.1, ge=0)
    #: per-frame preprocessing, in order: [{"step": "hot_pixels", "k": 8}, ...]
    #: (steps: dark, hot_pixels, threshold, mask, roi, binning, flatfield, monitor, cornice)
    preprocess: list[dict[str, Any]] = []
    #: images the steps refer to by name: {"mask": "mask.h5::/mask", "flatfield": "flat.edf"}
    images: dict[str, str] = {}
    #: counter normalising each frame when the chain has a "monitor" step and the scan
    #: records it (e.g. "mon", "srcur"); scans without it are not normalised (warning)
    monitor: str | None = None
    #: KAM neighbourhood radius in pixels (8-connected)
    kam_radius: int = Field(1, ge=1)
    #: optional accumulators besides the moments and the edge baseline: projections (sum,
    #: max, half sums), median_background, rolling_median, minimum, low_quantile,
    #: sums_along (one summed image per value of a motor), pca, nmf
    accumulators: list[AccumulatorName] = ["projections"]
    #: MedianByStep: every k-th frame
    median_step: int = Field(10, ge=1)
    #: RollingMedian window (odd)
    rolling_window: int = Field(9, ge=1)
    #: LowQuantile's q
    low_quantile: float = Field(0.1, ge=0, le=1)
    #: motor of the per-value sums (topo-tomo: omega); default the slowest scanned motor
    sums_along_motor: str | None = None
    #: components of the incremental PCA / chunked NMF, and their spatial binning
    pca_components: int = Field(5, ge=1)
    nmf_components: int = Field(3, ge=1)
    decomposition_binning: int = Field(4, ge=1)
    #: "float64": moment sums exact to ~1e-12; "float32": each batch's product in float32
    #: (faster, ~1e-7 relative error), the sums still accumulated in float64
    precision: Literal["float64", "float32"] = "float64"

    @field_validator("moment_window")
    @classmethod
    def _window(cls, value: float) -> float:
        if not (value == 0 or 1.0 <= value <= 10.0):
            raise ValueError("0 (off) or 1 to 10 standard deviations")
        return value

    @field_validator("rolling_window")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("must be odd")
        return value

    @field_validator("preprocess")
    @classmethod
    def _steps(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for position, entry in enumerate(value):
            name = entry.get("step")
            if name not in PREPROCESS_STEPS:
                raise ValueError(f"unknown preprocess step {name!r} (entry {position}); known: {', '.join(PREPROCESS_STEPS)}")
        return value

    def frames_per_batch(self, frame_shape: tuple[int, ...] | None, dtype: np.dtype | str | None) -> int:
        """Frames per batch for frames of this shape and dtype: `batch_size`, or fewer so that
        the batch's raw frames fit in `batch_mb` MiB (at least one frame). An unknown shape
        (None, or a free dimension <= 0) or dtype gives `batch_size`."""
        if not self.batch_mb or not frame_shape or dtype is None or any(int(n) <= 0 for n in frame_shape):
            return self.batch_size
        frame_bytes = int(np.prod([int(n) for n in frame_shape])) * np.dtype(dtype).itemsize
        return max(1, min(self.batch_size, (self.batch_mb << 20) // frame_bytes))



#: the workflow a daemon starts at each scan's end unless configured otherwise (the test
#: suite's daemons set "none": most tests are about the live path)
DEFAULT_POST_SCAN_WORKFLOW = "post_scan"


def _default_workflow() -> str:
    return DEFAULT_POST_SCAN_WORKFLOW


class PostScanConfig(_Model):
    """The scan-end workflow the daemon starts when a scan ends ([post_scan] in the TOML):
    which graph, where it runs (a local pool of processes or ewoksjob workers), and its
    analysis settings (the graph's inputs, workflow/job.py)."""

    #: the graph: a shipped one by name ("post_scan"), a path to a .json graph, or "none"
    workflow: str = Field(default_factory=_default_workflow)
    #: per scan type (the scan's `type` in its scan_info, e.g. "amesh", "ascan"): a graph
    #: name, a path or "none", instead of `workflow`
    workflows: dict[str, str] = Field(default_factory=dict)
    #: an aborted scan gets its workflow when at least this fraction of its points came in
    aborted_min_fraction: float = Field(0.5, ge=0, le=1)
    #: workflows running at once in the local pool (processes; the live path keeps its cores)
    processes: int = Field(1, ge=1, le=64)
    #: nice level of the local workflow processes (0-19: above the live path's priority never)
    nice: int = Field(10, ge=0, le=19)
    #: run the local workflow processes under Linux's SCHED_IDLE policy (besides `nice`):
    #: they get a core only when the live path leaves it idle. On 2 cores the previous 2048^2
    #: scan's workflow at nice 10 alone raised the next scan's two-motor frame-to-map p99 to
    #: 1.9 s, with SCHED_IDLE 1.0 s (bench/RESULTS.md). A machine whose cores are all busy
    #: with live scans for longer than `timeout` then times its workflows out: set false there
    idle: bool = True
    #: seconds a local workflow may run before it is stopped and marked failed
    timeout: float = Field(3600.0, gt=0)
    #: submit to ewoksjob (Celery) workers instead of the local pool
    ewoksjob: bool = False
    #: the Celery configuration of the ewoksjob client (a python or yaml file, see
    #: services/celeryconfig.py); None: the environment's EWOKS_CONFIG_URI
    celery_config: str | None = None
    #: the ewoksjob queue
    queue: str = "dfxm-online"
    #: keep the scan's accumulator state file (`<maps>.state.h5`, ~15 float64 sums per pixel:
    #: 0.5-0.8 GB for 2048^2 frames) after its workflow succeeded; a failed one's is kept
    #: always, to run it again
    keep_state: bool = False
    #: the graph's analysis inputs (workflow/job.py): fits, their settings and shards, the
    #: scan-end analyses and their options, the quick-look
    fit: bool = True
    fit_settings: dict[str, Any] = Field(default_factory=dict)
    fit_shards: int = Field(1, ge=1, le=256)
    scan_end: bool = True
    scan_end_options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("workflow")
    @classmethod
    def _graph(cls, value: str) -> str:
        if not value:
            raise ValueError('empty: give a graph name, a .json path or "none"')
        return value

    def workflow_for(self, scan_type: str) -> str | None:
        """The graph to start for a scan of `scan_type`; None: none."""
        chosen = self.workflows.get(scan_type, self.workflow)
        return None if chosen.lower() == "none" else chosen


class DaemonConfig(_Model):
    """The daemon's own settings plus the analysis settings."""

    #: seconds between two rewrites of a scan's maps file while it runs
    publish_period: float = Field(1.0, gt=0)
    #: regular expression (case-insensitive) on a scan's title or name marking a dark scan
    dark_pattern: str = "dark"
    #: a dark scan to use when the session has none before a scan: "FILE::SCAN"
    dark: str | None = None
    #: port of the HTTP server giving /metrics (prometheus) and /status; 0 disables it
    metrics_port: int = Field(0, ge=0, lt=65536)
    #: address the /metrics and /status server listens on: loopback by default (/status
    #: names every scan and folder and is not authenticated); "0.0.0.0" or a host's own
    #: address to let a prometheus on another machine scrape it
    metrics_address: str = "127.0.0.1"
    #: seconds one blocking read of the live streams waits before checking for shutdown
    read_timeout: float = Field(0.2, gt=0)
    #: frame-to-published-map latency (p99, seconds) the live maps hold: their binning is
    #: chosen for it (live_binning "auto")
    latency_budget: float = Field(0.5, gt=0)
    #: the running scan's maps over blocks of live_binning x live_binning pixels (block
    #: sums of the full-resolution accumulators, online/binned_maps.py); the final maps at
    #: scan end, and `process`, are at full resolution. "auto": the smallest binning whose
    #: cycle holds `latency_budget`, following the measured latencies (live_binning.py);
    #: an integer forces it (1: live maps at full resolution)
    live_binning: Literal["auto"] | Annotated[int, Field(ge=1)] = "auto"
    #: a quick-look PNG of the final maps beside each maps file (publish/quicklook.py)
    quicklook: bool = True
    #: seconds without a new point after which a scan that is not closed is marked aborted
    #: (its publisher died: such a scan would otherwise stay "running" for ever); 0: never
    scan_idle_timeout: float = Field(600.0, ge=0)
    #: MiB the accumulators of one scan may take (`ScanPipeline.memory_bytes`): a scan that
    #: would need more fails at its first frame with the reason, instead of taking the
    #: machine's memory (a 2048^2 two-motor scan needs ~1.2 GB; 0: no limit)
    memory_budget_mb: int = Field(8192, ge=0)
    #: the scan-end workflow (ewoks) started when a scan ends
    post_scan: PostScanConfig = Field(default_factory=PostScanConfig)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)

    @field_validator("dark_pattern")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value

    @model_validator(mode="before")
    @classmethod
    def _retired(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if key in RETIRED:
                    raise ValueError(f"{key!r} was removed: {RETIRED[key]}; delete it from the configuration")
        return data

    def to_json(self) -> str:
        return json.dumps(self.model_dump(), sort_keys=True)


#: settings that existed and were removed, with why: a config file that still names one gets
#: this message instead of "unknown key"
RETIRED = {
    "warm_pool_mb": "the warm memory pool hid first-touch page faults of one VM; buffers are now allocated once per scan",
    "warm_pool_rss_limit_mb": "the warm memory pool was removed with warm_pool_mb",
    "live_in_place": "every live version is now a new file renamed over the scan's path",
    "live_spare_files": "spare generation files were removed with live_in_place",
    "warmup": "the start-up rehearsal scan was removed: the live maps' binning holds the latency budget instead",
}



def _message(exc: ValidationError) -> str:
    """One line for the first problem: the key, the value given, and what is allowed."""
    errors = exc.errors(include_url=False)

    def where(error: dict) -> str:
        # union members ("literal['auto']", "constrained-int") are not keys
        return ".".join(str(p) for p in error["loc"] if not re.match(r"(function-|literal\[|constrained|int$|str$)", str(p)))

    error = errors[0]
    loc = where(error)
    kind, given = error["type"], error.get("input")
    alternatives = [e["msg"] for e in errors[1:] if where(e) == loc]
    if alternatives:  # a value of a union: every member's condition
        error = {**error, "msg": " or ".join([error["msg"], *alternatives])}
    if kind == "extra_forbidden":
        *parent, key = loc.split(".") if loc else [""]
        where = ".".join(parent) + "." if parent else ""
        return f"unknown key {where}{key!r}"
    message = error["msg"].removeprefix("Value error, ")
    if kind.endswith("_type") or kind.endswith("_parsing"):
        message = f"expected {kind.split('_')[0]}: {message}"
    if not loc:  # a model-level check (a retired key)
        return message
    return f"{loc}={given!r}: {message}"


def analysis_config(**values: Any) -> AnalysisConfig:
    """An `AnalysisConfig` from keyword values, with a `ConfigError` naming the key."""
    try:
        return AnalysisConfig(**values)
    except ValidationError as exc:
        raise ConfigError(_message(exc)) from None


def load_config(path: str | Path | None = None, **overrides: Any) -> DaemonConfig:
    """Read a TOML file (optional), apply the non-None `overrides` (daemon or analysis keys:
    flags), validate, return."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
    analysis = dict(data.pop("analysis", {}) or {})
    for key, value in overrides.items():
        if value is None:
            continue
        if key in AnalysisConfig.model_fields:
            analysis[key] = value
        else:
            data[key] = value
    try:
        return DaemonConfig(**data, analysis=AnalysisConfig(**analysis))
    except ValidationError as exc:
        message = _message(exc)
        in_analysis = exc.title == "AnalysisConfig" and not message.startswith("unknown key")
        raise ConfigError(f"analysis.{message}" if in_analysis else
                          message.replace("unknown key ", "unknown key analysis.", 1)
                          if exc.title == "AnalysisConfig" else message) from None
