"""A scan's accumulator state on disk: what the daemon hands to the scan-end workflow.

At a scan's end the daemon saves its pipeline's `state()` (the power sums, edge baseline
and every optional accumulator) beside the maps file, with everything needed to rebuild
the pipeline elsewhere: the scan geometry as the daemon saw it (the motors' ranges set the
sums' coordinates), the analysis configuration, the raw frame shape and the dark it used.
The ewoks graph then starts from it instead of reading every frame again for the moments;
it reads the frames only for what needs them (the moment window, fits, drift, BSS).

The file is versioned (`STATE_VERSION`): a reader refuses, with the reason, a file of
another format or version rather than misreading it. States are mergeable: two loaded
pipelines of parts of one scan add up with `ScanPipeline.merge`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import h5py
import numpy as np

from ..acquisition.geometry import MotorAxis, ScanError, ScanGeometry
from ..config import AnalysisConfig
from ..images import load_images
from ..online.accumulators.background import RunningMean
from ..online.pipeline import ScanPipeline
from .atomic import atomic_h5

STATE_FORMAT = "dfxm-online accumulator state"
STATE_VERSION = 1


def state_path(maps_path: str | Path) -> Path:
    """Where a scan's state goes: beside its maps file (``scan_3.h5`` -> ``scan_3.state.h5``)."""
    maps_path = Path(maps_path)
    return maps_path.with_name(f"{maps_path.stem}.state.h5")


def geometry_json(geometry: ScanGeometry) -> str:
    return json.dumps(asdict(geometry))


def geometry_from_json(text: str) -> ScanGeometry:
    values = json.loads(text)
    values["motors"] = tuple(MotorAxis(**m) for m in values["motors"])
    values["motor_streams"] = tuple(values.get("motor_streams", ()))
    if values.get("frame_shape") is not None:
        values["frame_shape"] = tuple(values["frame_shape"])
    return ScanGeometry(**values)


def save_state(path: str | Path, pipeline: ScanPipeline, scan_key: str = "", **attrs: str) -> Path:
    """Write `pipeline`'s state to `path` atomically; `attrs` are extra text attributes
    (the scan file and entry, for the workflow that reads the frames)."""
    path = Path(path)
    with atomic_h5(path) as f:
        f.attrs.update(format=STATE_FORMAT, version=STATE_VERSION, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       scan_key=scan_key, geometry=geometry_json(pipeline.geometry),
                       config=pipeline.config.model_dump_json(), raw_shape=np.array(pipeline.raw_shape),
                       has_monitor=pipeline.needs_monitor, points_dropped=pipeline.points_dropped,
                       frames_processed=pipeline.frames_processed, **attrs)
        state = f.create_group("state")
        for key, value in pipeline.state().items():
            _put(state, key, value)
        dark = pipeline.dark_source
        if isinstance(dark, RunningMean):
            group = f.create_group("dark")
            for key, value in dark.state().items():
                _put(group, key, value)
        elif dark is not None:
            f.create_dataset("dark_image", data=np.asarray(dark, dtype=np.float64))
    return path


def _put(group: h5py.Group, key: str, value: object) -> None:
    """One state array; text (an accumulator's names) as HDF5 strings, read back as str."""
    arr = np.asarray(value)
    if arr.dtype.kind == "U":
        group.create_dataset(key, data=np.array(arr, dtype=h5py.string_dtype())).attrs["text"] = True
    else:
        group.create_dataset(key, data=arr)


def _datasets(group: h5py.Group) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}

    def take(name: str, item: h5py.HLObject) -> None:
        if isinstance(item, h5py.Dataset):
            out[name] = item.asstr()[()] if item.attrs.get("text") else item[()]
            if isinstance(out[name], np.ndarray) and out[name].dtype.kind == "O":
                out[name] = out[name].astype(str)

    group.visititems(take)
    return out


def _checked(f: h5py.File, path: Path) -> None:
    if f.attrs.get("format") != STATE_FORMAT:
        raise ScanError(f"{path} is not a dfxm-online accumulator state")
    version = int(f.attrs.get("version", -1))
    if version != STATE_VERSION:
        raise ScanError(f"{path} is an accumulator state of version {version}; this version reads {STATE_VERSION}")


def _open(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise ScanError(f"accumulator state {path} cannot be read: {exc}") from None


def state_header(path: str | Path) -> tuple[ScanGeometry, AnalysisConfig, int]:
    """The scan geometry, configuration and frames processed of a saved state, without
    reading its arrays (what assembling a maps file needs)."""
    path = Path(path)
    with _open(path) as f:
        _checked(f, path)
        return (geometry_from_json(f.attrs["geometry"]), AnalysisConfig.model_validate_json(f.attrs["config"]),
                int(f.attrs["frames_processed"]))


def _text_attrs(f: h5py.File) -> dict[str, str]:
    return {k: (v if isinstance(v, str) else str(v)) for k, v in f.attrs.items()}


def state_attrs(path: str | Path) -> dict[str, str]:
    """A saved state's attributes as text (scan key, scan file and entry...), without its
    arrays; a ScanError says why the file cannot be used."""
    path = Path(path)
    with _open(path) as f:
        _checked(f, path)
        return _text_attrs(f)


def load_state(path: str | Path) -> tuple[ScanPipeline, dict[str, str]]:
    """The pipeline saved in `path`, ready to snapshot, merge or fit from, and the file's
    attributes (scan key, scan file and entry...); a ScanError says why a file cannot be
    used (missing, another format, another version)."""
    path = Path(path)
    with _open(path) as f:
        _checked(f, path)
        geometry = geometry_from_json(f.attrs["geometry"])
        config = AnalysisConfig.model_validate_json(f.attrs["config"])
        raw_shape = tuple(int(v) for v in f.attrs["raw_shape"])
        dark: RunningMean | np.ndarray | None = None
        if "dark" in f:
            dark = RunningMean.from_state(_datasets(f["dark"]))
        elif "dark_image" in f:
            dark = f["dark_image"][()]
        pipeline = ScanPipeline(geometry, raw_shape, config, dark, load_images(config.images),
                                has_monitor=bool(f.attrs["has_monitor"]))
        pipeline.load_state(_datasets(f["state"]))
        pipeline.points_dropped = int(f.attrs["points_dropped"])
        attrs = _text_attrs(f)
    return pipeline, attrs
