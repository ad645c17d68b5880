"""A running scan's maps file rewritten in place: readers never see a torn or changing file."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from dfxm_online.publish import live_file
from dfxm_online.publish.live_file import (
    LiveMapsFile,
    file_system_type,
    open_elsewhere,
    rewrites_in_place,
)
from dfxm_online.publish.nexus import ProcessInfo, read_maps_file

SHAPE = (64, 48)


def version(k: int, shape=SHAPE) -> dict[str, np.ndarray]:
    """Maps whose every value says which version they are."""
    return {
        "intensity": np.full(shape, float(k)),
        "com_mu": np.full(shape, k + 0.5),
        "mosaicity": np.full((*shape, 3), k, dtype=np.float32),
    }


def info(k: int, state: str = "running") -> ProcessInfo:
    return ProcessInfo(state=state, frames_processed=k, frames_expected=100, reason=f"version {k}" * (k % 3))


def generations(path) -> list:
    return sorted(path.parent.glob(f".{path.name}.live*.h5"))


def assert_version(path, k: int, shape=SHAPE) -> None:
    maps, process = read_maps_file(path)
    assert process["frames_processed"] == k
    assert process["reason"] == f"version {k}" * (k % 3)
    for name, expected in version(k, shape).items():
        np.testing.assert_array_equal(maps[name], expected.astype(np.float32), err_msg=name)


def test_live_versions_are_rewritten_in_place_behind_a_link(tmp_path):
    path = tmp_path / "s" / "ascan_1.h5"
    live = LiveMapsFile(path, in_place=True)
    axes = {"com_mu": [("mu", np.linspace(0, 1, 4))]}
    for k in range(6):
        live.write(version(k), info(k), "com_mu", "ascan mu 0 1 3 0.1", axes)
        assert_version(path, k)
        assert path.is_symlink()
        assert len(generations(path)) <= 2
    assert live.in_place and live.rewrites == 4  # the first two versions create the two generations
    with h5py.File(path) as f:
        assert f["entry/maps"].attrs["default"] == "com_mu"
        assert f["entry/title"][()] == b"ascan mu 0 1 3 0.1"
        assert f["entry/maps/com_mu/com_mu"].dtype == np.float32
    live.finish(version(9), info(9, "complete"), "com_mu")
    assert not path.is_symlink() and path.is_file()
    assert_version(path, 9)
    assert generations(path) == []


def test_a_reader_holding_a_version_keeps_it_unchanged(tmp_path):
    path = tmp_path / "ascan_2.h5"
    live = LiveMapsFile(path, in_place=True)
    live.write(version(1), info(1))
    live.write(version(2), info(2))
    with h5py.File(path, "r") as held:  # opened on version 2's generation
        for k in range(3, 8):
            live.write(version(k), info(k))
            assert_version(path, k)
            np.testing.assert_array_equal(held["entry/maps/intensity/intensity"][()], 2.0)
            assert held["entry/process/frames_processed"][()] == 2
            assert len(generations(path)) <= 3
    assert live.rewrites >= 3  # the generations nobody holds are still rewritten
    live.write(version(8), info(8))
    assert len(generations(path)) == 2  # the released one is not kept when not needed


def test_open_elsewhere_sees_other_processes(tmp_path):
    path = tmp_path / "f.h5"
    path.write_bytes(b"x")
    assert not open_elsewhere(path)
    reader = subprocess.Popen(
        [sys.executable, "-c", f"import sys, time; f = open({str(path)!r}); print('open', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert reader.stdout.readline().strip() == "open"
        assert open_elsewhere(path)
    finally:
        reader.kill()
        reader.wait()
    assert not open_elsewhere(path)
    assert open_elsewhere(tmp_path / "missing.h5")


def test_a_new_layout_is_written_in_full(tmp_path):
    path = tmp_path / "ascan_3.h5"
    live = LiveMapsFile(path, in_place=True)
    for k in range(3):
        live.write(version(k), info(k))
    rewrites = live.rewrites
    bigger = (80, 48)
    live.write(version(3, bigger), info(3))  # e.g. a map that appears during the scan
    assert live.rewrites == rewrites
    assert_version(path, 3, bigger)
    live.write(version(4, bigger), info(4))
    live.write(version(5, bigger), info(5))
    assert live.rewrites == rewrites + 1
    assert_version(path, 5, bigger)
    assert len(generations(path)) == 2


def test_a_failed_rewrite_leaves_the_previous_version(tmp_path, monkeypatch):
    path = tmp_path / "ascan_4.h5"
    live = LiveMapsFile(path, in_place=True)
    for k in range(3):
        live.write(version(k), info(k))

    def disk_full(target, maps, info_, axes=None, title=None):  # writes part of the maps, then fails
        with h5py.File(target, "r+") as f:
            f["entry/maps/intensity/intensity"][...] = -1
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(live_file, "rewrite_maps_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        live.write(version(3), info(3))
    assert_version(path, 2)
    assert len(generations(path)) == 1  # the torn generation is gone
    monkeypatch.undo()
    live.write(version(4), info(4))
    assert_version(path, 4)


def test_earlier_daemons_generations_are_swept(tmp_path):
    path = tmp_path / "ascan_5.h5"
    first = LiveMapsFile(path, in_place=True)
    for k in range(3):
        first.write(version(k), info(k))
    stale = path.with_name(f".{path.name}.live77.h5")
    stale.write_bytes(b"left by a killed daemon")
    second = LiveMapsFile(path, in_place=True)  # a restarted daemon processing the scan again
    assert_version(path, 2)  # what the killed daemon published stays readable until replaced
    second.write(version(10), info(10))
    second.write(version(11), info(11))
    assert_version(path, 11)
    assert not stale.exists()
    assert len(generations(path)) == 2


def test_without_in_place_every_version_is_a_new_file(tmp_path):
    path = tmp_path / "ascan_6.h5"
    live = LiveMapsFile(path, in_place=False)
    for k in range(3):
        live.write(version(k), info(k))
        assert not path.is_symlink()
        assert_version(path, k)
    assert live.rewrites == 0 and generations(path) == []


def test_file_system_types(tmp_path):
    assert file_system_type("/proc/self") == "proc"
    assert not rewrites_in_place("/proc")
    if os.path.ismount("/dev/shm"):
        assert file_system_type("/dev/shm/x") == "tmpfs" and rewrites_in_place("/dev/shm")
    # the daemon's default decides from the folder it writes to
    auto = LiveMapsFile(tmp_path / "d" / "ascan_8.h5")
    auto.write(version(0), info(0))
    assert auto.in_place == rewrites_in_place(tmp_path)


READER = textwrap.dedent("""
    import sys, time, h5py
    path = sys.argv[1]
    seen, torn = set(), []
    print("ready", flush=True)
    deadline = time.monotonic() + 60  # never outlive a failed test
    while time.monotonic() < deadline:
        try:
            with h5py.File(path, "r") as f:
                k = int(f["entry/process/frames_processed"][()])
                state = f["entry/process/state"][()].decode()
                values = {float(f[f"entry/maps/{m}/{m}"][0, 0]) for m in ("intensity",)}
                values |= {float(f[f"entry/maps/{m}/{m}"][-1, -1]) - 0.5 for m in ("com_mu",)}
                values |= {float(f["entry/maps/intensity/intensity"][()].mean())}
        except (OSError, KeyError):
            continue  # not written yet
        if values != {float(k)}:
            torn.append((k, sorted(values)))
        seen.add(k)
        if state != "running":
            break
    print(len(seen), len(torn), torn[:3], flush=True)
""")


def test_a_reader_in_another_process_never_sees_a_mixed_version(tmp_path):
    path = tmp_path / "ascan_7.h5"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "ready"
        live = LiveMapsFile(path, in_place=True)
        shape = (512, 512)
        for k in range(60):
            live.write(version(k, shape), info(k))
        live.finish(version(60, shape), info(60, "complete"))
        out, _ = reader.communicate(timeout=60)
    finally:
        reader.kill()
        reader.wait()
    seen, torn = out.split()[:2]
    assert int(torn) == 0, out
    assert int(seen) >= 5, out
    assert live.rewrites >= 10  # the reader opens and closes: most versions were in place
