"""One scan's analysis: batches of frames in, preprocessing, accumulators updated, maps out.

The daemon, `dfxm-online process` and the ewoks tasks all drive this same class, so there is
one implementation of every algorithm. It does no I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np

from ..acquisition.geometry import ScanError, ScanGeometry, finite_points
from ..config import AnalysisConfig
from . import registry
from .accumulators.background import EdgeBaseline, RunningMean
from .accumulators.moments import PowerSums, monomial_exponents
from .binned_maps import block_sums
from .framesums import accumulate
from .maps import MapBuffers, Maps, moment_maps_of_sums
from .moment_window import MomentWindow, correct_truncation
from .orientation import KEY_SIZE, kam, mosaicity_rgb
from .preprocess import DarkStep, MonitorStep, PreprocessChain, binned_shape
from .registry import REGISTRY
from .window_bands import ScanRows, windowed_moment_maps

if TYPE_CHECKING:
    from ..acquisition.batch import Batch

logger = logging.getLogger(__name__)


class ScanPipeline:
    """Preprocessing and accumulators of one scan (mergeable: tiles or halves add up)."""

    def __init__(
        self,
        geometry: ScanGeometry,
        frame_shape: tuple[int, int],
        config: AnalysisConfig | None = None,
        dark: RunningMean | np.ndarray | None = None,
        images: Mapping[str, np.ndarray] | None = None,
        has_monitor: bool = True,
        first_index: int = 0,
    ) -> None:
        """`frame_shape` is the raw detector frame's; `images` the chain's named images
        (mask, flatfield, ...); `dark` the session's dark scan (or a dark image), used by a
        "dark" preprocessing step or else at snapshot time; `has_monitor` False drops a
        "monitor" step (the scan records no monitor counter); `first_index` is the scan
        index of the first frame (a part of a scan processed elsewhere, to be merged)."""
        self.geometry = geometry
        self.config = config or AnalysisConfig()
        self.raw_shape = (int(frame_shape[0]), int(frame_shape[1]))
        self.chain = self._build_chain(dark, images or {}, has_monitor)
        self.frame_shape = self.chain.output_shape(self.raw_shape)
        n_pixels = self.frame_shape[0] * self.frame_shape[1]
        self.moments = PowerSums(geometry.motors, n_pixels, precision=self.config.precision)
        self.edges = EdgeBaseline(geometry.motors, n_pixels, self.config.edge_fraction)
        self.extras = registry.build(self.config, geometry, self.frame_shape, first_index)
        self.dark: np.ndarray | None = None
        self.dark_frames: RunningMean | None = None  # see set_dark
        #: the dark as given (a dark scan's running mean or an image), saved with the state
        self.dark_source: RunningMean | np.ndarray | None = dark
        #: points left out for a non-finite motor position (`update`)
        self.points_dropped = 0
        #: the frames come with the dark already subtracted per frame (a `preview` of a
        #: pipeline whose chain has a "dark" step): as if the chain had that step
        self.dark_upstream = False
        if dark is not None and not self.dark_in_chain:
            self.set_dark(dark)

    @staticmethod
    def memory_bytes(geometry: ScanGeometry, frame_shape: tuple[int, int], config: AnalysisConfig) -> int:
        """The main arrays a scan's pipeline holds for frames of `frame_shape` (after the
        chain's binning or ROI, if any): the moment sums, the edge baseline's band sums and
        squares, four images per projections accumulator, and the window's second set of
        moment sums at the scan's end. What the daemon checks against its memory budget
        before it allocates anything."""
        pixels = frame_shape[0] * frame_shape[1]
        motors = len(geometry.motors)
        monomials = len(monomial_exponents(motors, 4)) if motors else 1
        rows = monomials + 4 * motors  # moments; edge groups x (sums, squares)
        rows += 4 * config.accumulators.count("projections")
        if config.moment_window > 0 and motors:
            rows += monomials
        return 8 * rows * pixels

    # -- preprocessing ---------------------------------------------------------------------
    def _build_chain(
        self, dark: RunningMean | np.ndarray | None, images: Mapping[str, np.ndarray], has_monitor: bool
    ) -> PreprocessChain:
        steps = list(self.config.preprocess)
        if not has_monitor and any(s.get("step") == "monitor" for s in steps):
            logger.warning("scan records no monitor counter %r: frames are not normalised", self.config.monitor)
            steps = [s for s in steps if s.get("step") != "monitor"]
        images = dict(images)
        if any(s.get("step") == "dark" for s in steps) and "dark" not in images:
            image = dark.snapshot() if isinstance(dark, RunningMean) else dark
            if image is None:
                raise ScanError("preprocess step 'dark' needs a dark scan in the session or a dark file")
            images["dark"] = np.asarray(image, dtype=np.float64).reshape(self.raw_shape)
        try:
            return PreprocessChain.from_config(steps, images, self.raw_shape)
        except ValueError as exc:
            raise ScanError(f"preprocessing: {exc}") from None

    @property
    def dark_in_chain(self) -> bool:
        return self.dark_upstream or any(isinstance(s, DarkStep) for s in self.chain.steps)

    def preview(self, factor: int) -> ScanPipeline:
        """A pipeline of this scan's frames binned `factor` x `factor` (sum): the daemon's
        live preview. It takes this pipeline's `prepared` frames and bins them first (a
        "binning" step, the compiled block sum), then runs the same accumulators on
        `factor`^2 times fewer pixels, so its maps are those of the binned frames and its
        update, snapshot and memory are that much smaller (its first touch too: on a
        fresh 2048^2 two-motor scan the full-resolution sums are ~0.9 GB). The final maps
        stay this pipeline's (the window reads the frames again here, not in a preview);
        the dark subtracted at snapshot time, if any, is this one's, binned."""
        config = self.config.model_copy(update={
            "preprocess": [{"step": "binning", "factor": int(factor), "mode": "sum"}], "moment_window": 0.0})
        out = ScanPipeline(self.geometry, self.frame_shape, config, has_monitor=False)
        out.dark_upstream = self.dark_in_chain
        if self.dark is not None:
            out.set_dark(self.dark.reshape(self.frame_shape))
        return out

    @property
    def takes_snapshot_dark(self) -> bool:
        """Whether a dark can be subtracted at snapshot time: not already in the chain, and
        the chain (if any) is linear so that a constant before it is a constant after it."""
        return not self.dark_in_chain and (not self.chain.steps or self.chain.is_linear)

    @property
    def needs_monitor(self) -> bool:
        return any(isinstance(s, MonitorStep) for s in self.chain.steps)

    @property
    def retains_frames(self) -> bool:
        """Whether an accumulator may keep references to the frames it is given (those
        updated frame by frame rather than through the shared pass: medians, PCA/NMF
        pending rows...), so that a batch's buffer must not be reused for later frames."""
        return any(not REGISTRY[name].shares_pass for name in self.extras)

    @property
    def frames_processed(self) -> int:
        return self.moments.count

    def set_dark(self, dark: RunningMean | np.ndarray) -> None:
        """Subtract this dark at snapshot time from now on (so it may arrive late), until
        the scan's edge frames give the baseline (see `background`).

        A :class:`RunningMean` over a dark scan's frames or a dark image (H, W). Only valid
        when the chain keeps frames affine in the raw counts (no hot-pixel/threshold/monitor
        step before the moments would commute with it otherwise); with a "dark" step in the
        chain the dark is applied per frame instead.
        """
        if not self.takes_snapshot_dark:
            if not self.dark_in_chain:
                logger.info("dark not applied at snapshot time: the preprocessing is not linear")
            return
        image = dark.snapshot() if isinstance(dark, RunningMean) else np.asarray(dark, dtype=np.float64)
        if image is None:
            raise ScanError("the dark scan has no frames")
        if image.size != self.raw_shape[0] * self.raw_shape[1]:
            raise ScanError(f"dark image has {image.size} pixels, frames have {self.raw_shape}")
        if self.chain.steps:
            # a linear chain maps a per-pixel constant c to chain(c) - chain(0)
            raw = image.reshape((1, *self.raw_shape))
            image = (self.chain(raw) - self.chain(np.zeros_like(raw)))[0].astype(np.float64)
        self.dark = image.reshape(-1)
        self.dark_source = dark
        # the dark frames' spread (read noise), for the fits' noise model where no edge
        # group has two frames; not transformed by a chain, so only without one
        self.dark_frames = dark if isinstance(dark, RunningMean) and not self.chain.steps else None

    # -- accumulation ----------------------------------------------------------------------
    def update(
        self, frames: np.ndarray, positions: Mapping[str, np.ndarray], monitor: np.ndarray | None = None
    ) -> None:
        """Add a batch of raw frames (B, H, W) recorded at `positions` (motor -> (B,));
        points whose recorded position is not a number (a NaN or infinite encoder reading)
        are left out and counted (`points_dropped`), not allowed to blank every map."""
        self.add(*self.prepared(frames, positions, monitor))

    def prepared(
        self, frames: np.ndarray, positions: Mapping[str, np.ndarray], monitor: np.ndarray | None = None
    ) -> tuple[np.ndarray, Mapping[str, np.ndarray]]:
        """A batch of raw frames as the accumulators take it: its points with a non-finite
        position left out (and counted), checked and through the preprocessing chain. The
        first half of `update`; the daemon gives the result to this pipeline's `add` and to
        its live preview (`preview`), so the chain runs once per frame."""
        frames, positions, monitor = self._finite_points(frames, positions, monitor)
        return self.preprocessed(frames, positions, monitor), positions

    def add(self, frames: np.ndarray, positions: Mapping[str, np.ndarray]) -> None:
        """Add a batch of `prepared` frames: the second half of `update`."""
        # the moments, the edge baseline and the accumulators that can (projections) share
        # one pass over the frames; the others take the batch in turn
        n = frames.shape[0]
        plans = [self.moments.sums_plan(positions, n), self.edges.sums_plan(positions, n)]
        others = []
        for name, acc in self.extras.items():
            if REGISTRY[name].shares_pass:
                plans.append(acc.sums_plan(positions, n))
            else:
                others.append(acc)
        accumulate(frames, plans)
        for acc in others:
            acc.update(frames, positions)
        self._after_update()

    def _after_update(self) -> None:
        for name, acc in self.extras.items():
            housekeeping = REGISTRY[name].after_update
            if housekeeping is not None:
                housekeeping(acc)

    def _finite_points(
        self, frames: np.ndarray, positions: Mapping[str, np.ndarray], monitor: np.ndarray | None
    ) -> tuple[np.ndarray, Mapping[str, np.ndarray], np.ndarray | None]:
        """The batch without its points whose position along a scanned motor is not finite."""
        finite = finite_points(positions, self.geometry.motors, len(frames))
        if finite.all():
            return frames, positions, monitor
        if not self.points_dropped:
            logger.warning("points with a non-finite motor position are left out of the maps (first at index %d "
                           "of a batch)", int(np.flatnonzero(~finite)[0]))
        self.points_dropped += int((~finite).sum())
        kept = {k: np.asarray(v)[finite] for k, v in positions.items()}
        return frames[finite], kept, None if monitor is None else np.asarray(monitor)[finite]

    def preprocessed(
        self, frames: np.ndarray, positions: Mapping[str, np.ndarray], monitor: np.ndarray | None = None
    ) -> np.ndarray:
        """A batch of raw frames checked against the scan (shape, a position of every motor
        for every frame) and through the preprocessing chain: what the accumulators take."""
        if frames.ndim != 3 or frames.shape[1:] != self.raw_shape:
            raise ScanError(
                f"frames of shape {tuple(frames.shape[1:])} where the scan's are {self.raw_shape}"
            )
        for axis in self.geometry.motors:
            values = positions.get(axis.name)
            if values is None or len(values) != frames.shape[0]:
                raise ScanError(f"no position of motor {axis.name!r} for every frame of the batch")
        if not self.chain.steps:
            return frames
        if self.needs_monitor and (monitor is None or len(monitor) != frames.shape[0]):
            raise ScanError("no monitor value for every frame of the batch")
        try:
            return self.chain(frames, monitor)
        except ValueError as exc:
            raise ScanError(f"preprocessing: {exc}") from None

    def finish(self) -> None:
        """The scan has ended: accumulators that hold frames back (rolling median window,
        PCA batches smaller than its number of components) take them into account."""
        for name, acc in self.extras.items():
            if REGISTRY[name].finishes:
                acc.finish()
        self._after_update()

    def merge(self, other: ScanPipeline) -> None:
        """Add another part of the same scan (raises for accumulators that cannot merge
        exactly, e.g. the rolling median or the incremental PCA)."""
        self.moments.merge(other.moments)
        self.edges.merge(other.edges)
        for name, acc in self.extras.items():
            acc.merge(other.extras[name])

    def state(self) -> dict[str, np.ndarray]:
        out = {f"moments/{k}": v for k, v in self.moments.state().items()}
        out.update({f"edges/{k}": v for k, v in self.edges.state().items()})
        for name, acc in self.extras.items():
            out.update({f"{name}/{k}": v for k, v in acc.state().items()})
        return out

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore accumulators saved by `state()` (checkpoint / restart)."""
        def part(prefix: str) -> dict[str, np.ndarray]:
            return {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith(prefix + "/")}

        self.moments = PowerSums.from_state(
            self.geometry.motors, part("moments"), precision=self.config.precision
        )
        self.edges = EdgeBaseline.from_state(
            self.geometry.motors, part("edges"), self.config.edge_fraction
        )
        for name, acc in list(self.extras.items()):
            self.extras[name] = type(acc).from_state(part(name))

    # -- maps ------------------------------------------------------------------------------
    def background(self) -> tuple[np.ndarray | None, str]:
        """The per-pixel constant subtracted before the moments, and the rule that gave it.

        "auto" (the default): the scan-edge baseline whenever the scan has edge frames, with
        or without a dark scan. The dark is not the whole background: diffuse scattering,
        air scatter and scintillator glow add a pedestal above it that a dark scan does not
        record, and the edge frames hold both (docs/science.md). The dark (a dark scan or
        image) is subtracted alone only until the first edge frame arrives. With a "dark"
        preprocessing step the dark is already off every frame: the edge baseline is then
        the residual pedestal.
        """
        mode = self.config.background
        if mode == "auto":
            edges = self.edges.snapshot()
            if edges is not None:
                return edges, "edges" if not self.dark_in_chain else "dark (per frame) + edges"
            if self.dark is not None:
                return self.dark, "dark (no edge frame yet)"
            return None, "dark (per frame)" if self.dark_in_chain else "none (no edge frame yet)"
        if mode == "none":
            return None, "none"
        if mode == "dark":
            if self.dark_in_chain:
                return None, "dark (per frame)"
            if self.dark is None:
                raise ScanError("background='dark' but no dark scan or dark file is available")
            return self.dark, "dark"
        return self.edges.snapshot(), "edges"

    def snapshot(self, dtype: np.dtype | type = np.float64, binning: int = 1,
                 buffers: MapBuffers | None = None, orientation: bool = True) -> Maps:
        """The current maps, with their axes (`.axes`; read-only on the accumulators).

        `dtype` float32: every floating map rounded to float32 as it is made, for a maps
        file (which stores float32): the daemon's live snapshots. A 2048^2 two-motor
        snapshot then holds ~0.3 GB instead of ~0.56 GB, which kept the daemon's peak RSS
        on such a scan under 2 GB (2.22 GB with float64 maps; bench/RESULTS.md).

        `binning` b > 1: the maps of blocks of b x b pixels, as if the frames had been
        binned (sum) before the accumulators (the daemon's `live_binning`): the moment
        maps from block sums of the power sums and of the background, which is exact since
        both are linear in the frames; every other map over the frame's pixels (the
        projections, medians, minimum, components...) is block-summed as well, exact for
        the sums and the block sum of the per-pixel value for the others (max, medians...).
        The orientation maps are then made from the binned COM maps.

        `buffers`: the scan's `MapBuffers`; the moment maps, the float32 copies and the
        orientation maps are written into them instead of new arrays (the daemon's live
        snapshots: a cycle then allocates none of its maps).

        `orientation` False: no KAM and mosaicity maps (maps that `windowed_maps` makes
        again from the windowed COM maps)."""
        single = np.dtype(dtype) == np.float32
        offset, _ = self.background()
        names = self.geometry.motor_names
        moments, shape = self.moments, self.frame_shape
        if binning > 1:
            moments = self.moments.binned(self.frame_shape, binning)
            shape = binned_shape(self.frame_shape, binning, binning)
            offset = None if offset is None else block_sums(offset, self.frame_shape, binning)
        maps = moment_maps_of_sums(moments, offset, names, shape, self.config.min_intensity_fraction, dtype,
                                   buffers)
        del moments
        if offset is not None:
            image = offset.reshape(shape)
            maps["background"] = (image.astype(dtype, copy=False) if buffers is None
                                  else buffers.copy("background", image, dtype))
        del offset
        extra_maps, extra_axes = registry.maps_of(self.extras, self.frame_shape, dtype)
        maps = Maps(maps, axes=extra_axes)
        for name in list(extra_maps):  # one at a time: a float64 map is dropped once rounded
            values = extra_maps.pop(name)
            if binning > 1 and _over_pixels(name, values, self.frame_shape):
                values = block_sums(values, self.frame_shape, binning)
            maps[name] = values.astype(dtype, copy=False) if single and values.dtype.kind == "f" else values
        if orientation:
            self._orientation_maps(maps, dtype, buffers)
        return maps

    def _orientation_maps(self, maps: Maps, dtype: np.dtype | type, buffers: MapBuffers | None = None) -> None:
        """KAM and the mosaicity colour map with its key (and the key's axes, in motor
        units) of the COM maps, into `maps` (their arrays from `buffers` when given)."""
        names = self.geometry.motor_names
        coms = [maps[f"com_{m}"] for m in names]
        shape = coms[0].shape
        if buffers is None:
            maps["kam"] = kam(coms, radius=self.config.kam_radius).astype(dtype, copy=False)
        else:
            wide = kam(coms, radius=self.config.kam_radius, out=buffers.array("kam64", shape, np.float64))
            maps["kam"] = wide if np.dtype(dtype) == np.float64 else buffers.copy("kam", wide, dtype)
        if len(names) >= 2:
            rgb_out = None if buffers is None else buffers.array("mosaicity", (*shape, 3), np.float32)
            rgb, key, extent = mosaicity_rgb(coms[0], coms[1], out=rgb_out)
            maps["mosaicity"] = rgb
            maps["mosaicity_key"] = key
            a = np.linspace(extent[0], extent[1], KEY_SIZE + 1)
            b = np.linspace(extent[2], extent[3], KEY_SIZE + 1)
            # cell centres, rows = second motor, columns = first motor (the key's layout)
            maps.axes["mosaicity_key"] = [(names[1], 0.5 * (b[1:] + b[:-1])), (names[0], 0.5 * (a[1:] + a[:-1]))]

    def windowed_maps(self, maps: Maps, reread: Callable[[], Iterable[Batch]], rows: ScanRows | None = None,
                      overwrite: bool = False) -> Maps:
        """The final maps: `maps` (this pipeline's full-resolution `snapshot`) with the
        moment maps made again within each pixel's window (`moment_window` standard
        deviations around its centre of mass, `moment_window_passes` times), from the
        scan's frames read again, and KAM and mosaicity from the windowed COM maps
        (online/moment_window.py says why).

        The frames come by bands of detector rows from `rows` where given and the frames go
        into the accumulators as they are (no preprocessing step): one read for all the
        passes (online/window_bands.py); else as batches of whole frames from `reread()`
        (batches in any order), once per pass. The same maps, bit for bit. With `overwrite`
        the bands' windowed maps go into `maps`' own moment maps (the caller is done with
        the one-pass ones: 0.3 GB fewer at 2048^2 and two motors).

        Pixels the one-pass maps mask (too little signal) stay masked; the intensity and
        every other map stay the one-pass ones. A scan without motors, or `moment_window`
        0, gets `maps` back unchanged."""
        names = self.geometry.motor_names
        rho = self.config.moment_window
        if not names or rho <= 0:
            return maps
        offset, _ = self.background()
        masked = ~np.isfinite(np.asarray(maps[f"com_{names[0]}"], dtype=np.float64))
        if rows is not None and not self.chain.steps:
            batch = self.config.frames_per_batch(self.raw_shape, rows.dtype)
            windowed = windowed_moment_maps(
                maps, masked, self.geometry.motors, offset, rows, self.frame_shape, batch, rho,
                self.config.moment_window_passes, self.config.precision,
                batch * self.raw_shape[0] * self.raw_shape[1] * np.dtype(rows.dtype).itemsize, overwrite)
        else:
            windowed = self._windowed_by_batches(maps, masked, reread, offset)
        out = Maps(maps, axes=dict(maps.axes))
        out.update(windowed)
        self._orientation_maps(out, maps[f"com_{names[0]}"].dtype)
        return out

    def _windowed_by_batches(self, maps: Maps, masked: np.ndarray, reread: Callable[[], Iterable[Batch]],
                             offset: np.ndarray | None) -> dict[str, np.ndarray]:
        """`windowed_maps`' moment maps from batches of whole frames, the scan read again
        for each pass."""
        names = self.geometry.motor_names
        rho = self.config.moment_window
        current = maps
        for _ in range(self.config.moment_window_passes):
            window = MomentWindow.from_maps(current, self.geometry.motors, rho)
            window.without(masked.reshape(-1))
            # the previous pass's maps made this window and are done with (`maps` stays):
            # 0.4 GB at 2048^2 that would otherwise stand beside this pass's sums
            current = None
            sums = PowerSums(self.geometry.motors, window.n_pixels, precision=self.config.precision)
            dropped = self.points_dropped  # counted once, by `update`
            for batch in reread():
                frames, positions, monitor = self._finite_points(batch.frames, batch.positions, batch.monitor)
                window.add_to(sums, self.preprocessed(frames, positions, monitor), positions, offset)
            self.points_dropped = dropped
            del window  # its coefficients (0.2 GB at 2048^2), before the maps of its sums
            if sums.count == 0:
                raise ScanError("the scan's frames could not be read again for the windowed moments")
            current = moment_maps_of_sums(sums, None, names, self.frame_shape, 0.0)
            del sums
            correct_truncation(current, names, rho)
        return {name: np.where(masked, np.nan, values).astype(maps[name].dtype, copy=False)
                for name, values in current.items() if name != "intensity"}


def _over_pixels(name: str, values: np.ndarray, frame_shape: tuple[int, int]) -> bool:
    """Whether an optional accumulator's map is an image (or stack of images) over the
    frame's pixels, not per frame or per component (`*_weights`, `pca_variance`)."""
    return not name.endswith("_weights") and name != "pca_variance" and values.shape[-2:] == frame_shape
