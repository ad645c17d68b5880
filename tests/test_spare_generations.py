"""Spare generation files: a scan of the same layout rewrites the previous scan's warm files,
and no reader ever sees another scan's values or a file being rewritten."""

from __future__ import annotations

import os
import shutil
import threading
import time

import h5py
import numpy as np
import pytest

from dfxm_online.publish.live_file import LiveMapsFile, _layout
from dfxm_online.publish.nexus import ProcessInfo, read_maps_file
from dfxm_online.publish.spare_generations import SPARE_FOLDER, SpareGenerations

from .test_live_file import assert_version, generations, info, version

AXES = {"com_mu": [("mu", np.linspace(0, 1, 4))]}


def publish_scan(live: LiveMapsFile, first: int, count: int, title: str) -> None:
    """`count` live versions then the final one (`first + count`)."""
    for k in range(first, first + count):
        live.write(version(k), info(k), "com_mu", title, AXES)
        assert_version(live.path, k)
    live.finish(version(first + count), info(first + count, "complete"), "com_mu", title, AXES)


def title_of(path) -> str:
    with h5py.File(path) as f:
        return f["entry/title"][()].decode()


def layout_of(k: int = 0, title: str = "t") -> tuple:
    return _layout(version(k), info(k), "com_mu", title, AXES)


def test_the_next_scan_of_the_same_layout_rewrites_the_spares(tmp_path):
    spares = SpareGenerations(tmp_path, capacity=2)
    first = LiveMapsFile(tmp_path / "s" / "ascan_1.h5", in_place=True, spares=spares)
    publish_scan(first, 0, 4, "ascan mu 0 1 3 0.1")
    # the final file is the generation the link did not point to, rewritten and renamed
    assert first.rewrites == 3 and not first.path.is_symlink()
    assert_version(first.path, 4)
    assert generations(first.path) == []
    # one spare copied when the scan wrote its second new generation, one given back
    assert spares.count(layout_of()) == 2
    first.replenish()  # nothing missing
    assert len(list((tmp_path / SPARE_FOLDER).iterdir())) == 2

    second = LiveMapsFile(tmp_path / "s" / "ascan_2.h5", in_place=True, spares=spares)
    for k in range(10, 15):
        second.write(version(k), info(k), "com_mu", "dscan mu -1 1 30 0.5", AXES)
        assert_version(second.path, k)
        assert title_of(second.path) == "dscan mu -1 1 30 0.5"
        # the first scan's final file is another inode, untouched
        assert_version(first.path, 4)
        assert title_of(first.path) == "ascan mu 0 1 3 0.1"
        assert os.stat(first.path).st_ino != os.stat(second.path).st_ino
    assert second.rewrites == 5 and spares.taken == 2  # no new file at all
    assert spares.count(layout_of()) == 0
    second.finish(version(15), info(15, "complete"), "com_mu", "dscan mu -1 1 30 0.5", AXES)
    assert second.rewrites == 6
    assert_version(second.path, 15)
    assert_version(first.path, 4)
    assert spares.count(layout_of()) == 1  # given back
    second.replenish()  # a copy of the final file makes up for it
    assert spares.count(layout_of()) == 2
    assert_version(second.path, 15)
    maps, process = read_maps_file(second.path)
    assert process["state"] == "complete"
    with h5py.File(second.path) as f:
        np.testing.assert_array_equal(f["entry/maps/com_mu/mu"][()], AXES["com_mu"][0][1])
        assert f["entry/maps"].attrs["default"] == "com_mu"
    third = LiveMapsFile(tmp_path / "s" / "ascan_3.h5", in_place=True, spares=spares)
    for k in range(20, 23):
        third.write(version(k), info(k), "com_mu", "t", AXES)
        assert_version(third.path, k)
    assert third.rewrites == 3
    assert_version(second.path, 15)


def test_another_layout_writes_its_own_files(tmp_path):
    spares = SpareGenerations(tmp_path, capacity=2)
    first = LiveMapsFile(tmp_path / "ascan_1.h5", in_place=True, spares=spares)
    publish_scan(first, 0, 3, "a")
    other = LiveMapsFile(tmp_path / "ascan_2.h5", in_place=True, spares=spares)
    bigger = (80, 48)
    for k in range(3):
        other.write(version(k, bigger), info(k), "com_mu", "b", AXES)
        assert_version(other.path, k, bigger)
    assert other.rewrites == 1 and spares.taken == 0
    # its own spare is laid in; the first layout's stay (capacity is per layout)
    assert spares.count(_layout(version(0, bigger), info(0), "com_mu", "b", AXES)) == 1
    assert spares.count(layout_of()) == 2
    # an untitled scan is another layout too (a title dataset cannot appear in place)
    untitled = LiveMapsFile(tmp_path / "ascan_3.h5", in_place=True, spares=spares)
    untitled.write(version(5), info(5), "com_mu", "", AXES)
    assert untitled.rewrites == 0 and spares.taken == 0


def test_only_the_layouts_used_last_are_kept(tmp_path):
    spares = SpareGenerations(tmp_path, capacity=2)
    shapes = [(64, 48), (80, 48), (96, 48), (112, 48)]
    for n, shape in enumerate(shapes):
        scan = LiveMapsFile(tmp_path / f"ascan_{n}.h5", in_place=True, spares=spares)
        for k in range(3):
            scan.write(version(k, shape), info(k), "com_mu", "a", AXES)
        scan.finish(version(3, shape), info(3, "complete"), "com_mu", "a", AXES)
    counts = [spares.count(_layout(version(0, shape), info(0), "com_mu", "a", AXES)) for shape in shapes]
    assert counts == [0, 2, 2, 2]
    assert len(list((tmp_path / SPARE_FOLDER).iterdir())) == 6


def test_a_spare_held_open_is_dropped_not_rewritten(tmp_path):
    spares = SpareGenerations(tmp_path, capacity=2)
    first = LiveMapsFile(tmp_path / "ascan_1.h5", in_place=True, spares=spares)
    publish_scan(first, 0, 3, "a")
    held_paths = sorted((tmp_path / SPARE_FOLDER).iterdir())
    assert len(held_paths) == 2
    # e.g. viewers that opened the last live versions
    with h5py.File(held_paths[0], "r") as held, h5py.File(held_paths[1], "r"):
        before = held["entry/process/frames_processed"][()]
        second = LiveMapsFile(tmp_path / "ascan_2.h5", in_place=True, spares=spares)
        second.write(version(20), info(20), "com_mu", "a", AXES)
        assert second.rewrites == 0 and spares.taken == 0
        assert not any(p.exists() for p in held_paths)
        assert held["entry/process/frames_processed"][()] == before
        np.testing.assert_array_equal(held["entry/maps/intensity/intensity"][()], float(before))
    assert_version(second.path, 20)


def test_capacity_and_a_disabled_pool(tmp_path):
    spares = SpareGenerations(tmp_path, capacity=1)
    for n in range(3):
        scan = LiveMapsFile(tmp_path / f"ascan_{n}.h5", in_place=True, spares=spares)
        publish_scan(scan, 0, 3, "a")
        scan.replenish()
        assert spares.count(layout_of()) == 1
        assert len(list((tmp_path / SPARE_FOLDER).iterdir())) == 1
    none = SpareGenerations(tmp_path / "off", capacity=0)
    scan = LiveMapsFile(tmp_path / "ascan_9.h5", in_place=True, spares=none)
    publish_scan(scan, 0, 3, "a")
    scan.replenish()
    assert none.count(layout_of()) == 0 and generations(scan.path) == []
    assert not (tmp_path / "off" / SPARE_FOLDER).exists()


def used_pool(tmp_path) -> tuple[SpareGenerations, LiveMapsFile]:
    """A pool after two scans: the second took both spares and gave one back, so one is
    missing and its final file is what `replenish` copies."""
    spares = SpareGenerations(tmp_path, capacity=2)
    publish_scan(LiveMapsFile(tmp_path / "ascan_1.h5", in_place=True, spares=spares), 0, 3, "a")
    second = LiveMapsFile(tmp_path / "ascan_2.h5", in_place=True, spares=spares)
    publish_scan(second, 10, 3, "a")
    assert spares.count(layout_of()) == 1 and second.rewrites == 4
    return spares, second


def test_a_failed_copy_leaves_the_pool_as_it_was(tmp_path, monkeypatch, caplog):
    spares, scan = used_pool(tmp_path)

    def disk_full(src, dst):
        with open(dst, "wb") as fh:
            fh.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", disk_full)
    scan.replenish()
    assert "spare generation not copied from" in caplog.text and "No space left on device" in caplog.text
    assert spares.count(layout_of()) == 1
    (spare,) = (tmp_path / SPARE_FOLDER).iterdir()  # no partial copy left
    monkeypatch.undo()
    third = LiveMapsFile(tmp_path / "ascan_3.h5", in_place=True, spares=spares)
    third.write(version(7), info(7), "com_mu", "a", AXES)
    assert third.rewrites == 1
    assert_version(third.path, 7)


def test_a_scan_waits_for_the_copy_of_its_layout(tmp_path, monkeypatch):
    spares, scan = used_pool(tmp_path)
    started = threading.Event()
    copy = shutil.copyfile

    def slow_copy(src, dst):
        started.set()
        time.sleep(0.3)
        return copy(src, dst)

    monkeypatch.setattr(shutil, "copyfile", slow_copy)
    topping = threading.Thread(target=scan.replenish)
    topping.start()
    assert started.wait(5)
    third = LiveMapsFile(tmp_path / "ascan_3.h5", in_place=True, spares=spares)
    third.write(version(8), info(8), "com_mu", "a", AXES)  # the spare held is free during the copy
    assert third.rewrites == 1 and spares.taken == 3 and topping.is_alive()
    # the second generation: none held, one being copied; the scan waits for it instead of
    # writing a file of its own
    third.write(version(9), info(9), "com_mu", "a", AXES)
    topping.join()
    assert third.rewrites == 2 and spares.taken == 4
    assert_version(third.path, 9)
    assert_version(scan.path, 13)  # the copy's source, unchanged
    assert spares.count(layout_of()) == 0


def test_a_final_file_changed_since_is_not_copied(tmp_path, caplog):
    spares, scan = used_pool(tmp_path)
    time.sleep(0.01)
    with h5py.File(scan.path, "r+") as f:  # e.g. a workflow adding its results to the file
        f["entry/fits"] = np.zeros(3)
    scan.replenish()
    assert "changed since it was written" in caplog.text
    assert spares.count(layout_of()) == 1  # only the generation the scan gave back
    assert [p.suffix for p in (tmp_path / SPARE_FOLDER).iterdir()] == [".h5"]


def test_a_new_pool_removes_what_an_earlier_daemon_left(tmp_path):
    folder = tmp_path / SPARE_FOLDER
    folder.mkdir()
    stale = folder / "spare-1-0.h5"
    stale.write_bytes(b"left by a killed daemon")
    spares = SpareGenerations(tmp_path, capacity=2)
    scan = LiveMapsFile(tmp_path / "ascan_1.h5", in_place=True, spares=spares)
    publish_scan(scan, 0, 3, "a")
    assert not stale.exists()
    assert len(list(folder.iterdir())) == 2
    spares.clear()
    assert list(folder.iterdir()) == []


def test_a_final_file_that_cannot_be_rewritten_is_written_anew(tmp_path):
    scan = LiveMapsFile(tmp_path / "ascan_1.h5", in_place=True)
    scan.write(version(1), info(1), "com_mu", "a", AXES)  # one generation only: the active one
    scan.finish(version(2), info(2, "complete"), "com_mu", "a", AXES)
    assert scan.rewrites == 0 and not scan.path.is_symlink()
    assert_version(scan.path, 2)
    assert generations(scan.path) == []


@pytest.mark.parametrize("state", ["aborted", "failed"])
def test_a_final_version_with_other_maps_is_written_anew(tmp_path, state):
    spares = SpareGenerations(tmp_path, capacity=2)
    scan = LiveMapsFile(tmp_path / "ascan_1.h5", in_place=True, spares=spares)
    for k in range(3):
        scan.write(version(k), info(k), "com_mu", "a", AXES)
    scan.finish({}, ProcessInfo(state=state, reason="broken"), None, "a")
    maps, process = read_maps_file(scan.path)
    assert maps == {} and process["state"] == state and not scan.path.is_symlink()
    assert generations(scan.path) == []
    assert spares.count(layout_of()) == 2  # the copy laid in, the last live version's generation


def test_versions_without_maps_are_not_kept(tmp_path):
    spares = SpareGenerations(tmp_path, capacity=2)
    scan = LiveMapsFile(tmp_path / "ascan_1.h5", in_place=True, spares=spares)
    for k in range(3):  # e.g. a scan whose frames never came
        scan.write({}, info(k), None, "a")
    scan.finish({}, ProcessInfo(state="failed", reason="no frame"), None, "a")
    scan.replenish()
    assert read_maps_file(scan.path)[1]["state"] == "failed"
    assert generations(scan.path) == []
    assert not (tmp_path / SPARE_FOLDER).exists()
