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
    number = {"array": 10, "lima": 20}[mode] + per_call
    key, frames, mu = publish_scan(redis_url, tmp_path, mode, 37, number, per_call)
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


@pytest.mark.parametrize("layout", ["frame_chunks", "gzip", "contiguous", "two_frame_chunks"])
def test_lima_dataset_layouts_read_the_same_frames(tmp_path, layout):
    """Uncompressed one-frame chunks are read chunk by chunk into the batch; any other
    layout (compressed, contiguous, other chunks) through HDF5's own read."""
    import h5py

    from dfxm_online.acquisition.frames import _read_frames

    frames = np.random.default_rng(5).integers(0, 60000, size=(9, 7, 6), dtype=np.uint16)
    kwargs = {"frame_chunks": {"chunks": (1, 7, 6)}, "gzip": {"chunks": (1, 7, 6), "compression": "gzip"},
              "contiguous": {}, "two_frame_chunks": {"chunks": (2, 7, 6)}}[layout]
    with h5py.File(tmp_path / "lima.h5", "w") as f:
        f.create_dataset("data", data=frames, **kwargs)
    with h5py.File(tmp_path / "lima.h5", "r") as f:
        out = np.full((5, 7, 6), 7, dtype=np.uint16)
        _read_frames(f["data"], 3, out)
    np.testing.assert_array_equal(out, frames[3:8])


@pytest.mark.parametrize("read_ahead", [4, 9])
def test_recycled_lima_buffers_never_overwrite_frames_not_handed_out(redis_url, tmp_path, read_ahead):
    """A consumer that recycles every batch gets every frame right (a buffer still holding
    frames not handed out is not reused), and batch buffers are reused when reads line up
    with batches (read_ahead == batch_size)."""
    key, frames, _ = publish_scan(redis_url, tmp_path, "lima", 50, 40 + read_ahead, frames_per_file=3)
    source = open_source(redis_url, key, batch_size=4, read_ahead=read_ahead)
    out, roots = [], []
    for batch in source.batches():
        out.append(batch.frames.copy())
        root = batch.frames
        while isinstance(root.base, np.ndarray):
            root = root.base
        roots.append(root)  # kept alive, so distinct buffers are distinct objects
        source.recycle(batch.frames)
    np.testing.assert_array_equal(np.concatenate(out), frames)
    if read_ahead == 4:
        assert len({id(r) for r in roots}) < len(out) // 2, "batch buffers were not reused"


def test_lima_files_read_while_frames_wait_share_one_buffer(redis_url, tmp_path):
    """A live scan's Lima files close one by one and may be read while earlier frames still
    wait to be handed out: their frames go after those in the same batch buffer (one
    buffer, one contiguous batch), not into a new batch-sized buffer per read."""
    import time

    rng = np.random.default_rng(60)
    frames = rng.integers(0, 60000, size=(9, 6, 5), dtype=np.uint16)
    mu = np.linspace(-1, 1, 9)
    desc = ScanDescription(
        session="src", number=60, name="ascan", title="ascan mu -1 1 8 0.1",
        filename=tmp_path / "scans" / "src.h5", detector="pco", frame_shape=(6, 5), npoints=9,
        motors=[("mu", -1.0, 1.0, 9)],
    )
    pub = ScanPublisher(DataStore(redis_url), desc, "lima", frames_per_file=3)
    pub.start()
    source = open_source(redis_url, pub.key, batch_size=16)

    def publish_and_read(first: int, stop: int, readable: int) -> None:
        """Points first..stop; a file is read once the next one has begun (blissdata's rule)."""
        pub.publish_points({"mu": mu[first:stop]}, frames[first:stop])
        deadline = time.monotonic() + 10
        while source.frames_received < readable:  # blissdata's publisher sends a little later
            assert time.monotonic() < deadline, f"frames {source.frames_received}..{readable} not read"
            source._read_once(wait=True)

    publish_and_read(0, 4, 3)
    publish_and_read(4, 7, 6)  # frames 0-5 held, none handed out yet
    pub.publish_points({"mu": mu[7:]}, frames[7:])
    pub.finish()
    batches = list(source.batches())
    assert len(batches) == 1
    np.testing.assert_array_equal(batches[0].frames, frames)
    # a view of the one batch buffer, not frames copied together from several
    assert batches[0].frames.base is not None, "the batch was concatenated from several buffers"
    assert len([ref for ref in source._owned if ref() is not None]) == 1


@pytest.mark.parametrize("per_call, batch_size, read_points", [(1, 4, 3), (3, 5, 6), (7, 4, 14), (8, 64, 64)])
def test_recycled_array_buffers_never_overwrite_frames_not_handed_out(redis_url, tmp_path, per_call,
                                                                      batch_size, read_points):
    """Plain array frames are read straight into recycled batch buffers, several reads into
    one buffer: a consumer recycling every batch still gets every frame right, whether the
    batches line up with the reads and entries or not."""
    number = 40 + per_call
    key, frames, mu = publish_scan(redis_url, tmp_path, "array", 61, number, per_call)
    source = open_source(redis_url, key, batch_size=batch_size)
    assert source._array.direct
    source._array.max_points = read_points
    got, positions = [], []
    for batch in source.batches():
        got.append(batch.frames.copy())
        positions.append(batch.positions["mu"])
        source.recycle(batch.frames)
    np.testing.assert_array_equal(np.concatenate(got), frames)
    np.testing.assert_array_equal(np.concatenate(positions), mu)
    assert source._array._conn is None  # its connection is closed once the stream is sealed


@pytest.mark.parametrize("mode, lag, read_points", [("array", 1, 3), ("array", 3, 3), ("array", 12, 5),
                                                    ("lima", 2, None), ("lima", 9, None)])
def test_batches_given_back_late_are_never_overwritten(redis_url, tmp_path, mode, lag, read_points):
    """A consumer that recycles its batches `lag` batches late (the daemon's full-resolution
    updates run behind its reads) gets every frame right: no read goes where a batch not
    given back is. When they come back within a buffer's round, the reads go round one
    buffer instead of taking new ones."""
    from collections import deque

    from dfxm_online.acquisition.frames import root_of

    key, frames, _ = publish_scan(redis_url, tmp_path, mode, 90, 70 + lag + 20 * (mode == "lima"), frames_per_file=3)
    # batches as a live scan's: what each read brings (max_delay 0), a few frames each
    source = open_source(redis_url, key, batch_size=8, max_delay=0.0)
    if read_points is not None:
        source._array.max_points = read_points
    held: deque[tuple[int, np.ndarray]] = deque()
    buffers: list[np.ndarray] = []  # kept alive: distinct buffers are distinct objects
    count = 0

    def give_back() -> None:
        first, batch = held.popleft()
        np.testing.assert_array_equal(batch, frames[first : first + len(batch)])
        source.recycle(batch)

    for batch in source.batches():
        root = root_of(batch.frames)
        if not any(root is b for b in buffers):
            buffers.append(root)
        held.append((count, batch.frames))
        count += len(batch.frames)
        while len(held) > lag:
            give_back()
    while held:
        give_back()
    assert count == len(frames)
    if mode == "array" and lag == 1:
        assert len(buffers) <= 2, f"{len(buffers)} buffers for a consumer one batch behind"


def test_free_shape_array_stream_is_read_through_blissdata(redis_url, tmp_path):
    """Frames of a stream declared with a free shape (-1, -1) carry their shape in each
    payload: read through blissdata's decoder, not straight from the socket."""
    rng = np.random.default_rng(5)
    frames = rng.integers(0, 60000, size=(9, 6, 5), dtype=np.uint16)
    desc = ScanDescription(
        session="src", number=50, name="ascan", title="ascan mu -1 1 8 0.1",
        filename=tmp_path / "scans" / "free.h5", detector="pco", frame_shape=(6, 5), npoints=9,
        motors=[("mu", -1.0, 1.0, 9)], declared_frame_shape=(-1, -1),
    )
    pub = ScanPublisher(DataStore(redis_url), desc, "array")
    pub.start()
    for s in range(0, 9, 2):
        pub.publish_points({"mu": np.linspace(-1, 1, 9)[s : s + 2]}, frames[s : s + 2])
    pub.finish()
    source = open_source(redis_url, pub.key, batch_size=4)
    assert not source._array.direct
    np.testing.assert_array_equal(np.concatenate([b.frames for b in source.batches()]), frames)


def test_the_array_readers_own_connection_is_closed_when_reading_stops(redis_url, tmp_path):
    # a worker that stops early (failed scan, daemon stopped) leaves no connection behind
    key, frames, _ = publish_scan(redis_url, tmp_path, "array", 20, 60)
    source = open_source(redis_url, key, batch_size=4)
    batches = source.batches()
    first = next(batches)
    np.testing.assert_array_equal(first.frames, frames[:4])
    assert source._array._conn is not None  # reading on its own connection
    batches.close()
    assert source._array._conn is None
