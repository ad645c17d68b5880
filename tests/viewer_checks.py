"""What the viewer's tests look for in a screenshot, shared by the offscreen tests
(tests/test_viewer.py, widget grabs) and the run under a real X server (this module run as
a program in a child process with DISPLAY set: a screen grab from the X server).

    python -m tests.viewer_checks MAPS_FILE [REDIS_URL]

opens the viewer on MAPS_FILE (and the store's maps stream), checks a screenshot of it,
prints "READY", then with REDIS_URL reads a scan key on stdin, waits until the viewer shows
that scan's complete version as a daemon announces it, and prints one JSON line with what it
found.
"""

from __future__ import annotations

import datetime
import json
import sys
import threading
import time

import numpy as np


def qimage_rgb(image) -> np.ndarray:
    """A QImage as an (H, W, 3) uint8 array."""
    from silx.gui import qt

    image = image.convertToFormat(qt.QImage.Format_RGB888)
    width, height, stride = image.width(), image.height(), image.bytesPerLine()
    buffer = np.frombuffer(image.constBits(), dtype=np.uint8, count=stride * height)
    return buffer.reshape(height, stride)[:, : 3 * width].reshape(height, width, 3).copy()


def pump(app, seconds: float, until=lambda: False) -> bool:
    """Run the Qt event loop for at most `seconds`, until `until()`; returns `until()`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not until():
        app.processEvents()
        time.sleep(0.01)
    app.processEvents()
    return until()


def colours_found(expected: np.ndarray, screenshot: np.ndarray, tolerance: int = 2) -> float:
    """The fraction of the distinct colours of `expected` ((..., 3) uint8) that appear in
    `screenshot` within `tolerance` per channel (a renderer may round a float colour
    either way)."""
    wanted = np.unique(expected.reshape(-1, 3), axis=0).astype(np.int16)
    present = np.unique(screenshot.reshape(-1, 3), axis=0).astype(np.int16)
    found = 0
    for start in range(0, len(wanted), 256):
        block = wanted[start:start + 256]
        distance = np.abs(block[:, None, :] - present[None, :, :]).max(axis=2)
        found += int((distance.min(axis=1) <= tolerance).sum())
    return found / len(wanted)


def as_uint8(rgb: np.ndarray) -> np.ndarray:
    """Float RGB in [0, 1] as the 8-bit colours a screen shows."""
    return np.clip(np.rint(np.asarray(rgb, dtype=np.float64) * 255), 0, 255).astype(np.uint8)


def image_colours(window, name: str) -> np.ndarray:
    """The colours silx gives the map `name` on show in the main plot (uint8)."""
    item = window.plot.getImage(name)
    data = item.getData(copy=False)
    if data.ndim == 3:
        return as_uint8(data[..., :3])
    rgba = item.getColormap().applyToData(data)
    return rgba[np.isfinite(data)][:, :3]


def screenshot_findings(window, screenshot: np.ndarray) -> dict[str, float]:
    """What of the mosaicity map and its key a screenshot of the window shows: the fraction
    of each one's colours found in it (the mosaicity map's no-signal black left out)."""
    rgb = window.maps["mosaicity"]
    coloured = as_uint8(rgb)[np.isfinite(np.asarray(rgb)).all(axis=-1) & (np.asarray(rgb).max(axis=-1) > 0)]
    return {"map": colours_found(coloured, screenshot), "key": colours_found(as_uint8(window.maps["mosaicity_key"]),
                                                                         screenshot)}


def epoch(iso: str) -> float:
    """An announcement's UTC ISO time as seconds since the epoch (time.time()'s clock)."""
    return datetime.datetime.fromisoformat(iso).timestamp()


def main(argv: list[str]) -> int:
    from silx.gui import qt

    from dfxm_online.viewer import build_window

    maps_file, redis_url = argv[0], (argv[1] if len(argv) > 1 else None)
    app = qt.QApplication.instance() or qt.QApplication([])
    window = build_window(redis_url=redis_url, file=maps_file)
    window.resize(1200, 700)
    window.show()
    result: dict[str, object] = {"platform": app.platformName()}
    pump(app, 10, lambda: window.plot.getActiveImage() is not None)
    window.chooser.setCurrentText("mosaicity")
    pump(app, 2)  # mapped and painted by the X server
    # a real screenshot: what the X server shows of the window (not the widget's own rendering)
    screen = window.screen() or app.primaryScreen()
    frame = window.frameGeometry()
    grab = screen.grabWindow(0, frame.x(), frame.y(), frame.width(), frame.height())
    result.update(screenshot_findings(window, qimage_rgb(grab.toImage())), key_visible=window.key.isVisible(),
                  grab_size=[grab.width(), grab.height()])
    print("READY", flush=True)
    if redis_url:
        # the scan to wait for comes on stdin once the parent has started it (read on a
        # thread: the event loop keeps running meanwhile)
        expected: list[str] = []
        threading.Thread(target=lambda: expected.append(sys.stdin.readline().strip()), daemon=True).start()

        def complete():
            shown = window.shown
            return (bool(expected) and shown is not None and bool(shown.announced) and shown.state == "complete"
                    and shown.scan_key == expected[0])

        pump(app, 120, complete)
        shown = window.shown
        result.update(state=shown.state if shown else "", scan_key=shown.scan_key if shown else "",
                      delay=(window.shown_at - epoch(shown.announced))
                      if shown and shown.announced else None,
                      shows_file=bool(shown) and np.array_equal(window.plot.getActiveImage().getData(copy=False),
                                                                 window.maps[window.chooser.currentText()],
                                                                 equal_nan=True))
    print(json.dumps(result), flush=True)
    close(app, window)
    return 0


def close(app, window) -> None:
    """Close the window and let Qt delete it in its event loop (the follower thread
    stopped first), rather than leave its widgets to Python's garbage collector."""
    window.close()
    window.deleteLater()
    pump(app, 0.1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
