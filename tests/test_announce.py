"""Every published version is announced on the store's `dfxm-online:maps` stream (JSON-free
plain fields), so a viewer blocked on XREAD repaints when a version is out."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import redis

from dfxm_online.acquisition.simulate import SimulationSpec, simulate
from dfxm_online.config import DaemonConfig
from dfxm_online.publish.announce import STREAM

from .conftest import wait_done


def test_versions_are_announced_in_order_and_a_blocked_reader_wakes_up(make_daemon, redis_url, tmp_path):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    woken: list[float] = []

    def reader() -> None:  # what a viewer does: block on the stream from now on
        reply = client.xread({STREAM: "$"}, block=30000, count=1)
        if reply:
            woken.append(time.monotonic())

    thread = threading.Thread(target=reader)
    thread.start()
    time.sleep(0.2)
    daemon = make_daemon(DaemonConfig(publish_period=0.1))
    result = simulate(redis_url, SimulationSpec(kind="rocking", points=21, frame_shape=(16, 12), frame_rate=30,
                                                scan_dir=tmp_path / "s", session="ann", peak_counts=3000.0))
    status = wait_done(daemon, result.scan_key)
    thread.join(30)
    assert woken, "a reader blocked on the stream was never woken"
    entries = [fields for _, fields in client.xrange(STREAM) if fields["scan_key"] == result.scan_key]
    assert len(entries) >= 3
    assert [int(e["version"]) for e in entries] == list(range(1, len(entries) + 1))
    assert all(e["path"] == str(Path(status.path).resolve()) for e in entries)
    assert entries[0]["state"] == "running" and entries[-1]["state"] == "complete"
    assert entries[-1]["frames"] == "21/21" and entries[-1]["map_binning"] == "1"
    assert set(entries[-1]) == {"scan_key", "path", "version", "state", "frames", "map_binning", "time", "delay"}
    # the frame-to-map delay of each version that added frames: from the frame to the file
    delays = [float(e["delay"]) for e in entries if e["delay"]]
    assert delays and all(0 <= d < 60 for d in delays)


def test_a_quicklook_png_beside_every_final_maps_file_and_process_output(make_daemon, redis_url, tmp_path):
    import matplotlib.image

    from dfxm_online.offline import process_to_file
    from dfxm_online.publish.quicklook import quicklook_path

    daemon = make_daemon(DaemonConfig(publish_period=0.2))
    result = simulate(redis_url, SimulationSpec(kind="mosaicity", points=7, frame_shape=(24, 20),
                                                scan_dir=tmp_path / "s", session="png", peak_counts=3000.0))
    status = wait_done(daemon, result.scan_key)
    png = quicklook_path(status.path)
    assert png == Path(status.path).with_suffix(".png") and png.exists()
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 200 and image.shape[1] > 600 and image.std() > 0.05  # drawn, not blank
    assert not list(png.parent.glob(".*.png"))
    out = process_to_file(result.filename, tmp_path / "offline.h5", result.scan_number, progress=False)
    assert quicklook_path(out).exists()
    off = make_daemon(DaemonConfig(publish_period=0.2, quicklook=False), output_dir=tmp_path / "none")
    again = simulate(redis_url, SimulationSpec(kind="rocking", points=7, frame_shape=(24, 20),
                                               scan_dir=tmp_path / "t", session="nopng", peak_counts=3000.0))
    assert not quicklook_path(wait_done(off, again.scan_key).path).exists()


def test_quicklooks_drawn_on_several_threads_at_once(tmp_path):
    """Scans ending together draw their PNGs on several threads: matplotlib is not
    thread-safe (a segmentation fault in its text rendering), so drawing is serialised."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from dfxm_online.publish.quicklook import write_quicklook

    rng = np.random.default_rng(0)
    maps = {"com_mu": rng.normal(size=(30, 20)), "com_chi": rng.normal(size=(30, 20)),
            "fwhm_mu": rng.random((30, 20)), "intensity": rng.random((30, 20)), "kam": rng.random((30, 20))}
    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda k: write_quicklook(maps, ["mu", "chi"], tmp_path / f"q{k}.png", f"scan {k}"),
                              range(12)))
    assert all(p.exists() and p.stat().st_size > 1000 for p in paths)


def test_the_viewer_s_scan_list_shows_each_version_s_delay():
    from dfxm_online.viewer import Version

    assert Version("k", "/o/s/d/ascan_1.h5", "running", "3/9", delay="0.254").label.endswith("3/9, 0.25 s behind")
    assert "behind" not in Version("k", "/o/s/d/ascan_1.h5", "complete", "9/9").label
