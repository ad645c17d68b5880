"""The stages of a scan-end workflow, one per ewoks task: each reads its inputs from files,
runs the same functions `dfxm-online process` runs (offline.py, analysis/), and writes a
part file (workflow/parts.py) whose path it adds to the job.

    read scan      -> accumulator state (the daemon's, or the moments from the frames)
    moments        -> the final maps (the moments within each pixel's window)
    fit            -> /entry/fit (per-pixel Gaussians; sharded over ewoksjob workers)
    shift          -> /entry/drift
    mask           -> /entry/maps/mask, /entry/maps/domains
    strain / axes  -> sample axes, gradient correction, orientation distribution, strain,
                      weak beam, z-sum, RSM
    bss            -> /entry/bss/...
    write NeXus    -> the maps file (atomically), its quick-look PNG; parts removed

Because every stage runs the same code on the same inputs as `analyse_scan`, the maps
file of a graph equals `process`'s (tests/test_workflows.py checks it).
"""

from __future__ import annotations

import logging
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path

import h5py

from ..acquisition.blissfile import first_scan_with_motors, open_scan
from ..acquisition.geometry import ScanError
from ..analysis.fits import FitSettings
from ..analysis.scan_end import ScanEndOptions
from ..config import AnalysisConfig, ConfigError, load_config
from ..offline import (
    Report,
    accumulate,
    check_fit,
    draw_quicklook,
    final_maps,
    fit_maps,
    scan_end_analyses,
)
from ..online.maps import default_map
from ..online.pipeline import ScanPipeline
from ..publish.atomic import file_lock
from ..publish.nexus import ProcessInfo, read_maps_file, write_maps_file
from ..publish.scan_state import load_state, save_state, state_header
from .job import Job, iso_time
from .parts import Part, read_part, write_part

logger = logging.getLogger(__name__)

#: the scan-end analyses each stage runs (analysis.scan_end.ANALYSES)
ANALYSIS_STAGES = {
    "shift": ("drift",),
    "mask": ("mask", "domains"),
    "strain": ("gradient correction", "orientation distribution", "strain", "weak beam", "zsum", "rsm",
               "sample axes"),
    "bss": ("bss",),
}


def analysis_config(job: Job) -> AnalysisConfig:
    return load_config(job.config_file, detector=job.detector, motors=job.motors,
                       background=job.background).analysis


@contextmanager
def _scan(job: Job, pipeline: ScanPipeline | None = None):
    """The recorded scan, opened as the pipeline saw it (its detector and motors)."""
    config = pipeline.config if pipeline is not None else analysis_config(job)
    motors = pipeline.geometry.motor_names if pipeline is not None else config.motors
    detector = pipeline.geometry.detector if pipeline is not None and pipeline.geometry.detector else config.detector
    monitor = config.monitor if pipeline is None or pipeline.needs_monitor else None
    with open_scan(job.filename, job.scan, detector=detector, motors=motors, monitor=monitor) as rec:
        yield rec


def _state_path(job: Job) -> str:
    if not job.state:
        raise ScanError("the job has no accumulator state: the read-scan stage runs first")
    return job.state


def _state(job: Job) -> ScanPipeline:
    return load_state(_state_path(job))[0]


def _with_part(job: Job, stage: str, part: Part) -> Job:
    path = write_part(job.part_path(stage), part)
    return job.model_copy(update={"parts": [*job.parts, str(path)]})


def read_scan(job: Job, report: Report | None = None) -> Job:
    """The scan's accumulator state: the daemon's saved one when given (the frames are not
    read for the moments again), else the moments of the recorded frames."""
    job = job.model_copy(update={"started": job.started or time.time()})
    if job.scan is None:
        config = analysis_config(job)
        job = job.model_copy(update={"scan": first_scan_with_motors(job.filename, config.detector, config.motors)})
    if job.fit:
        _fit_settings(job)  # bad settings refused before any frame is read
    if job.state:
        if not Path(job.state).exists():
            raise ScanError(f"accumulator state {job.state} does not exist")
        logger.info("%s: starting from the saved accumulator state %s", job.output, job.state)
        return job
    with _scan(job) as rec:
        pipeline = accumulate(rec, analysis_config(job), job.dark, progress=False, report=report)
        state = save_state(job.part_path("state"), pipeline, job.scan_key, dark_scan=job.dark or "")
    return job.model_copy(update={"state": str(state), "parts": [*job.parts, str(state)]})


def moments(job: Job, report: Report | None = None) -> Job:
    """The final maps: the moments within each pixel's window (the frames read again)."""
    pipeline = _state(job)
    with _scan(job, pipeline) as rec:
        maps, provenance = final_maps(rec, pipeline, progress=False, report=report)
    provenance["dark_scan"] = job.dark or ""
    provenance["frames_processed"] = pipeline.frames_processed
    return _with_part(job, "moments", Part(maps=dict(maps), axes=dict(maps.axes), process=provenance))


def _fit_settings(job: Job) -> FitSettings:
    try:
        return FitSettings(**job.fit_settings)
    except TypeError as exc:
        raise ConfigError(f"workflow parameter fit_settings: {exc}") from None


def _final_maps(job: Job) -> dict:
    for path in job.parts:
        if Path(path).name == "moments.h5":
            return read_part(path).maps
    raise ScanError("the job has no final maps: the moments stage runs first")


def fit_band(job: Job, rows: tuple[int, int] | None = None, stage: str = "fit") -> Job:
    """The per-pixel fits (of the detector rows `rows` only: one shard) into a part."""
    if not job.fit:
        return job
    pipeline = _state(job)
    if not pipeline.geometry.motors:
        return job
    settings = _fit_settings(job)
    check_fit(settings, pipeline.geometry)
    with _scan(job, pipeline) as rec:
        maps, info = fit_maps(rec, pipeline, _final_maps(job), settings, progress=False, rows=rows)
    if rows is not None:
        info["fit_rows"] = f"{rows[0]}:{rows[1]}"
        info["fit_host"] = socket.gethostname()
    return _with_part(job, stage, Part(groups={"fit": maps}, process=info))


def analyses(job: Job, stage: str) -> Job:
    """One group of darfix's other analyses (`ANALYSIS_STAGES[stage]`) into a part."""
    if not job.scan_end:
        return job
    pipeline = _state(job)
    if not pipeline.geometry.motors:
        return job
    try:
        options = ScanEndOptions.from_dict(job.scan_end_options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"workflow parameter scan_end_options: {exc}") from None
    with _scan(job, pipeline) as rec:
        groups, fields = scan_end_analyses(rec, pipeline, _final_maps(job), options, ANALYSIS_STAGES[stage])
    fields = {f"{k}_{stage}" if k == "scan_end_skipped" else k: v for k, v in fields.items()}
    return _with_part(job, stage, Part(nxdata=groups, process=fields))


#: /entry/process fields of the replaced file that the new version sets itself
BASE_OWN = ("program", "version", "config", "state", "reason", "frames_processed", "frames_expected", "scan_key",
            "updated")


def _base_process(job: Job) -> dict[str, object]:
    """The /entry/process fields of the maps file the workflow replaces (the daemon's final
    version: its state, end reason, live provenance), {} when there is none."""
    try:
        return read_maps_file(job.output)[1]
    except (OSError, KeyError):
        return {}


def write_nexus(job: Job) -> Path:
    """Assemble the parts into the maps file (one atomic replace) and its quick-look; the
    parts are removed once the file is in place."""
    geometry, config, frames_processed = state_header(_state_path(job))  # its arrays are not needed here
    result = Part()
    for path in job.parts:
        if Path(path).name != "state.h5":
            result.update(read_part(path))
    if "scan_end_skipped" not in result.process:
        skipped = [str(result.process.pop(k)) for k in list(result.process) if k.startswith("scan_end_skipped_")]
        if job.scan_end:
            result.process["scan_end_skipped"] = "\n".join(s for s in skipped if s)
    with file_lock(job.output):  # the daemon records the workflow's state under the same lock
        base = _base_process(job)
        process = {k: v for k, v in base.items() if k not in BASE_OWN}
        if "moment_window" in result.process:  # the daemon's "left to the workflow" note is done with
            process.pop("moment_window_reason", None)
        process.update(result.process)
        frames = int(process.pop("frames_processed", frames_processed))
        record = post_scan_record(job.output) if base else {"workflow": "ewoks (offline)"}
        record.update(state="done", reason="", job_id=job.job_id or record.get("job_id", ""),
                      host=socket.gethostname(), started=record.get("started") or iso_time(job.started),
                      ended=iso_time(time.time()))
        process.update({f"post_scan/{k}": v for k, v in record.items()})
        scan_key = job.scan_key or str(base.get("scan_key") or f"{Path(job.filename).resolve()}::{job.scan}")
        info = ProcessInfo(
            state=str(base.get("state", "complete")), reason=str(base.get("reason", "")), frames_processed=frames,
            frames_expected=int(base.get("frames_expected", geometry.npoints)), scan_key=scan_key,
            config=config.model_dump_json(), extra=process,
        )
        groups = {name: maps for name, maps in result.groups.items() if maps}
        out = write_maps_file(job.output, result.maps, info, default_map(geometry.motor_names), geometry.title,
                              result.axes, groups=groups or None, nxdata=result.nxdata)
    if job.quicklook and geometry.motors:
        draw_quicklook(out, result.maps, result.axes, geometry, {"raw_file": job.filename, "raw_entry": job.scan,
                                                                 **process}, frames, groups.get("fit"),
                       result.nxdata, info.state)
    shutil.rmtree(job.work_dir, ignore_errors=True)
    logger.info("%s written by the scan-end workflow in %.1f s", out, time.time() - job.started)
    return out


def post_scan_record(path: str | Path) -> dict[str, str]:
    """/entry/process/post_scan of a maps file ({} when it has none)."""
    try:
        with h5py.File(path, "r") as f:
            group = f.get("entry/process/post_scan")
            if group is None:
                return {}
            return {k: (v[()].decode() if isinstance(v[()], bytes) else str(v[()])) for k, v in group.items()}
    except OSError:
        return {}


__all__ = ["read_scan", "moments", "fit_band", "analyses", "write_nexus", "post_scan_record"]
