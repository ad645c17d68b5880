"""`dfxm-online view`: the maps of the current scan, as the daemon publishes them (silx Qt).

One window for the beamtime: a list of the scans seen (session / dataset / scan, state,
frames processed / expected, map binning), a map chooser, the chosen map in a silx plot with
its colour bar (labelled with the map's units; a robust default colour range, the 1st-99th
percentile, so kurtosis outliers do not flatten it) and, for the mosaicity map, its colour
key beside it with the two motors' axes in degrees. Labels, units and axes come from the
maps file itself (the NXdata `long_name`, `units` and axes datasets that publish/nexus.py
writes), so the pixel readout is in sample µm when the file knows the pixel size, else in
frame pixels; images are drawn as silx draws them, row 0 at the bottom. It follows new scans
by itself: the newest running scan is shown unless the user picked one ("Follow the newest
scan" unticked).

Push, not polling: with `--redis` the viewer blocks on the store's `dfxm-online:maps`
stream (publish/announce.py) on a thread of its own and repaints as soon as a version is
announced; without it, it watches the output folder (or one file) for new versions. A
file that cannot be read (missing, torn, another process writing it) is reported in the
status bar and skipped, the last map staying on show, never fatal. Needs the `viewer` extra (`pip install "dfxm-online[viewer]"`).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import h5py
import numpy as np

from .publish.announce import STREAM
from .publish.describe import describe
from .publish.quicklook import robust_range
from .publish.recovery import maps_files

logger = logging.getLogger(__name__)


@dataclass
class MapInfo:
    """What the file says about one map: its label (long_name, units included), units,
    title and axes [(dataset name, values, label)], in dimension order (None: no axis)."""

    label: str
    units: str = ""
    title: str = ""
    axes: list = field(default_factory=list)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _map_info(group: h5py.Group, signal: h5py.Dataset, key: str) -> MapInfo:
    """A map's labels and axes as the file gives them; a file written before maps were
    self-describing gets the words of publish/describe.py."""
    fallback = describe(key)
    units = _text(signal.attrs.get("units", fallback.units))
    label = _text(signal.attrs.get("long_name", fallback.label))
    axes = []
    for name in [_text(a) for a in np.atleast_1d(group.attrs.get("axes", []))]:
        if name == "." or name not in group or not isinstance(group[name], h5py.Dataset):
            axes.append(None)
            continue
        dset = group[name]
        unit = _text(dset.attrs.get("units", ""))
        axes.append((name, dset[()], _text(dset.attrs.get("long_name", f"{name} ({unit})" if unit else name))))
    return MapInfo(label, units, _text(group.attrs.get("title", label)), axes)


@dataclass
class Version:
    """One announced (or seen) version of a scan's maps file."""

    scan_key: str
    path: str
    state: str = "running"
    frames: str = ""
    map_binning: str = "1"
    version: int = 0
    announced: str = ""  # when the daemon announced it (UTC ISO 8601; "" for a file seen)
    delay: str = ""  # frame-to-map delay of this version, seconds ("" unknown)

    @property
    def label(self) -> str:
        parts = Path(self.path).parts
        where = "/".join(parts[-3:]) if len(parts) >= 3 else self.path
        binned = f", binned {self.map_binning}x{self.map_binning}" if self.map_binning not in ("", "1") else ""
        delay = f", {float(self.delay):.2f} s behind" if self.delay else ""
        return f"{where} — {self.state} {self.frames}{binned}{delay}"


def as_read(version: Version, process: dict[str, str]) -> Version:
    """`version` with the state, frames and map binning of the file as it was read: the
    daemon replaces a scan's file several times a second, so the file read after an
    announcement may already hold a newer version (the final one, at full resolution)."""
    processed, expected = process.get("frames_processed", ""), process.get("frames_expected", "")
    return replace(version, state=process.get("state") or version.state,
                   frames=f"{processed}/{expected}" if processed else version.frames,
                   map_binning=process.get("map_binning") or version.map_binning)


def read_version(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, MapInfo]]:
    """Maps (`/entry/maps` and the scan-end groups such as `/entry/fit`), process fields and
    what the file says of each map (`MapInfo`: label, units, axes) of a maps file; raises
    OSError/KeyError when the file cannot be read (missing, torn, being replaced)."""
    maps: dict[str, np.ndarray] = {}
    infos: dict[str, MapInfo] = {}
    with h5py.File(path, "r") as f:
        entry = f["entry"]
        for collection_name, collection in entry.items():
            if collection_name == "process" or not isinstance(collection, h5py.Group):
                continue
            for name, group in collection.items():
                if not isinstance(group, h5py.Group) or "signal" not in group.attrs:
                    continue
                signal = _text(group.attrs["signal"])
                if signal not in group:
                    continue
                key = name if collection_name == "maps" else f"{collection_name}/{name}"
                maps[key] = group[signal][()]
                infos[key] = _map_info(group, group[signal], key)
        process: dict[str, str] = {}  # the scan-end workflow's record too ("post_scan/state", ...)
        entry["process"].visititems(
            lambda k, v: process.__setitem__(k, _text(v[()])) if isinstance(v, h5py.Dataset) else None)
        default = entry["maps"].attrs.get("default") if "maps" in entry else None
        process["default_map"] = _text(default or "")
    return maps, process, infos


def _placement(axes: list, shape: tuple[int, ...]) -> tuple[tuple[float, float], tuple[float, float], list[str]]:
    """(origin, scale, [x label, y label]) of an image in a silx plot from its (row,
    column) axes of cell centres; without axes, pixel i spans [i, i + 1), silx's default."""
    origin, scale, labels = [0.0, 0.0], [1.0, 1.0], ["column", "row"]
    for dim, plot_axis in ((1, 0), (0, 1)):  # columns along x, rows along y
        spec = axes[dim] if dim < len(axes) else None
        if spec is None or len(spec[1]) != shape[dim]:
            continue
        values = np.asarray(spec[1], dtype=np.float64)
        step = (values[-1] - values[0]) / (len(values) - 1) if len(values) > 1 else 1.0
        origin[plot_axis], scale[plot_axis], labels[plot_axis] = values[0] - step / 2, step, spec[2]
    return (origin[0], origin[1]), (scale[0], scale[1]), labels


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
            """Stop and wait for the thread: Qt aborts the process when a QThread object is
            destroyed while its thread runs (each read blocks at most 0.2 s; a store that
            does not answer times out after 2 s)."""
            self._stop = True
            if not self.wait(5000):
                logger.warning("the viewer's follower thread did not stop")

        def run(self) -> None:
            if redis_url:
                self._follow_stream()
            else:
                self._watch()

        def _follow_stream(self) -> None:
            import redis

            client = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=2.0,
                                          socket_connect_timeout=2.0)
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
                                                    fields.get("map_binning", "1"), int(fields.get("version", 0)),
                                                    fields.get("time", ""), fields.get("delay", "")))

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
            self.infos: dict[str, MapInfo] = {}
            self.shown: Version | None = None  # the version on show and when it was drawn
            self.shown_at = 0.0
            self._on_show: tuple | None = None
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
            self.key.setMaximumWidth(340)
            self.key.getColorBarWidget().setVisible(False)
            self.key.getColorBarAction().setVisible(False)
            self.key.setAxesMargins(0.3, 0.12, 0.05, 0.15)  # room for the motor's label (a narrow plot)
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
            """Read and show a version; a file that cannot be read now (missing, torn,
            being replaced) is reported in the status bar and the last map stays shown."""
            try:
                maps, process, infos = read_version(version.path)
            except (OSError, KeyError, ValueError) as exc:
                self.statusBar().showMessage(f"{version.path}: cannot be read now ({exc})")
                logger.info("%s: cannot be read now: %s", version.path, exc)
                return
            self.maps, self.infos = maps, infos
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
            self.shown = as_read(version, process)
            self.shown_at = time.time()

        # -- maps ----------------------------------------------------------------------
        def _show_map(self, name: str) -> None:
            if name not in self.maps:
                return
            data = self.maps[name]
            info = self.infos.get(name) or MapInfo(describe(name).label)
            rgb = data.ndim == 3 and data.shape[-1] in (3, 4)
            image = data if data.ndim == 2 or rgb else data[0]  # a stack (per motor value): its first image
            axes = info.axes if rgb or data.ndim == 2 else info.axes[-2:]
            origin, scale, labels = _placement(axes, image.shape)
            # a new version of the map on show keeps the user's zoom
            reset = (name, image.shape) != self._on_show
            self._on_show = (name, image.shape)
            self.plot.remove(kind="image")
            if rgb:
                self.plot.addImage(image, legend=name, origin=origin, scale=scale, resetzoom=reset)
            else:
                low, high = robust_range(image)
                self.plot.addImage(image, legend=name, origin=origin, scale=scale, resetzoom=reset,
                                   colormap={"name": "viridis", "normalization": "linear", "autoscale": False,
                                             "vmin": low, "vmax": high})
            colour_bar = self.plot.getColorBarWidget()
            colour_bar.setVisible(not rgb)  # an RGB image has no colour scale: its key is beside it
            colour_bar.setLegend("" if rgb else info.label)
            self.plot.setGraphXLabel(labels[0])
            self.plot.setGraphYLabel(labels[1])
            scan = self.versions[self.current].label.split(" — ")[0] if self.current in self.versions else ""
            self.plot.setGraphTitle(f"{info.title}\n{scan}" if scan else info.title)
            key = self.maps.get("mosaicity_key")
            self.key.setVisible(name == "mosaicity" and key is not None)
            if name == "mosaicity" and key is not None:
                self._show_key(key, self.infos.get("mosaicity_key"))

        def _show_key(self, key: np.ndarray, info: MapInfo | None) -> None:
            """The mosaicity key: columns along the first motor, rows along the second, in
            the units the file gives their axes (degrees)."""
            origin, scale, labels = _placement(info.axes if info else [], key.shape)
            self.key.clear()
            self.key.addImage(key, legend="key", origin=origin, scale=scale)
            self.key.setGraphXLabel(labels[0])
            self.key.setGraphYLabel(labels[1])
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
