"""A NaN or infinite motor reading drops its point (counted), instead of blanking every map."""

from __future__ import annotations

import numpy as np

from dfxm_online.acquisition.geometry import MotorAxis, ScanGeometry
from dfxm_online.acquisition.model import CrystalModel, scan_positions
from dfxm_online.config import AnalysisConfig, DaemonConfig
from dfxm_online.online.pipeline import ScanPipeline
from dfxm_online.publish.nexus import read_maps_file

from .conftest import wait_done


def _scan(shape=(14, 12)):
    axes = (MotorAxis("mu", -0.4, 0.4, 9), MotorAxis("chi", -1.0, 1.0, 5))
    model = CrystalModel.make(shape, axes, seed=3, peak_counts=4000.0)
    positions = scan_positions(axes)
    rng = np.random.default_rng(4)
    return axes, positions, np.stack([model.frame(p, rng) for p in positions])


def test_points_with_non_finite_positions_are_dropped_and_counted():
    axes, positions, frames = _scan()
    bad = positions.copy()
    bad[7, 0], bad[20, 1] = np.nan, np.inf
    geometry = ScanGeometry(motors=axes, npoints=len(bad), detector="d", frame_shape=frames.shape[1:])

    def maps_of(pos, stack):
        pipeline = ScanPipeline(geometry, stack.shape[1:], AnalysisConfig(accumulators=[]))
        pipeline.update(stack, {"mu": pos[:, 0], "chi": pos[:, 1]})
        return pipeline.snapshot(), pipeline.points_dropped

    maps, dropped = maps_of(bad, frames)
    keep = np.isfinite(bad).all(axis=1)
    expected, none = maps_of(bad[keep], frames[keep])
    assert dropped == 2 and none == 0
    assert np.isfinite(maps["com_mu"]).sum() > 50
    for name in ("intensity", "com_mu", "com_chi", "fwhm_chi"):
        np.testing.assert_array_equal(maps[name], expected[name], err_msg=name)


def test_daemon_reports_the_dropped_points_in_the_file(make_daemon, redis_url, tmp_path):
    from blissdata.redis_engine.store import DataStore

    from dfxm_online.acquisition.publisher import ScanDescription, ScanPublisher

    axes, positions, frames = _scan()
    daemon = make_daemon(DaemonConfig(publish_period=0.1, analysis=AnalysisConfig(moment_window=0)))
    desc = ScanDescription(session="nan", number=1, name="amesh", title="amesh mu -0.4 0.4 8 chi -1 1 4 0.1",
                           filename=tmp_path / "scans" / "n.h5", detector="pco", frame_shape=frames.shape[1:],
                           npoints=len(positions), motors=[(a.name, a.start, a.stop, a.npoints) for a in axes])
    pub = ScanPublisher(DataStore(redis_url), desc, "array")
    pub.start()
    for k, (p, frame) in enumerate(zip(positions, frames)):
        pub.publish({"mu": float("nan") if k == 11 else p[0], "chi": p[1]}, frame)
    pub.finish()
    status = wait_done(daemon, pub.scan.key)
    maps, process = read_maps_file(status.path)
    assert status.state == "complete" and process["points_dropped"] == 1
    assert np.isfinite(maps["com_mu"]).sum() > 50


def test_a_scan_beyond_the_memory_budget_fails_at_its_first_frame_with_the_reason(make_daemon, redis_url, tmp_path):
    from dfxm_online.acquisition.simulate import SimulationSpec, simulate
    from dfxm_online.online.pipeline import ScanPipeline

    # 48 x 40 frames, two motors: ~0.7 MiB of accumulators; a budget of 0.5 MiB refuses them
    geometry = ScanGeometry(motors=(MotorAxis("mu", -1, 1, 5), MotorAxis("chi", -1, 1, 5)), npoints=25,
                            detector="d")
    assert 0.5 * 2**20 < ScanPipeline.memory_bytes(geometry, (48, 40), AnalysisConfig()) < 2**20
    config = DaemonConfig(publish_period=0.2, memory_budget_mb=1)
    daemon = make_daemon(config)
    small = simulate(redis_url, SimulationSpec(kind="mosaicity", points=5, frame_shape=(24, 20), session="mem",
                                               scan_dir=tmp_path / "a"))
    assert wait_done(daemon, small.scan_key).state == "complete"
    big = simulate(redis_url, SimulationSpec(kind="mosaicity", points=5, frame_shape=(256, 128), session="mem",
                                             scan_dir=tmp_path / "b"))
    status = wait_done(daemon, big.scan_key)
    assert status.state == "failed" and "more than memory_budget_mb=1" in status.reason
    assert "bin the frames" in status.reason
