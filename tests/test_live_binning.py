"""The live maps' binning under a latency budget (live_binning.py) and the retired settings."""

from __future__ import annotations

import pytest

from dfxm_online.config import ConfigError, load_config
from dfxm_online.live_binning import (
    PREVIEW_BYTES,
    STEPS,
    BinningController,
    SettledBinnings,
    initial_binning,
    preview_binning,
    preview_bytes,
)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_first_guess_grows_with_pixels_and_motors():
    assert initial_binning((128, 128), 1, 0.5) == 1
    assert initial_binning((2048, 2048), 1, 0.5) == 1
    assert initial_binning((2048, 2048), 2, 0.5) == 2
    assert initial_binning((4096, 4096), 3, 0.5) > initial_binning((4096, 4096), 1, 0.5)
    assert initial_binning((2048, 2048), 2, 0.1) > initial_binning((2048, 2048), 2, 0.5)
    assert initial_binning((100000, 100000), 3, 0.01) == STEPS[-1]


def test_the_preview_is_the_finest_step_whose_accumulators_fit():
    # 2048^2: one motor 13 rows (109 MB at 2x2), two motors 27 rows (226 MB at 2x2, 100 at 3x3)
    assert preview_bytes((2048, 2048), 1, 2) == 8 * 13 * 1024 * 1024
    assert preview_binning((2048, 2048), 1) == 2
    assert preview_binning((2048, 2048), 2) == 3
    assert preview_binning((4096, 4096), 3) > preview_binning((2048, 2048), 3)
    assert preview_binning((512, 512), 2) == 1  # small frames are their own preview
    assert preview_binning((2048, 2048), 2, forced=1) == 1  # live_binning 1: full-resolution live maps
    assert preview_binning((2048, 2048), 1, forced=5) == 5
    assert preview_binning((4, 4), 1, forced=5) == 1  # never larger than the frame
    for shape, motors in (((2048, 2048), 1), ((2048, 2048), 2), ((2, 2), 3)):
        base = preview_binning(shape, motors)
        assert preview_bytes(shape, motors, base) <= PREVIEW_BYTES or base == max(s for s in STEPS if s <= 2)


def test_live_binnings_are_multiples_of_the_preview_binning():
    clock = Clock()
    control = BinningController((2048, 2048), 2, 0.5, hold=3.0, window=4, clock=clock)
    assert control.base == 3 and control.steps == (3, 6, 12) and control.current == 3
    clock.t = 3.5
    assert control.observe(0.9) == 6
    clock.t = 7.0
    assert control.observe(0.9) == 12
    clock.t = 11.0
    assert control.observe(0.9) == 12  # the coarsest
    assert BinningController((2048, 2048), 1, 0.05).current in (4, 8, 16)  # a tight budget: coarser multiples of 2


def test_coarser_when_over_budget_finer_when_well_under_at_most_once_per_hold():
    clock = Clock()
    control = BinningController((512, 512), 1, 0.5, hold=3.0, window=4, clock=clock)
    assert control.base == 1 and control.current == 1
    assert control.observe(0.9) == 1  # within the hold time of its start: no change yet
    clock.t = 3.5
    assert control.observe(0.9) == 2  # over the budget: the next coarser step
    assert control.observe(0.3) == 2  # held
    clock.t = 7.0
    assert control.observe(0.4) == 2  # the window was cleared at the change: within budget
    for _ in range(3):
        control.observe(0.1)
    assert control.current == 2  # 0.4 still in the window: not under half the budget
    control.observe(0.1)
    assert control.current == 1  # four in a row under half the budget (no cost given): finer again
    clock.t = 8.0
    for _ in range(8):
        assert control.observe(0.1) == 1  # at full resolution: nothing finer


def test_finer_only_when_the_finer_maps_extra_cost_fits_too():
    """At 12x12 a version costing 0.05 s costs ~0.2 s at 6x6 (4x the pixels): latencies of
    0.12 s then predict 0.27 s, over half the 0.5 s budget, and the binning stays. Cheap
    versions (0.01 s: 0.15 s predicted) let it go finer."""
    clock = Clock()
    control = BinningController((2048, 2048), 2, 0.5, hold=3.0, window=4, clock=clock, start=12)
    assert control.current == 12 and 6 in control.steps
    clock.t = 4.0
    for _ in range(8):
        assert control.observe(0.12, cost=0.05) == 12
    for _ in range(3):
        assert control.observe(0.12, cost=0.01) == 12  # a costly version still in the window
    assert control.observe(0.12, cost=0.01) == 6
    clock.t = 8.0
    for _ in range(4):
        control.observe(0.6, cost=0.2)
    assert control.current == 12  # over the budget at 6x6: coarser again


def test_a_scan_starts_where_the_last_of_its_kind_settled():
    settled = SettledBinnings()
    assert settled.recall((2048, 2048), 2) is None
    settled.remember((2048, 2048), 2, 12)
    settled.remember((2048, 2048), 1, 2)
    assert settled.recall((2048, 2048), 2) == 12 and settled.recall((2048, 2048), 1) == 2
    assert settled.recall((1024, 1024), 2) is None  # another kind of scan: its own guess
    control = BinningController((2048, 2048), 2, 0.5, start=settled.recall((2048, 2048), 2))
    assert control.current == 12 and initial_binning((2048, 2048), 2, 0.5, control.steps) != 12
    # a start that is not one of the scan's steps (another preview binning) is the guess's
    assert BinningController((2048, 2048), 2, 0.5, start=4).current == initial_binning((2048, 2048), 2, 0.5, (3, 6, 12))
    assert BinningController((2048, 2048), 2, 0.5, forced=6, start=12).current == 6  # forced wins


def test_forced_binning_never_moves_and_never_exceeds_the_frame():
    clock = Clock()
    control = BinningController((2048, 2048), 2, 0.5, forced=4, clock=clock)
    clock.t = 100.0
    assert control.observe(5.0) == 4 and control.observe(0.01) == 4
    assert BinningController((3, 3), 1, 0.5, forced=4).current == 1  # a narrow ROI: full resolution
    assert BinningController((6, 6), 3, 1e-6, clock=clock).current <= 6


def test_live_binning_and_budget_settings():
    assert load_config().live_binning == "auto" and load_config().latency_budget == 0.5
    assert load_config(None, live_binning=3).live_binning == 3
    for bad in ("fast", 0, True):
        with pytest.raises(ConfigError, match="live_binning"):
            load_config(None, live_binning=bad)
    with pytest.raises(ConfigError, match="latency_budget"):
        load_config(None, latency_budget=0.0)


@pytest.mark.parametrize("key", ["warm_pool_mb", "live_in_place", "live_spare_files", "warm_pool_rss_limit_mb"])
def test_a_retired_setting_gets_one_clear_line(tmp_path, key):
    path = tmp_path / "old.toml"
    path.write_text(f"{key} = 1\n")
    with pytest.raises(ConfigError, match=f"'{key}' was removed: .*delete it from the configuration"):
        load_config(path)


def test_the_retired_warmup_table_too(tmp_path):
    path = tmp_path / "old.toml"
    path.write_text("[warmup]\nframe_shape = [2048, 2048]\n")
    with pytest.raises(ConfigError, match="'warmup' was removed"):
        load_config(path)


def test_daemon_bins_live_maps_to_hold_a_tight_budget_and_ends_at_full_resolution(make_daemon, redis_url, tmp_path):
    """A budget no full-resolution cycle can hold: the running versions are binned from the
    first one on (map_binning > 1 in the file and /status), the final maps are not."""
    import time

    from dfxm_online.acquisition.simulate import SimulationSpec, simulate
    from dfxm_online.config import DaemonConfig
    from dfxm_online.publish.nexus import read_maps_file

    from .conftest import wait_done

    daemon = make_daemon(DaemonConfig(publish_period=0.05, latency_budget=1e-6))
    spec = SimulationSpec(kind="rocking", points=41, frame_shape=(48, 40), frame_rate=40, scan_dir=tmp_path / "s",
                          session="budget", peak_counts=3000.0)
    seen: set[int] = set()
    import threading

    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(r=simulate(redis_url, spec)))
    thread.start()
    path = tmp_path / "maps" / "budget" / "sample_0001" / "ascan_1.h5"
    while thread.is_alive():
        try:
            maps, process = read_maps_file(path)
            if process["state"] == "running" and "com_mu" in maps:
                seen.add(int(process["map_binning"]))
                assert maps["com_mu"].shape == (48 // process["map_binning"], 40 // process["map_binning"])
        except (OSError, KeyError):
            pass
        time.sleep(0.01)
    thread.join()
    status = wait_done(daemon, result["r"].scan_key)
    assert seen and min(seen) > 1, seen
    final, process = read_maps_file(status.path)
    assert process["state"] == "complete" and process["map_binning"] == 1 and final["com_mu"].shape == (48, 40)
    assert daemon.status()["scans"][result["r"].scan_key]["map_binning"] == 1


def test_full_resolution_one_pass_maps_go_out_before_the_window_reads_the_frames_again(make_daemon, redis_url,
                                                                                        tmp_path, monkeypatch):
    """Every version the daemon writes, in order: binned running ones (a tight budget), then
    with every frame in the full-resolution one-pass maps (still "running", the window in
    progress), then the final windowed maps."""
    from dfxm_online.acquisition.simulate import SimulationSpec, simulate
    from dfxm_online.config import DaemonConfig
    from dfxm_online.publish.version_template import VersionWriter

    from .conftest import wait_done

    versions = []
    original = VersionWriter.write

    def recording(self, path, maps, info, *args, **kwargs):
        shape = maps["com_mu"].shape if "com_mu" in maps else None
        versions.append((info.state, info.frames_processed, shape, info.extra["moment_window_reason"]))
        return original(self, path, maps, info, *args, **kwargs)

    monkeypatch.setattr(VersionWriter, "write", recording)
    daemon = make_daemon(DaemonConfig(publish_period=0.05, latency_budget=1e-6))
    spec = SimulationSpec(kind="rocking", points=31, frame_shape=(48, 40), frame_rate=60, scan_dir=tmp_path / "s",
                          session="order", peak_counts=3000.0)
    result = simulate(redis_url, spec)
    assert wait_done(daemon, result.scan_key).state == "complete"
    running = [v for v in versions if v[0] == "running" and v[2] is not None]
    assert any(v[2] != (48, 40) for v in running[:-1])  # binned while the scan ran
    assert running[-1] == ("running", 31, (48, 40), "windowed final moments in progress")
    assert versions[-1] == ("complete", 31, (48, 40), "")


def test_daemon_starts_a_scan_at_the_binning_its_kind_settled_on_and_remembers_it(make_daemon, redis_url, tmp_path,
                                                                                  monkeypatch):
    """A daemon in service: the scan's live versions start at the binning the last scan of
    the same frame shape and motors had (here 4, where the first guess for 48 x 40 frames
    is full resolution), and the final maps are full resolution."""
    from dfxm_online.acquisition.simulate import SimulationSpec, simulate
    from dfxm_online.config import DaemonConfig
    from dfxm_online.publish.version_template import VersionWriter

    from .conftest import wait_done

    versions = []
    original = VersionWriter.write

    def recording(self, path, maps, info, *args, **kwargs):
        versions.append((info.state, int(info.extra["map_binning"]), maps["com_mu"].shape if "com_mu" in maps else None))
        return original(self, path, maps, info, *args, **kwargs)

    monkeypatch.setattr(VersionWriter, "write", recording)
    daemon = make_daemon(DaemonConfig(publish_period=0.05, latency_budget=30.0))
    assert initial_binning((48, 40), 1, 30.0) == 1
    daemon.settled_binnings.remember((48, 40), 1, 4)  # what the previous scan of this kind ended at
    spec = SimulationSpec(kind="rocking", points=31, frame_shape=(48, 40), frame_rate=60, scan_dir=tmp_path / "s",
                          session="settled", peak_counts=3000.0)
    result = simulate(redis_url, spec)
    assert wait_done(daemon, result.scan_key).state == "complete"
    running = [v for v in versions if v[0] == "running" and v[2] is not None]
    assert running and running[0][1:] == (4, (12, 10)), versions
    assert versions[-1] == ("complete", 1, (48, 40))
    # what the scan left: 4, or finer had it run past the 3 s hold well within the budget
    assert daemon.settled_binnings.recall((48, 40), 1) in (1, 2, 3, 4)
    # a scan of a kind not seen before starts at the guess and leaves it for the next one
    assert daemon.settled_binnings.recall((32, 24), 1) is None
    spec = SimulationSpec(kind="rocking", points=31, frame_shape=(32, 24), frame_rate=60, scan_dir=tmp_path / "t",
                          session="settled", peak_counts=3000.0)
    result = simulate(redis_url, spec)
    assert wait_done(daemon, result.scan_key).state == "complete"
    assert daemon.settled_binnings.recall((32, 24), 1) == 1
