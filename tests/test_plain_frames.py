"""Frames read straight from the file (`acquisition.plain_frames`) equal h5py's reads, and
layouts whose bytes are not the plain frames are left to h5py."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from dfxm_online.acquisition.plain_frames import PlainFrames, read_frames

N, H, W = 11, 9, 7


@pytest.fixture
def stack() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 65535, (N, H, W), dtype=np.uint16)


LAYOUTS = {
    "contiguous": {},
    "one frame per chunk": {"chunks": (1, H, W)},
    "three frames per chunk, the last chunk partly used": {"chunks": (3, H, W)},
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("userblock", [0, 512])
def test_reads_equal_h5py(tmp_path, stack, layout, userblock):
    path = tmp_path / "scan.h5"
    with h5py.File(path, "w", userblock_size=userblock) as f:
        f.create_dataset("x/frames", data=stack, **LAYOUTS[layout])
        f.create_dataset("y/other", data=stack[::-1].astype(np.float32), **LAYOUTS[layout])
    with h5py.File(path, "r") as f:
        for name, expected in (("x/frames", stack), ("y/other", stack[::-1].astype(np.float32))):
            plain = PlainFrames.of(f[name])
            assert plain is not None, (name, layout)
            out = np.zeros((5, H, W), expected.dtype)
            plain.read(4, 9, out)
            np.testing.assert_array_equal(out, expected[4:9])
            band = np.zeros((N, 3, W), expected.dtype)
            plain.read(0, N, band, rows=(5, 8))
            np.testing.assert_array_equal(band, expected[:, 5:8])
            # a destination that is not contiguous, and one of another type
            strided = np.zeros((3, H, 2 * W), expected.dtype)[:, :, ::2]
            plain.read(8, 11, strided)
            np.testing.assert_array_equal(strided, expected[8:11])
            wide = np.zeros((2, H, W), np.float64)
            plain.read(0, 2, wide)
            np.testing.assert_array_equal(wide, expected[:2])
            plain.close()


@pytest.mark.parametrize("options", [
    {"chunks": (1, H, W), "compression": "gzip"},
    {"chunks": (1, H, W), "shuffle": True},
    {"chunks": (1, H, W), "fletcher32": True},
    {"chunks": (1, 3, W)},  # a chunk holds part of a frame
], ids=["gzip", "shuffle", "checksum", "partial-frame chunks"])
def test_filtered_or_split_frames_are_left_to_h5py(tmp_path, stack, options):
    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("frames", data=stack, **options)
    with h5py.File(path, "r") as f:
        assert PlainFrames.of(f["frames"]) is None
        out = np.zeros((N, 2, W), np.uint16)
        read_frames(f["frames"], None, 0, N, out, rows=(1, 3))
        np.testing.assert_array_equal(out, stack[:, 1:3])


def test_unwritten_chunks_big_endian_and_virtual_are_left_to_h5py(tmp_path, stack):
    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as f:
        partly = f.create_dataset("partly", shape=(N, H, W), dtype=np.uint16, chunks=(1, H, W))
        partly[:4] = stack[:4]  # chunks 4.. never written: their frames are the fill value
        f.create_dataset("empty", shape=(N, H, W), dtype=np.uint16)  # contiguous, never written
        f.create_dataset("big", data=stack.astype(">u2"))
        f.create_dataset("frames", data=stack)
        layout = h5py.VirtualLayout((N, H, W), np.uint16)
        layout[:] = h5py.VirtualSource(f["frames"])
        f.create_virtual_dataset("virtual", layout)
    with h5py.File(path, "r") as f:
        for name in ("partly", "empty", "big", "virtual"):
            assert PlainFrames.of(f[name]) is None, name


def test_a_truncated_file_is_a_clear_error(tmp_path, stack):
    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("frames", data=stack)
    with h5py.File(path, "r") as f:
        plain = PlainFrames.of(f["frames"])
    with open(path, "r+b") as raw:
        raw.truncate(plain._offsets[0] + 3 * H * W * 2)  # noqa: SLF001 - the layout under test
    with pytest.raises(OSError, match="file ends"):
        plain.read(0, N, np.zeros((N, H, W), np.uint16))
    plain.close()


def test_recorded_scan_reads_through_its_file(tmp_path, stack):
    """`RecordedScan.read` of a BLISS-layout file (one chunk per frame, as Lima writes) takes
    the direct path and equals the dataset."""
    from dfxm_online.acquisition.blissfile import open_scan

    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as f:
        entry = f.create_group("1.1")
        entry["title"] = "ascan mu 0 1 10 0.1"
        entry.create_dataset("measurement/pco", data=stack, chunks=(1, H, W))
        entry["instrument/positioners/mu"] = np.linspace(0, 1, N)
    with open_scan(path, "1.1") as rec:
        out = np.zeros((N, 5, W), np.uint16)
        rec.read(0, N, out, rows=(3, 8))
        np.testing.assert_array_equal(out, stack[:, 3:8])
        assert rec._plain and rec._plain[0] is not None  # noqa: SLF001 - the direct path was taken
