"""A live version written from the previous one's file (publish/version_template.py) is the
file a full write makes; a new layout is written in full; a full disk loses nothing."""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest

from dfxm_online.acquisition.geometry import MotorAxis, ScanGeometry
from dfxm_online.config import AnalysisConfig
from dfxm_online.online.maps import MapBuffers
from dfxm_online.online.pipeline import ScanPipeline
from dfxm_online.publish import nexus
from dfxm_online.publish.nexus import ProcessInfo, read_maps_file, write_maps_file
from dfxm_online.publish.version_template import VersionWriter

from .small_disk import SmallDisk

SHAPE = (36, 28)


def live_maps(seed: int, binning: int = 2, shape: tuple[int, int] = SHAPE):
    """A two-motor pipeline's maps (with their axes) as the daemon publishes them."""
    axes = (MotorAxis("mu", -1.0, 1.0, 6), MotorAxis("chi", -2.0, 2.0, 5))
    geometry = ScanGeometry(motors=axes, npoints=30, detector="pco", frame_shape=shape)
    pipeline = ScanPipeline(geometry, shape, AnalysisConfig())
    mu, chi = np.meshgrid(np.linspace(-1, 1, 6), np.linspace(-2, 2, 5), indexing="ij")
    frames = np.random.default_rng(seed).integers(90, 4000, (30, *shape)).astype(np.uint16)
    pipeline.add(*pipeline.prepared(frames, {"mu": mu.ravel(), "chi": chi.ravel()}))
    return pipeline.snapshot(np.float32, binning, MapBuffers())


def info(frames: int, binning: int = 2, **kw) -> ProcessInfo:
    extra = {"map_binning": binning, "motors": "mu, chi", "points_dropped": 0, "background_rule": "edges"}
    return ProcessInfo(state="running", frames_processed=frames, frames_expected=30, scan_key="esrf:scan:t",
                       config='{"a": 1}', extra={**extra, **kw})


def write(writer: VersionWriter, path, maps, process: ProcessInfo, durable: bool = False):
    return writer.write(path, maps, process, "com_mu", "amesh mu -1 1 5 chi -2 2 4 0.1", maps.axes, durable)


def contents(path) -> dict:
    """Every object of a file: its kind, attributes and (datasets) values; the time a
    version was written left out."""
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            attrs = {k: np.asarray(v).tolist() for k, v in obj.attrs.items()}
            if isinstance(obj, h5py.Dataset) and name != "entry/process/updated":
                value = obj[()]
                out[name] = ("dataset", obj.dtype.str, obj.shape, attrs,
                             value if isinstance(value, bytes) else np.asarray(value).tobytes())
            else:
                out[name] = (type(obj).__name__, attrs)
        f.visititems(visit)
        out["/"] = {k: np.asarray(v).tolist() for k, v in f.attrs.items()}
    return out


def test_a_version_from_the_template_is_the_file_a_full_write_makes(tmp_path):
    writer = VersionWriter()
    path = tmp_path / "amesh_1.h5"
    write(writer, path, live_maps(0), info(10))
    assert writer.has_template and writer.from_template == 0
    maps = live_maps(1)  # new values, the same layout
    later = dataclasses.replace(info(20, points_dropped=3), reason="a changed reason, longer than before")
    write(writer, path, maps, later)
    assert writer.from_template == 1
    write_maps_file(tmp_path / "full.h5", maps, later, "com_mu", "amesh mu -1 1 5 chi -2 2 4 0.1", maps.axes,
                    durable=False)
    assert contents(path) == contents(tmp_path / "full.h5")
    got, process = read_maps_file(path)
    assert process["frames_processed"] == 20 and process["points_dropped"] == 3
    assert process["reason"] == "a changed reason, longer than before"
    for name, values in maps.items():
        np.testing.assert_array_equal(got[name], np.asarray(values, dtype=got[name].dtype))
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_new_layout_is_written_in_full_and_becomes_the_template(tmp_path):
    writer = VersionWriter()
    path = tmp_path / "amesh_1.h5"
    write(writer, path, live_maps(0, binning=2), info(10, binning=2))
    write(writer, path, live_maps(1, binning=1), info(12, binning=1))  # finer: other shapes, axes
    assert writer.from_template == 0 and read_maps_file(path)[0]["com_mu"].shape == SHAPE
    maps = live_maps(2, binning=1)
    write(writer, path, maps, info(14, binning=1))
    assert writer.from_template == 1
    write_maps_file(tmp_path / "full.h5", maps, info(14, binning=1), "com_mu", "amesh mu -1 1 5 chi -2 2 4 0.1",
                    maps.axes, durable=False)
    assert contents(path) == contents(tmp_path / "full.h5")
    # a value that is not a number or text (here a list) is part of the layout
    write(writer, path, maps, info(15, binning=1, angles=[1.0, 2.0]))
    assert writer.from_template == 1
    # the final version (its own layout: more maps) is written in full and kept as no template
    final = live_maps(3, binning=1)
    final["extra_map"] = np.ones(SHAPE, np.float32)
    write(writer, path, final, dataclasses.replace(info(30, binning=1), state="complete"), durable=True)
    assert not writer.has_template and read_maps_file(path)[1]["state"] == "complete"


@pytest.fixture()
def small_disk(tmp_path):
    reason = SmallDisk.available()
    if reason:
        pytest.skip(reason)
    with SmallDisk(tmp_path / "small", 4 << 20) as disk:
        yield disk


@pytest.mark.parametrize("checked", [True, False])
def test_a_full_disk_during_a_version_from_the_template_keeps_the_previous_file(small_disk, monkeypatch, checked):
    """With the free-space check (`checked`) the version is refused before any write;
    without it the disk fills under the sink's one big write: either way one clean OSError,
    the previous version in place, no temporary file, and the next version once space is back."""
    if not checked:
        monkeypatch.setattr(nexus, "check_free_space", lambda folder, needed: None)
    writer = VersionWriter()
    path = small_disk.path / "amesh_1.h5"
    shape = (128, 128)  # ~1 MB a version
    write(writer, path, live_maps(0, 1, shape), info(10, 1))
    small_disk.fill(leave=64 << 10)
    with pytest.raises(OSError) as raised:
        write(writer, path, live_maps(1, 1, shape), info(20, 1))
    assert raised.value.errno == 28
    assert read_maps_file(path)[1]["frames_processed"] == 10
    assert not [p for p in small_disk.path.iterdir() if p.name.endswith(".tmp")]
    small_disk.free()
    maps = live_maps(2, 1, shape)
    write(writer, path, maps, info(30, 1))
    assert writer.from_template == 1  # the failed one is not counted
    got, process = read_maps_file(path)
    assert process["frames_processed"] == 30 and np.array_equal(got["com_mu"], maps["com_mu"], equal_nan=True)
