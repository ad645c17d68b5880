"""A scan-end workflow's settings, validated once by its first task and handed down the graph.

`ewoks execute graph.json -p NAME=VALUE` gives parameters to the graph's start node, so the
start node takes every parameter a user would change (each with a default in the graph
file) and passes them on, as a small JSON document, to the stages after it. The document
also carries the paths of the parts the stages write: what crosses process (or host)
boundaries is paths on shared storage, never frames or maps.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..acquisition.blissfile import scan_name
from ..config import ConfigError, PostScanConfig


class Job(BaseModel):
    """Everything the stages of one scan-end workflow need (JSON-serialisable)."""

    model_config = ConfigDict(extra="forbid")

    #: the recorded scan: BLISS file and scan ("2.1"; a number such as 2.1 or 2 is accepted)
    filename: str
    scan: str | None = None
    #: the maps file written at the end (replaced atomically)
    output: str
    #: the daemon's saved accumulator state (publish/scan_state.py); None: computed from the frames
    state: str | None = None
    #: the scan key written to /entry/process/scan_key (the daemon's blissdata key); "" = FILE::SCAN
    scan_key: str = ""
    #: analysis settings: a TOML config file and the flags `process` has
    config_file: str | None = None
    detector: str | None = None
    motors: list[str] | None = None
    background: str | None = None
    dark: str | None = None
    #: per-pixel fits (analysis.fits.FitSettings fields) and whether to run them
    fit: bool = True
    fit_settings: dict[str, Any] = Field(default_factory=dict)
    #: fits split into this many bands of rows, run as separate ewoksjob jobs (1: in the task)
    fit_shards: int = Field(default=1, ge=1, le=256)
    #: whether the workflow runs on ewoksjob (Celery) workers: the shards can go to the queue
    ewoksjob: bool = False
    #: the ewoksjob queue the shards go to
    queue: str = "dfxm-online"
    #: the scan-end analyses (analysis.scan_end.ScanEndOptions fields) and whether to run them
    scan_end: bool = True
    scan_end_options: dict[str, Any] = Field(default_factory=dict)
    quicklook: bool = True
    #: ewoksjob's job id of the workflow (recorded in /entry/process/post_scan)
    job_id: str = ""
    #: the stages' part files, in the order they were written
    parts: list[str] = Field(default_factory=list)
    #: when the workflow started (epoch seconds)
    started: float = 0.0

    @field_validator("scan", mode="before")
    @classmethod
    def _scan(cls, value: object) -> str | None:
        # `-p scan=2.1` arrives as the float 2.1, `-p scan=3` as an int
        return None if value is None else scan_name(value if isinstance(value, str) else repr(value))

    @field_validator("motors", mode="before")
    @classmethod
    def _motors(cls, value: object) -> list[str] | None:
        return [m.strip() for m in value.split(",") if m.strip()] if isinstance(value, str) else value

    @property
    def work_dir(self) -> Path:
        """Where the stages' parts go: a hidden folder beside the output, removed at the end."""
        out = Path(self.output)
        return out.with_name(f".{out.stem}.workflow")

    def part_path(self, stage: str) -> Path:
        return self.work_dir / f"{stage}.h5"


def job_from(values: dict[str, Any]) -> Job:
    """A Job from task inputs; a ConfigError naming the bad parameter otherwise."""
    try:
        return Job(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "input"
        raise ConfigError(f"workflow parameter {where}: {err['msg']}") from None


def post_scan_job(config: PostScanConfig, quicklook: bool, *, filename: str, scan: str, output: str, state: str,
                  scan_key: str) -> Job:
    """The job the daemon gives a scan's post-scan workflow: its files, and the analysis
    settings of the daemon's [post_scan] configuration."""
    return Job(filename=filename, scan=scan, output=output, state=state, scan_key=scan_key, fit=config.fit,
               fit_settings=config.fit_settings, fit_shards=config.fit_shards, queue=config.queue,
               scan_end=config.scan_end, scan_end_options=config.scan_end_options, quicklook=quicklook,
               ewoksjob=config.ewoksjob)


def iso_time(epoch: float) -> str:
    """An epoch time as the post-scan record stores it (local ISO 8601), "" for 0 (not yet)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(epoch)) if epoch else ""
