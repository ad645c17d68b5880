"""Replay a recorded BLISS scan through blissdata, point by point, as the beamline did."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from blissdata.redis_engine.store import DataStore

from .blissfile import open_scan
from .publisher import ScanDescription, ScanPublisher
from .simulate import next_scan_number

logger = logging.getLogger(__name__)


def replay(
    url: str,
    path: str | Path,
    scan: str | int = "1.1",
    rate: float = 0.0,
    image_mode: str = "array",
    session: str = "replay",
    scan_dir: str | Path = "replay-data",
    detector: str | None = None,
    frames_per_file: int = 10,
) -> str:
    """Publish scan `scan` of `path` to the store at `url`; return the new scan's key.

    The scan_info is rebuilt from the file: the title's scan type, and for each moving motor
    the recorded range (min..max) and number of distinct positions. Any scan replays: one
    without a moving motor (a dark `loopscan`, `ct`, `timescan`) is published with its
    frames and no motor channel, as BLISS publishes it, so that a recorded session (dark,
    then mesh) replays in order and the daemon treats its dark as it would live. The
    replayed scan is written to a new BLISS file under `scan_dir` (as BLISS writes every
    scan it runs).
    """
    store = DataStore(url)
    with open_scan(path, scan, detector=detector, require_motors=False) as rec:
        geometry = rec.geometry()
        motors = [(m.name, m.start, m.stop, m.npoints) for m in geometry.motors]
        name = geometry.scan_type or ("ascan" if len(motors) == 1 else "amesh" if motors else "loopscan")
        out = Path(scan_dir) / f"{Path(path).stem}_replay.h5"
        desc = ScanDescription(
            session=session, number=next_scan_number(out), name=name,
            title=rec.title or name, filename=out, detector=rec.detector,
            frame_shape=rec.frame_shape, npoints=rec.npoints, motors=motors,
            dtype=str(rec.frames.dtype),
        )
        pub = ScanPublisher(store, desc, image_mode, frames_per_file)
        pub.start()
        t0 = time.monotonic()
        index = 0
        for batch in rec.batches(16):
            for j in range(batch.frames.shape[0]):
                if rate > 0:
                    delay = t0 + index / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                pub.publish({k: float(v[j]) for k, v in batch.positions.items()}, batch.frames[j])
                index += 1
        pub.finish()
    logger.info("replayed %s::%s as %s (%d points)", path, scan, pub.key, index)
    return pub.key
