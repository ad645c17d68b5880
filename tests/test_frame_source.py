"""LiveFrameSource on the real store: what it hands out, and how much it holds in memory."""

from __future__ import annotations

import numpy as np
import pytest
from blissdata.redis_engine.store import DataStore

from dfxm_online.acquisition.frames import LiveFrameSource
from dfxm_online.acquisition.geometry import ScanError, geometry_from_scan_info
from dfxm_online.acquisition.publisher import ScanDescription, ScanPublisher


def publish_scan(redis_url, tmp_path, mode: str, n: int, number: int, per_call: int = 1,
                 frames_per_file: int = 5) -> tuple[str, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(number)
    frames = rng.integers(0, 60000, size=(n, 6, 5), dtype=np.uint16)
    mu = np.linspace(-1, 1, n)
    desc = ScanDescription(
        session="src", number=number, name="ascan", title=f"ascan mu -1 1 {n - 1} 0.1",
        filename=tmp_path / "scans" / "src.h5", detector="pco", frame_shape=(6, 5), npoints=n,
        motors=[("mu", -1.0, 1.0, n)],
    )
    pub = ScanPublisher(DataStore(redis_url), desc, mode, frames_per_file=frames_per_file)
    pub.start()
    for s in range(0, n, per_call):
        pub.publish_points({"mu": mu[s : s + per_call]}, frames[s : s + per_call])
    pub.finish()
    return pub.key, frames, mu


def open_source(redis_url, key: str, **kw) -> LiveFrameSource:
    scan = DataStore(redis_url).load_scan(key)
    streams = {name: (tuple(s.shape) if getattr(s, "kind", None) == "array" else None)
               for name, s in scan.streams.items()}
    return LiveFrameSource(scan, geometry_from_scan_info(scan.info, streams), **kw)


@pytest.mark.parametrize("mode", ["array", "lima"])
@pytest.mark.parametrize("per_call", [1, 7])
def test_every_frame_once_in_order_with_its_position(redis_url, tmp_path, mode, per_call):
    """Points published one at a time or several per blissdata entry come out the same."""
    key, frames, mu = publish_scan(redis_url, tmp_path, mode, 37, 1 if per_call == 1 else 2, per_call)
    source = open_source(redis_url, key, batch_size=4)
    batches = list(source.batches())
    assert [b.start for b in batches] == list(range(0, 37, 4))
    np.testing.assert_array_equal(np.concatenate([b.frames for b in batches]), frames)
    np.testing.assert_array_equal(np.concatenate([b.positions["mu"] for b in batches]), mu)


def test_lima_read_ahead_is_bounded(redis_url, tmp_path):
    """A daemon far behind a Lima scan (every file closed) holds at most `read_ahead`
    frames beyond the batches it has handed out, not the whole scan."""
    key, frames, _ = publish_scan(redis_url, tmp_path, "lima", 60, 3)
    source = open_source(redis_url, key, batch_size=4, read_ahead=9)
    held = []
    out = []
    for batch in source.batches():
        held.append(source.frames_received - batch.start)
        out.append(batch.frames)
    np.testing.assert_array_equal(np.concatenate(out), frames)
    assert max(held) <= 9
    assert max(held) >= 4  # it does read ahead of the batch it hands out


def test_lima_file_shorter_than_announced_is_a_scan_error(redis_url, tmp_path):
    import h5py

    key, _, _ = publish_scan(redis_url, tmp_path, "lima", 12, 4)
    source = open_source(redis_url, key, batch_size=4)
    path = source.image.get_references(slice(10, 11))[0].file_path
    with h5py.File(path, "a") as f:  # a truncated last file: frames 10, 11 lost
        data = f["/entry_0000/measurement/data"]
        data.resize((0, *data.shape[1:]))
    with pytest.raises(ScanError, match="holds 0 frames"):
        list(source.batches())
