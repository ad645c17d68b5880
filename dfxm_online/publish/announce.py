"""Every published version of a maps file, announced on a Redis stream of the store the
daemon follows, so that viewers repaint when a version is out instead of polling files.

Stream: ``dfxm-online:maps`` (`STREAM`), bounded to the last `MAXLEN` entries (``XADD
... MAXLEN ~``). Each entry's fields are plain strings (JSON for the one structured
value, no pickle), for any client — the silx viewer, Flint, a web page:

    scan_key      the scan's blissdata key
    path          the maps file's absolute path (a new file renamed over it each time)
    version       1, 2, ... per scan
    state         running | complete | aborted | failed
    frames        frames in this version / frames expected, e.g. "120/441"
    map_binning   the version's binning (1 = full resolution)
    time          UTC ISO 8601 time of the announcement

A failed announcement (the store gone) is logged at debug level and never delays or fails
the publish: the file is the product, the announcement a courtesy.
"""

from __future__ import annotations

import datetime
import logging

import redis

logger = logging.getLogger(__name__)

STREAM = "dfxm-online:maps"
MAXLEN = 10000


class Announcer:
    """Announces published versions on `STREAM` of the store at `url`."""

    def __init__(self, url: str) -> None:
        self._redis = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)

    def announce(self, scan_key: str, path: str, version: int, state: str, frames: int, expected: int,
                 binning: int, delay: float | None = None) -> None:
        """`delay`: seconds from the oldest frame this version adds to its file being in
        place (the frame-to-map delay; "" when the version adds no frame)."""
        fields = {
            "scan_key": scan_key, "path": path, "version": str(version), "state": state,
            "frames": f"{frames}/{expected}", "map_binning": str(binning),
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "delay": "" if delay is None else f"{delay:.3f}",
        }
        try:
            self._redis.xadd(STREAM, fields, maxlen=MAXLEN, approximate=True)
        except redis.RedisError as exc:
            logger.debug("version %d of %s not announced: %s", version, scan_key, exc)

    def close(self) -> None:
        self._redis.close()
