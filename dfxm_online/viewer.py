"""`dfxm-online view`: the maps of the current scan, as the daemon publishes them (silx Qt).

One window for the beamtime: a list of the scans seen (session / dataset / scan, state,
frames processed / expected, map binning), a map chooser, the chosen map in a silx plot with
its colour bar (units in the title, a robust default colour range: the 1st-99th percentile,
so kurtosis outliers do not flatten it) and, for the mosaicity map, its colour key beside it
with the two motors' axes in degrees. It follows new scans by itself: the newest running
scan is shown unless the user picked one ("Follow the newest scan" unticked).

Push, not polling: with `--redis` the viewer blocks on the store's `dfxm-online:maps`
stream (publish/announce.py) on a thread of its own and repaints as soon as a version is
announced; without it, it watches the output folder (or one file) for new versions. A
file that cannot be read (missing, another process writing it) is reported in the status
bar and skipped, never fatal. Needs the `viewer` extra (`pip install "dfxm-online[viewer]"`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .publish.announce import STREAM
from .publish.recovery import maps_files

logger = logging.getLogger(__name__)

#: units of the maps by name prefix (the maps file's own `units` attributes win)
UNITS = {"com_": "deg", "fwhm_": "deg", "cov_": "deg²", "kam": "deg", "skewness_": "", "kurtosis_": "",
         "intensity": "counts", "background": "counts", "sum": "counts", "max": "counts"}


def units_of(name: str) -> str:
    for prefix, unit in UNITS.items():
        if name.startswith(prefix):
            return unit
    return ""


@dataclass
class Version:
    """One announced (or seen) version of a scan's maps file."""

    scan_key: str
    path: str
    state: str = "running"
    frames: str = ""
    map_binning: str = "1"
    version: int = 0

    @property
    def label(self) -> str:
        parts = Path(self.path).parts
        where = "/".join(parts[-3:]) if len(parts) >= 3 else self.path
        binned = f", binned {self.map_binning}x{self.map_binning}" if self.map_binning not in ("", "1") else ""
        return f"{where} — {self.state} {self.frames}{binned}"


def read_version(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, list]]:
    """Maps (`/entry/maps` and the scan-end groups such as `/entry/fit`), process fields and
    the axes of the maps that have them, of a maps file; raises OSError/KeyError when the
    file cannot be read (missing, being replaced)."""
    maps: dict[str, np.ndarray] = {}
    axes: dict[str, list] = {}
    with h5py.File(path, "r") as f:
        entry = f["entry"]
        for collection_name, collection in entry.items():
            if collection_name == "process" or not isinstance(collection, h5py.Group):
                continue
            for name, group in collection.items():
                if not isinstance(group, h5py.Group) or "signal" not in group.attrs:
                    continue
                signal = group.attrs["signal"]
                key = name if collection_name == "maps" else f"{collection_name}/{name}"
                maps[key] = group[signal][()]
                names = group.attrs.get("axes")
                if names is not None:
                    axes[key] = [(str(a), group[a][()]) for a in np.atleast_1d(names) if str(a) in group]
        process = {k: (v[()].decode() if isinstance(v[()], bytes) else str(v[()])) for k, v in entry["process"].items()}
        default = entry["maps"].attrs.get("default") if "maps" in entry else None
        process["default_map"] = default.decode() if isinstance(default, bytes) else str(default or "")
    return maps, process, axes


def robust_range(data: np.ndarray) -> tuple[float, float]:
    finite = np.asarray(data, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not finite.size:
        return 0.0, 1.0
    low, high = np.percentile(finite, [1, 99])
    return float(low), float(high if high > low else low + 1.0)


def newest_files(output_dir: Path) -> list[tuple[float, Path]]:
    """(mtime, path) of the maps files under `output_dir`, newest first."""
    found = []
    for path in maps_files(output_dir):
        try:
            found.append((os.stat(path).st_mtime, path))
        except OSError:
            continue
    return sorted(found, reverse=True)


def build_window(redis_url: str | None = None, output_dir: str | Path | None = None, file: str | Path | None = None):
    """The viewer's main window (a QApplication must exist); it starts following at once."""
    from silx.gui import qt
    from silx.gui.plot import Plot2D

    class Follower(qt.QThread):
        """Announced versions from the store's stream (blocking XREAD), or versions seen in
        the output folder (mtime changes), as Qt signals to the window."""

        announced = qt.Signal(object)

        def __init__(self) -> None:
            super().__init__()
            self._stop = False
            self._seen: dict[Path, float] = {}

        def stop(self) -> None:
            self._stop = True
            self.wait(3000)

        def run(self) -> None:
            if redis_url:
                self._follow_stream()
            else:
                self._watch()

        def _follow_stream(self) -> None:
            import redis

            client = redis.Redis.from_url(redis_url, decode_responses=True)
            last = "$"
            while not self._stop:
                try:
                    reply = client.xread({STREAM: last}, block=200, count=100)
                except redis.RedisError as exc:
                    logger.warning("maps stream unreachable: %s", exc)
                    self.msleep(1000)
                    continue
                for _, entries in reply or []:
                    for entry_id, fields in entries:
                        last = entry_id  # the next read goes on from here
                        self.announced.emit(Version(fields.get("scan_key", ""), fields.get("path", ""),
                                                    fields.get("state", ""), fields.get("frames", ""),
                                                    fields.get("map_binning", "1"), int(fields.get("version", 0))))

        def _watch(self) -> None:
            while not self._stop:
                paths = [(os.stat(file).st_mtime, Path(file))] if file and Path(file).exists() else (
                    newest_files(Path(output_dir)) if output_dir else [])
                for mtime, path in reversed(paths[:50]):
                    if self._seen.get(path) != mtime:
                        self._seen[path] = mtime
                        self.announced.emit(Version(str(path), str(path)))
                self.msleep(200)

    class MapsWindow(qt.QMainWindow):
        def __init__(self) -> None:
            super().__init__()
            self.setWindowTitle("dfxm-online")
            self.versions: dict[str, Version] = {}
            self.current: str | None = None
            self.maps: dict[str, np.ndarray] = {}
            self.axes: dict[str, list] = {}
            central = qt.QWidget()
            layout = qt.QHBoxLayout(central)
            side = qt.QVBoxLayout()
            self.follow = qt.QCheckBox("Follow the newest scan")
            self.follow.setChecked(True)
            self.scans = qt.QListWidget()
            self.chooser = qt.QComboBox()
            side.addWidget(self.follow)
            side.addWidget(qt.QLabel("Scans"))
            side.addWidget(self.scans)
            side.addWidget(qt.QLabel("Map"))
            side.addWidget(self.chooser)
            layout.addLayout(side, 1)
            self.plot = Plot2D()
            self.plot.setKeepDataAspectRatio(True)
            self.key = Plot2D()
            self.key.setMaximumWidth(260)
            self.key.setVisible(False)
            layout.addWidget(self.plot, 4)
            layout.addWidget(self.key, 1)
            self.setCentralWidget(central)
            self.scans.currentRowChanged.connect(self._picked)
            self.chooser.currentTextChanged.connect(self._show_map)
            self.follower = Follower()
            self.follower.announced.connect(self.on_version)
            self.follower.start()
            if file:
                self.on_version(Version(str(file), str(file)))

        # -- scans ---------------------------------------------------------------------
        def on_version(self, version: Version) -> None:
            new = version.scan_key not in self.versions
            self.versions[version.scan_key] = version
            keys = list(self.versions)
            if new:
                self.scans.blockSignals(True)
                self.scans.addItem(version.label)
                self.scans.blockSignals(False)
            else:
                self.scans.item(keys.index(version.scan_key)).setText(version.label)
            if self.follow.isChecked() and (version.state == "running" or self.current is None or new):
                self.current = version.scan_key
            if self.current == version.scan_key:
                self.scans.blockSignals(True)
                self.scans.setCurrentRow(keys.index(version.scan_key))
                self.scans.blockSignals(False)
                self.load(version)

        def _picked(self, row: int) -> None:
            if row < 0:
                return
            self.follow.setChecked(False)  # the user pinned a scan
            self.current = list(self.versions)[row]
            self.load(self.versions[self.current])

        def load(self, version: Version) -> None:
            try:
                self.maps, process, self.axes = read_version(version.path)
            except (OSError, KeyError) as exc:
                self.statusBar().showMessage(f"{version.path}: cannot be read now ({exc})")
                return
            chosen = self.chooser.currentText()
            self.chooser.blockSignals(True)
            self.chooser.clear()
            names = [n for n in self.maps if n != "mosaicity_key" and self.maps[n].ndim >= 2]
            self.chooser.addItems(names)
            default = chosen if chosen in names else (process["default_map"] if process["default_map"] in names
                                                      else (names[0] if names else ""))
            self.chooser.setCurrentText(default)
            self.chooser.blockSignals(False)
            self.statusBar().showMessage(
                f"{version.path}: {process.get('state', '')}, {process.get('frames_processed', '')}/"
                f"{process.get('frames_expected', '')} frames, map binning {process.get('map_binning', '1')}")
            self._show_map(default)

        # -- maps ----------------------------------------------------------------------
        def _show_map(self, name: str) -> None:
            if name not in self.maps:
                return
            data = self.maps[name]
            self.plot.clear()
            if data.ndim == 3 and data.shape[-1] in (3, 4):
                self.plot.addImage(data, legend=name, origin=(0, 0))
            else:
                image = data if data.ndim == 2 else data[0]  # a stack (per motor value): its first image
                low, high = robust_range(image)
                self.plot.addImage(image, legend=name, colormap={"name": "viridis", "normalization": "linear",
                                                                 "autoscale": False, "vmin": low, "vmax": high})
            unit = units_of(name.split("/")[-1])
            self.plot.setGraphTitle(f"{name} ({unit})" if unit else name)
            key = self.maps.get("mosaicity_key")
            self.key.setVisible(name == "mosaicity" and key is not None)
            if name == "mosaicity" and key is not None:
                self.key.clear()
                spec = self.axes.get("mosaicity_key", [])
                origin, scale = (0, 0), (1, 1)
                if len(spec) == 2:
                    second, first = np.asarray(spec[0][1]), np.asarray(spec[1][1])
                    step = (first[1] - first[0] if len(first) > 1 else 1, second[1] - second[0] if len(second) > 1 else 1)
                    origin, scale = (first[0] - step[0] / 2, second[0] - step[1] / 2), step
                    self.key.setGraphXLabel(f"{spec[1][0]} (deg)")
                    self.key.setGraphYLabel(f"{spec[0][0]} (deg)")
                self.key.addImage(key, legend="key", origin=origin, scale=scale)
                self.key.setGraphTitle("mosaicity key")

        def closeEvent(self, event) -> None:  # noqa: N802 - Qt's naming
            self.follower.stop()
            super().closeEvent(event)

    return MapsWindow()


def run_viewer(redis_url: str | None, output_dir: str | Path | None, file: str | Path | None) -> int:
    """`dfxm-online view`: the window until it is closed."""
    from silx.gui import qt

    app = qt.QApplication.instance() or qt.QApplication([])
    window = build_window(redis_url, output_dir, file)
    window.resize(1200, 700)
    window.show()
    return app.exec()
