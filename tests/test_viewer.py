"""The silx live viewer, headless (offscreen Qt): it opens a maps file, follows a daemon's
announcements, switches scans, and reports a file it cannot read instead of failing."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
qt = pytest.importorskip("silx.gui.qt", reason="the viewer extra (a Qt binding) is not installed")

from dfxm_online.acquisition.simulate import SimulationSpec, simulate  # noqa: E402
from dfxm_online.config import DaemonConfig  # noqa: E402
from dfxm_online.offline import process_to_file  # noqa: E402
from dfxm_online.viewer import build_window  # noqa: E402

from .conftest import wait_done  # noqa: E402


@pytest.fixture(scope="module")
def app():
    return qt.QApplication.instance() or qt.QApplication([])


def pump(app, seconds: float, until=lambda: False) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not until():
        app.processEvents()
        time.sleep(0.01)


def shown(window) -> np.ndarray | None:
    image = window.plot.getActiveImage()
    return None if image is None else image.getData(copy=False)


def test_opens_a_maps_file_draws_the_map_and_the_mosaicity_key(app, redis_url, tmp_path):
    rec = simulate(redis_url, SimulationSpec(kind="mosaicity", points=9, frame_shape=(40, 32), peak_counts=3000.0,
                                             scan_dir=tmp_path / "s", session="v"))
    path = process_to_file(rec.filename, tmp_path / "maps.h5", rec.scan_number, progress=False)
    window = build_window(file=path)
    window.resize(1000, 600)
    window.show()
    try:
        pump(app, 5, lambda: shown(window) is not None)
        assert window.chooser.currentText() == "com_mu"
        np.testing.assert_array_equal(shown(window), window.maps["com_mu"])
        window.chooser.setCurrentText("mosaicity")
        pump(app, 0.5)
        assert window.key.isVisible() and window.key.getActiveImage() is not None
        assert "(deg)" in window.key.getXAxis().getLabel()
        grab = window.grab().toImage()
        pixels = np.array([grab.pixelColor(x, y).value() for x in range(0, grab.width(), 7)
                           for y in range(0, grab.height(), 7)])
        assert grab.width() > 500 and pixels.std() > 10  # something is drawn
    finally:
        window.close()


def test_follows_a_daemon_and_reports_an_unreadable_file(app, make_daemon, redis_url, tmp_path):
    window = build_window(redis_url=redis_url)
    window.show()
    try:
        pump(app, 0.5)
        daemon = make_daemon(DaemonConfig(publish_period=0.1))
        first = simulate(redis_url, SimulationSpec(kind="rocking", points=11, frame_shape=(24, 20),
                                                   peak_counts=3000.0, scan_dir=tmp_path / "a", session="f1"))
        status = wait_done(daemon, first.scan_key)
        pump(app, 2, lambda: window.versions.get(first.scan_key, None) is not None
             and window.versions[first.scan_key].state == "complete")
        assert window.current == first.scan_key and shown(window) is not None
        second = simulate(redis_url, SimulationSpec(kind="rocking", points=11, frame_shape=(24, 20),
                                                    peak_counts=3000.0, scan_dir=tmp_path / "b", session="f2"))
        wait_done(daemon, second.scan_key)
        pump(app, 2, lambda: window.current == second.scan_key)
        assert window.current == second.scan_key and window.scans.count() == 2  # followed the newest
        window.scans.setCurrentRow(0)  # the user picks the first: pinned
        pump(app, 0.3)
        assert window.current == first.scan_key and not window.follow.isChecked()
        os.remove(status.path)
        window.load(window.versions[first.scan_key])
        assert "cannot be read now" in window.statusBar().currentMessage()
    finally:
        window.close()
