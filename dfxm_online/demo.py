"""`make demo`: embedded store + daemon + a simulated mosaicity scan -> maps and a quick-look.

Everything it starts (store, daemon) it stops, even on error or Ctrl-C.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from .acquisition.simulate import SimulationSpec, simulate, write_truth
from .config import DaemonConfig
from .daemon import Daemon
from .publish.nexus import read_maps_file
from .publish.quicklook import quicklook_path
from .store import EmbeddedStore

logger = logging.getLogger(__name__)


def run_demo(output_dir: Path, shape: tuple[int, int] = (512, 512), rate: float = 50.0) -> Path:
    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    store = EmbeddedStore(output_dir / ".store")
    url = store.start()
    daemon = None
    try:
        daemon = Daemon(url, output_dir, DaemonConfig()).start()
        daemon.ready.wait(10)
        spec = SimulationSpec(
            kind="mosaicity", frame_shape=shape, frame_rate=rate, dark_frames=10,
            peak_counts=5000.0, session="demo", scan_dir=output_dir / "scans", seed=7,
        )
        t0 = time.monotonic()
        logger.info("publishing a dark scan and a %d-point mosaicity scan of %dx%d frames at %g frames/s",
                    21 * 16, shape[0], shape[1], rate)
        result = simulate(url, spec)
        daemon.wait_idle(120)
        elapsed = time.monotonic() - t0
        status = daemon.scan_status(result.scan_key)
        if status is None:
            raise RuntimeError("the daemon did not pick up the simulated scan")
        maps_file = Path(status.path)
        logger.info("waiting for the scan-end workflow (window, fits, analyses) of %s", maps_file.name)
        record = daemon.post_scan.wait(result.scan_key, 600)
        truth_file = maps_file.with_name(maps_file.stem + "_truth.h5")
        write_truth(truth_file, result.model)
        maps, process = read_maps_file(maps_file)
        png = quicklook_path(maps_file)  # the daemon's quick-look, written at the scan's end
        model = result.model
        inside = np.isfinite(maps["com_mu"]) & (model.amplitude > 0.4 * model.amplitude.max())
        com_err = {m: float(np.nanmedian(np.abs(maps[f"com_{m}"] - model.centre[i])[inside]))
                   for i, m in enumerate(result.motors)}
        fwhm_err = {m: float(np.nanmedian(np.abs(maps[f"fwhm_{m}"] / model.fwhm[i] - 1)[inside]))
                    for i, m in enumerate(result.motors)}
        print(f"maps:       {maps_file}")
        print(f"quick-look: {png}")
        print(f"truth:      {truth_file}")
        print(f"scan file:  {result.filename}")
        print(
            f"\nThe daemon followed a dark scan and a {len(result.positions)}-point mosaicity scan "
            f"(mu x chi, {shape[0]}x{shape[1]} frames) published through blissdata at "
            f"{rate:g} frames/s, took the background from the scan's edges (the dark and the "
            f"diffuse pedestal above it), and finished with state "
            f"'{process['state']}' after {process['frames_processed']} of "
            f"{process['frames_expected']} frames, {elapsed:.1f} s after the first frame. "
            f"Against the simulator's truth, the median centre-of-mass error is "
            + ", ".join(f"{v:.2e} deg for {m}" for m, v in com_err.items())
            + " and the median relative FWHM error "
            + ", ".join(f"{100 * v:.1f} % for {m}" for m, v in fwhm_err.items())
            + ". Open the maps with `silx view` (NeXus default plot: com_mu) or the PNG."
        )
        if record is not None:
            print(f"\nThe scan-end workflow ({record.workflow}, local pool) ended '{record.state}'"
                  + (f": {record.reason}" if record.reason else
                     f" {record.ended - record.submitted:.1f} s after the scan: per-pixel Gaussian fits in "
                     "/entry/fit, drift, grain mask, domains and blind source separation in the same file."))
        return maps_file
    finally:
        if daemon is not None:
            daemon.stop()
        store.stop()
