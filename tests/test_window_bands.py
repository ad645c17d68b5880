"""The final maps' window by bands of detector rows (online/window_bands.py): the same maps,
bit for bit, as by batches of whole frames; the bands' layout; `process` takes the bands
for frames stored plainly and whole frames otherwise."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from dfxm_online.acquisition import blissfile
from dfxm_online.acquisition.batch import Batch
from dfxm_online.acquisition.geometry import MotorAxis, ScanGeometry
from dfxm_online.acquisition.simulate import SimulationSpec, simulate
from dfxm_online.config import AnalysisConfig
from dfxm_online.offline import process_scan
from dfxm_online.online.pipeline import ScanPipeline
from dfxm_online.online.window_bands import ScanRows, band_rows, frame_chunks

from . import brute


def test_bands_cover_the_rows_evenly_within_the_budget():
    for n, shape, itemsize, budget in ((240, (2048, 2048), 2, 128 << 20), (7, (13, 5), 4, 1000),
                                       (5000, (100, 300), 2, 1), (3, (4, 4), 1, 10**9)):
        bands = band_rows(n, shape, itemsize, budget)
        assert bands[0][0] == 0 and bands[-1][1] == shape[0]
        assert all(a[1] == b[0] for a, b in zip(bands, bands[1:]))
        heights = [r1 - r0 for r0, r1 in bands]
        assert min(heights) >= 1 and max(heights) - min(heights) <= 1
        per_row = n * shape[1] * itemsize
        assert max(heights) == 1 or max(heights) * per_row <= budget
    assert band_rows(240, (2048, 2048), 2, 128 << 20) == [(r, r + 128) for r in range(0, 2048, 128)]
    assert band_rows(3, (4, 4), 1, 10**9) == [(0, 4)]


def test_chunks_are_the_batches_without_their_non_finite_points():
    axes = (MotorAxis("mu", -1, 1, 5), MotorAxis("chi", -1, 1, 2))
    mu, chi = np.linspace(-1, 1, 10), np.zeros(10)
    mu[3], chi[8], chi[9] = np.nan, np.inf, np.nan
    chunks = frame_chunks({"mu": mu, "chi": chi, "other": np.full(10, np.nan)}, axes, 10, 4)
    assert [np.arange(10)[c].tolist() for c in chunks] == [[0, 1, 2], [4, 5, 6, 7]]
    assert isinstance(chunks[1], slice)
    assert frame_chunks({"mu": np.full(3, np.nan), "chi": np.zeros(3)}, axes, 3, 4) == []


def _scan(rng, n_motors: int = 2):
    """A small mesh whose pixels each have a peak somewhere: frames (N, H, W) uint16."""
    axes = (MotorAxis("mu", -0.4, 0.4, 9), MotorAxis("chi", -1.0, 1.0, 7)) if n_motors == 2 else \
        (MotorAxis("mu", -0.4, 0.4, 41),)
    grids = np.meshgrid(*[np.linspace(a.start, a.stop, a.npoints) for a in axes], indexing="ij")
    pos = np.stack([g.ravel() for g in grids], 1)
    shape = (230, 160)
    centre = np.stack([rng.uniform(-0.2, 0.2, shape), rng.uniform(-0.5, 0.5, shape)])[:n_motors]
    width = (0.1, 0.3)[:n_motors]
    z = sum(((pos[:, i, None, None] - centre[i]) / width[i]) ** 2 for i in range(n_motors))
    stack = rng.poisson(2000 * np.exp(-0.5 * z) + 30).astype(np.uint16) + 100
    stack[:, :3, :4] = 100  # no signal: masked
    return axes, pos, stack


@pytest.mark.parametrize("n_motors", [1, 2])
def test_band_and_batch_paths_give_the_same_maps_bit_for_bit(n_motors):
    """Several bands, chunks of 10 frames, points with a non-finite position, three passes;
    with `overwrite` the bands' maps land in the one-pass maps' own arrays."""
    rng = np.random.default_rng(n_motors)
    axes, pos, stack = _scan(rng, n_motors)
    positions = {a.name: pos[:, i].copy() for i, a in enumerate(axes)}
    positions["mu"][[5, 17]] = np.nan
    n, shape = len(pos), stack.shape[1:]
    # batch_mb 1: batches of at most batch_size 10 frames (1 MiB holds 14); bands of half a
    # MiB: 16 rows of 63 points (two motors, 15 bands), 38-39 of 41 (one motor, 6 bands)
    config = AnalysisConfig(accumulators=[], batch_size=10, batch_mb=1, moment_window_passes=3)
    pipeline = ScanPipeline(ScanGeometry(motors=axes, npoints=n, detector="d", frame_shape=shape), shape, config)
    for lo in range(0, n, 10):
        pipeline.update(stack[lo:lo + 10], {k: v[lo:lo + 10] for k, v in positions.items()})
    read_rows = []

    def read(r0: int, r1: int, out: np.ndarray) -> None:
        read_rows.append((r0, r1))
        out[...] = stack[:, r0:r1]

    def reread():
        return [Batch(lo, stack[lo:lo + 10], {k: v[lo:lo + 10] for k, v in positions.items()}, None)
                for lo in range(0, n, 10)]

    by_batches = pipeline.windowed_maps(pipeline.snapshot(), reread)
    rows = ScanRows(n, stack.dtype, positions, read)
    by_bands = pipeline.windowed_maps(pipeline.snapshot(), lambda: pytest.fail("no whole frames"), rows)
    assert len(read_rows) >= 6 and sorted(read_rows) == read_rows and read_rows[-1][1] == shape[0]
    one_pass = pipeline.snapshot()
    in_place = pipeline.windowed_maps(one_pass, lambda: pytest.fail("no whole frames"), rows, overwrite=True)
    assert list(by_bands) == list(by_batches) == list(in_place)
    for name in by_batches:
        assert np.array_equal(by_bands[name], by_batches[name], equal_nan=True), name
        assert np.array_equal(in_place[name], by_batches[name], equal_nan=True), name
    assert in_place["com_mu"] is one_pass["com_mu"]
    assert np.isnan(by_bands["com_mu"][:3, :4]).all() and np.isfinite(by_bands["com_mu"][10:]).all()
    # and the windowed moments are the windowed moments: brute force over a corner of the
    # stack (the window is pixel by pixel)
    kept, corner = np.isfinite(positions["mu"]), np.s_[:20, :20]
    mask = np.isfinite(by_batches["com_mu"][corner])
    ref = brute.windowed_moments(stack[kept][:, :20, :20].astype(np.float64), pos[kept],
                                 pipeline.background()[0].reshape(shape)[corner], 3.0, 3, mask, axes)
    np.testing.assert_allclose(by_bands["com_mu"][corner], np.where(mask, ref["mean0"], np.nan), rtol=1e-9,
                               equal_nan=True)


def test_process_reads_bands_of_plain_frames_and_whole_frames_otherwise(redis_url, tmp_path, monkeypatch):
    spec = SimulationSpec(kind="mosaicity", points=7, frame_shape=(40, 32), scan_dir=tmp_path / "scans",
                          session="off", peak_counts=3000.0)
    rec = simulate(redis_url, spec)
    scan = f"{rec.scan_number}.1"
    reads: list[tuple | None] = []
    read = blissfile.RecordedScan.read

    def spy(self, start, stop, out, rows=None):
        reads.append(rows)
        read(self, start, stop, out, rows)

    monkeypatch.setattr(blissfile.RecordedScan, "read", spy)
    config = AnalysisConfig(batch_size=8)
    plain = process_scan(rec.filename, scan, config, progress=False)[0]
    with blissfile.open_scan(rec.filename, scan) as opened:
        assert opened.stored_plainly
    # the one pass's 7 batches of whole frames, then bands of rows for both window passes
    assert reads[:7] == [None] * 7 and reads[7:] and all(r is not None for r in reads[7:])
    assert reads[7][0] == 0 and reads[-1][1] == 40
    # the same frames compressed: whole frames, the scan read once more per pass
    packed = tmp_path / "packed.h5"
    with h5py.File(rec.filename, "r") as src, h5py.File(packed, "w") as dst:
        src.copy(src[scan], dst, scan)
        frames = dst[scan]["instrument/pco/data"][()]
        del dst[scan]["instrument/pco/data"]
        dst[scan]["instrument/pco"].create_dataset("data", data=frames, chunks=(1, *frames.shape[1:]),
                                                   compression="gzip")
    reads.clear()
    compressed = process_scan(packed, scan, config, progress=False)[0]
    # 49 points in batches of 8: the one pass and the window's two passes, 7 batches each
    assert reads == [None] * 21
    for name in plain:
        assert np.array_equal(plain[name], compressed[name], equal_nan=True), name
