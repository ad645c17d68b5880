"""A daemon that starts reconciles with the store and its output folder (issue: never leave a
scan "running"): scans that ended while it was down are processed, finished ones are not
adopted again, files left "running" for scans the store no longer holds are marked aborted,
and a scan whose publisher died times out."""

from __future__ import annotations

import numpy as np
from blissdata.redis_engine.store import DataStore

from dfxm_online.acquisition.publisher import ScanDescription, ScanPublisher
from dfxm_online.acquisition.simulate import SimulationSpec, simulate
from dfxm_online.config import DaemonConfig
from dfxm_online.publish.nexus import ProcessInfo, read_maps_file, write_maps_file
from dfxm_online.publish.recovery import GONE

from .conftest import wait_done


def spec(tmp_path, **kw) -> SimulationSpec:
    return SimulationSpec(kind="rocking", points=11, frame_shape=(16, 12), scan_dir=tmp_path / "scans",
                          peak_counts=3000.0, **kw)


def test_a_scan_that_ended_while_the_daemon_was_down_is_processed_and_then_never_again(
        make_daemon, redis_url, tmp_path):
    done = simulate(redis_url, spec(tmp_path, session="down"))  # no daemon yet
    daemon = make_daemon()
    status = wait_done(daemon, done.scan_key)
    assert status.state == "complete"
    maps, process = read_maps_file(status.path)
    assert process["frames_processed"] == 11 and np.isfinite(maps["com_mu"]).any()
    daemon.stop()
    again = make_daemon()
    assert again.ready.wait(10)
    assert done.scan_key not in again.workers  # its final file is there: not adopted again


def test_a_file_left_running_for_a_scan_the_store_no_longer_holds_is_marked_aborted(make_daemon, redis_url,
                                                                                      tmp_path):
    path = tmp_path / "maps" / "old" / "sample_0001" / "ascan_3.h5"
    write_maps_file(path, {"intensity": np.ones((2, 2))}, ProcessInfo(state="running", scan_key="esrf:scan:gone"))
    other = tmp_path / "maps" / "old" / "sample_0001" / "ascan_4.h5"
    write_maps_file(other, {"intensity": np.ones((2, 2))}, ProcessInfo(state="complete", scan_key="esrf:scan:x"))
    daemon = make_daemon()
    assert daemon.ready.wait(10)
    maps, process = read_maps_file(path)
    assert process["state"] == "aborted" and process["reason"] == GONE
    np.testing.assert_array_equal(maps["intensity"], np.ones((2, 2)))
    assert read_maps_file(other)[1]["state"] == "complete"
    assert not list(path.parent.glob(".*.tmp"))


def test_a_scan_whose_publisher_died_times_out_and_is_not_adopted_at_the_next_start(make_daemon, redis_url,
                                                                                      tmp_path):
    desc = ScanDescription(session="dead", number=1, name="ascan", title="ascan mu 0 1 9 0.1",
                           filename=tmp_path / "scans" / "dead.h5", detector="pco", frame_shape=(16, 12),
                           npoints=10, motors=[("mu", 0.0, 1.0, 10)])
    pub = ScanPublisher(DataStore(redis_url), desc, "array")
    pub.start()
    for k in range(3):
        pub.publish({"mu": k / 9}, np.full((16, 12), 100 + k, dtype=np.uint16))
    # the publisher dies: no more points, the scan is never closed
    daemon = make_daemon(DaemonConfig(publish_period=0.1, scan_idle_timeout=1.0))
    status = wait_done(daemon, pub.scan.key, timeout=30)
    assert status.state == "aborted" and "scan_idle_timeout" in status.reason
    _, process = read_maps_file(status.path)
    assert process["state"] == "aborted" and process["frames_processed"] == 3
    daemon.stop()
    again = make_daemon(DaemonConfig(publish_period=0.1, scan_idle_timeout=1.0))
    assert again.ready.wait(10)
    assert pub.scan.key not in again.workers
