"""The silx live viewer, headless (offscreen Qt) and under a real X server (Xvfb, started
here when the binary is there): it opens a maps file and a live scan, its screenshots show
the map's and the key's colours, images are drawn as silx and the quick-look PNG draw them
(row 0 at the bottom), a version a real daemon announces is on show within 1 s, switching
scans works, and a torn or missing file is reported, never fatal."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
qt = pytest.importorskip("silx.gui.qt", reason="the viewer extra (a Qt binding) is not installed")

from dfxm_online.acquisition.simulate import SimulationSpec, simulate  # noqa: E402
from dfxm_online.config import DaemonConfig  # noqa: E402

# The daemons here run in the viewer's process, so they draw no quick-look: matplotlib is not
# thread-safe, and a PNG drawn on a scan thread while silx's plot draws on the Qt thread
# crashed a full run once (in service the daemon and the viewer are separate processes).
from dfxm_online.offline import process_to_file  # noqa: E402
from dfxm_online.publish.announce import Announcer  # noqa: E402
from dfxm_online.publish.nexus import ProcessInfo, read_maps_file, write_maps_file  # noqa: E402
from dfxm_online.publish.quicklook import _DRAWING, draw_figure  # noqa: E402
from dfxm_online.viewer import Version, as_read, build_window  # noqa: E402

from .conftest import wait_done  # noqa: E402
from .viewer_checks import close, epoch, pump, qimage_rgb, screenshot_findings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def app():
    return qt.QApplication.instance() or qt.QApplication([])


def shown(window) -> np.ndarray | None:
    image = window.plot.getActiveImage()
    return None if image is None else image.getData(copy=False)


@pytest.fixture()
def maps_file(redis_url, tmp_path) -> Path:
    rec = simulate(redis_url, SimulationSpec(kind="mosaicity", points=9, frame_shape=(40, 32), peak_counts=3000.0,
                                             scan_dir=tmp_path / "s", session="v"))
    return process_to_file(rec.filename, tmp_path / "maps.h5", rec.scan_number, progress=False)


def test_opens_a_maps_file_draws_the_map_and_the_mosaicity_key(app, maps_file):
    window = build_window(file=maps_file)
    window.resize(1200, 700)
    window.show()
    try:
        assert pump(app, 5, lambda: shown(window) is not None)
        assert window.chooser.currentText() == "com_mu"
        np.testing.assert_array_equal(shown(window), window.maps["com_mu"])
        # labels and units from the file: the colour bar, the axes (frame pixels here)
        assert window.plot.getColorBarWidget().getLegend() == "centre of mass along mu (deg)"
        assert window.plot.getXAxis().getLabel() == "column (pixel)"
        window.chooser.setCurrentText("mosaicity")
        pump(app, 0.5)
        assert window.key.isVisible() and window.key.getActiveImage() is not None
        assert window.key.getXAxis().getLabel() == "mu (deg)" and window.key.getYAxis().getLabel() == "chi (deg)"
        # the screenshot shows the map's colours and the key's
        found = screenshot_findings(window, qimage_rgb(window.grab().toImage()))
        assert found["map"] > 0.9 and found["key"] > 0.9, found
        window.key.setVisible(False)  # (the checks can fail: without the key its colours are gone)
        assert screenshot_findings(window, qimage_rgb(window.grab().toImage()))["key"] < 0.5
    finally:
        close(app, window)


def _row_order(screenshot: np.ndarray, top_colour, bottom_colour) -> tuple[float, float]:
    """Mean screen row (0 = top) of the pixels of two colours."""
    rows = []
    for colour in (top_colour, bottom_colour):
        match = (np.abs(screenshot.astype(int) - np.asarray(colour, dtype=int)).max(axis=-1) <= 2)
        assert match.sum() > 20, colour
        rows.append(float(np.nonzero(match)[0].mean()))
    return rows[0], rows[1]


@pytest.mark.parametrize("sample", [False, True], ids=["pixel axes", "sample axes"])
def test_the_viewer_and_the_png_orient_images_as_silx(app, tmp_path, sample):
    """A map whose upper rows (high index) are high and lower rows low: silx's Plot2D
    draws row 0 at the bottom (origin lower left), so high is on top, in the viewer and in
    the quick-look PNG alike; with sample axes that decrease along the rows (µm, as the
    objective inverts the image) both put row 0 on top instead."""
    rows = np.repeat(np.arange(12.0)[:, None], 10, axis=1)
    maps = {"intensity": np.full((12, 10), 5.0), "com_mu": np.where(rows >= 6, 1.0, 0.0)}
    maps["com_mu"][0, 0], maps["com_mu"][-1, -1] = 0.0, 1.0
    nxdata = {"/entry/sample_axes": {"pixel_size": np.array([1.0, 1.0]), "y": 5.5 - np.arange(12.0),
                                     "x": np.arange(10.0) - 4.5, "@signal": "pixel_size"}} if sample else None
    path = write_maps_file(tmp_path / "o.h5", maps, ProcessInfo(state="complete"), default="com_mu", nxdata=nxdata)
    window = build_window(file=path)
    window.resize(900, 600)
    window.show()
    try:
        assert pump(app, 5, lambda: shown(window) is not None)
        colormap = window.plot.getActiveImage().getColormap()
        high, low = (tuple(colormap.applyToData(np.array([v]))[0, :3]) for v in (1.0, 0.0))
        high_row, low_row = _row_order(qimage_rgb(window.plot.grab().toImage()), high, low)
        assert (high_row < low_row) != sample  # screen rows grow downwards
        if sample:
            assert window.plot.getYAxis().getLabel() == "sample y (um)"
    finally:
        close(app, window)
    with _DRAWING:  # the PNG's panel, drawn as write_quicklook draws it
        import matplotlib.pyplot as plt

        fig = draw_figure(maps, ["mu"], "t", image_axes=(nxdata["/entry/sample_axes"]["y"],
                                                         nxdata["/entry/sample_axes"]["x"]) if sample else None)
        try:
            fig.canvas.draw()
            pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3]
            ax = next(a for a in fig.axes if a.get_label() == "com_mu")
            image = ax.images[0]
            cmap, norm = image.get_cmap(), image.norm
            png_high, png_low = (tuple(np.rint(np.asarray(cmap(norm(v)))[:3] * 255).astype(int)) for v in (1.0, 0.0))
            x0, y0, x1, y1 = (int(v) for v in ax.get_window_extent().extents)
            height = pixels.shape[0]
            panel = pixels[height - y1:height - y0, x0:x1]
            high_row, low_row = _row_order(panel, png_high, png_low)
            assert (high_row < low_row) != sample
        finally:
            plt.close(fig)


def test_what_is_on_show_is_the_file_as_read_not_the_announcement():
    """The file read after an announcement may hold a newer version already (the daemon
    replaces it several times a second): the viewer's record of what it shows takes the
    state, frames and binning from the file, the announcement's number and time stay."""
    announced = Version("esrf:scan:x", "/maps/amesh_1.h5", "running", "40/81", "2", 7, "2026-12-07T06:00:00")
    shown = as_read(announced, {"state": "complete", "frames_processed": "81", "frames_expected": "81",
                                "map_binning": "1"})
    assert (shown.state, shown.frames, shown.map_binning) == ("complete", "81/81", "1")
    assert (shown.version, shown.announced, shown.path) == (7, "2026-12-07T06:00:00", "/maps/amesh_1.h5")
    assert as_read(announced, {}) == announced  # a file without those fields: the announcement's


def test_a_live_scan_is_shown_as_the_daemon_announces_it(app, make_daemon, redis_url, tmp_path):
    """A running scan's versions are on show as they come (binned 2x2 while it runs), each
    within 1 s of its announcement by a real daemon, then the final maps."""
    window = build_window(redis_url=redis_url)
    window.show()
    seen: dict[tuple[str, int], tuple[str, float]] = {}  # (scan, version) shown -> (state, delay)
    placed: set[tuple] = set()  # (map binning, origin, scale) of the images on show
    try:
        pump(app, 0.5)
        daemon = make_daemon(DaemonConfig(publish_period=0.2, live_binning=2, quicklook=False))
        spec = SimulationSpec(kind="mosaicity", points=9, frame_rate=25.0, frame_shape=(40, 32), peak_counts=3000.0,
                              scan_dir=tmp_path / "l", session="live")
        scan = threading.Thread(target=simulate, args=(redis_url, spec))
        scan.start()

        def record() -> bool:
            v = window.shown
            if v is not None and v.announced:
                seen.setdefault((v.scan_key, v.version), (v.state, window.shown_at - epoch(v.announced)))
                image = window.plot.getActiveImage()  # (none before a version with maps)
                if image is not None:
                    placed.add((int(v.map_binning), tuple(image.getOrigin()), tuple(image.getScale())))
            return v is not None and v.state == "complete"

        assert pump(app, 90, record), window.statusBar().currentMessage()
        scan.join()
        assert any(state == "running" for state, _ in seen.values()), "no running version was shown"
        assert window.shown.state == "complete" and window.shown.frames == "81/81"
        assert max(delay for _, delay in seen.values()) < 1.0, seen
        status = wait_done(daemon, window.shown.scan_key)
        maps, process = read_maps_file(status.path)
        np.testing.assert_array_equal(shown(window), maps["com_mu"])
        assert process["map_binning"] == 1
        # the live maps binned 2x2 and the final ones cover the same frame pixels (the
        # file's axes: block centres), so the picture does not jump at the scan's end
        assert placed >= {(2, (-0.5, -0.5), (2.0, 2.0)), (1, (-0.5, -0.5), (1.0, 1.0))}
        assert all(scale == (b, b) and origin == (-0.5, -0.5) for b, origin, scale in placed), placed
    finally:
        close(app, window)


def test_follows_a_daemon_switches_scans_and_reports_unreadable_files(app, make_daemon, redis_url, tmp_path):
    window = build_window(redis_url=redis_url)
    window.show()
    try:
        pump(app, 0.5)
        daemon = make_daemon(DaemonConfig(publish_period=0.1, quicklook=False))
        first = simulate(redis_url, SimulationSpec(kind="rocking", points=11, frame_shape=(24, 20),
                                                   peak_counts=3000.0, scan_dir=tmp_path / "a", session="f1"))
        status = wait_done(daemon, first.scan_key)
        pump(app, 2, lambda: window.versions.get(first.scan_key, None) is not None
             and window.versions[first.scan_key].state == "complete")
        assert window.current == first.scan_key and shown(window) is not None
        second = simulate(redis_url, SimulationSpec(kind="rocking", points=11, frame_shape=(24, 20), seed=5,
                                                    peak_counts=3000.0, scan_dir=tmp_path / "b", session="f2"))
        second_status = wait_done(daemon, second.scan_key)
        pump(app, 2, lambda: window.current == second.scan_key)
        assert window.current == second.scan_key and window.scans.count() == 2  # followed the newest
        np.testing.assert_array_equal(shown(window), read_maps_file(second_status.path)[0]["com_mu"])
        window.scans.setCurrentRow(0)  # the user picks the first: pinned, its maps on show
        pump(app, 0.3)
        assert window.current == first.scan_key and not window.follow.isChecked()
        first_maps = read_maps_file(status.path)[0]
        np.testing.assert_array_equal(shown(window), first_maps["com_mu"])
        # a torn file (half of a maps file) and a missing one, announced on the stream:
        # reported in the status bar, the map on show stays, the window goes on
        torn = tmp_path / "torn.h5"
        torn.write_bytes(Path(status.path).read_bytes()[: Path(status.path).stat().st_size // 2])
        announcer = Announcer(redis_url)
        window.follow.setChecked(True)
        for path in (torn, tmp_path / "missing.h5"):
            announcer.announce(first.scan_key, str(path), 99, "complete", 11, 11, 1)
            assert pump(app, 3, lambda p=path: str(p) in window.statusBar().currentMessage())
            assert "cannot be read now" in window.statusBar().currentMessage()
            np.testing.assert_array_equal(shown(window), first_maps["com_mu"])
        announcer.announce(first.scan_key, status.path, 100, "complete", 11, 11, 1)  # a good one again
        assert pump(app, 3, lambda: window.shown is not None and window.shown.version == 100)
        announcer.close()
        os.remove(status.path)
        window.load(window.versions[first.scan_key])
        assert "cannot be read now" in window.statusBar().currentMessage()
    finally:
        close(app, window)


@pytest.mark.skipif(shutil.which("Xvfb") is None, reason="no Xvfb (Debian: apt-get install xvfb; .ci/run does)")
def test_under_a_real_x_server(maps_file, make_daemon, redis_url, tmp_path):
    """The viewer on Qt's xcb platform under an X server this test starts: a screen grab
    from the X server shows the map's and the key's colours, and a scan a real daemon
    announces is on show within 1 s."""
    read_fd, write_fd = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                            pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_fd)
    try:
        with os.fdopen(read_fd) as pipe:
            display = pipe.readline().strip()
        assert display, "Xvfb did not start"
        env = {**os.environ, "DISPLAY": f":{display}", "QT_QPA_PLATFORM": "xcb"}
        probe = subprocess.run([sys.executable, "-c", "from silx.gui import qt; qt.QApplication([])"], env=env,
                               capture_output=True, text=True, timeout=120)
        if probe.returncode != 0:  # Xvfb is there but not the X libraries Qt's xcb platform loads
            pytest.skip(f"Qt cannot open the X display (.ci/run installs what it needs): {probe.stderr[-300:]}")
        child = subprocess.Popen([sys.executable, "-m", "tests.viewer_checks", str(maps_file), redis_url],
                                 cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        try:
            ready = child.stdout.readline()
            assert ready.strip() == "READY", ready + child.stderr.read()
            daemon = make_daemon(DaemonConfig(publish_period=0.2, quicklook=False))
            rec = simulate(redis_url, SimulationSpec(kind="rocking", points=15, frame_shape=(24, 20),
                                                     peak_counts=3000.0, scan_dir=tmp_path / "x", session="x11"))
            child.stdin.write(rec.scan_key + "\n")
            child.stdin.flush()
            wait_done(daemon, rec.scan_key)
            out, err = child.communicate(timeout=150)
        finally:
            if child.poll() is None:
                child.kill()
                child.communicate()
        assert child.returncode == 0, err
        found = json.loads(out.strip().splitlines()[-1])
        assert found["platform"] == "xcb" and found["key_visible"]
        assert found["map"] > 0.9 and found["key"] > 0.9, found
        assert found["scan_key"] == rec.scan_key and found["state"] == "complete" and found["shows_file"]
        assert found["delay"] < 1.0, found
    finally:
        xvfb.terminate()
        xvfb.wait(10)
