"""The maps file writer: float32 datasets, conversion buffers reused between writes."""

from __future__ import annotations

import numpy as np

from dfxm_online.publish.nexus import ProcessInfo, read_maps_file, write_maps_file


def test_writes_sharing_conversion_buffers_keep_every_map_its_own_values(tmp_path):
    rng = np.random.default_rng(0)
    scratch: dict = {}
    written = []
    for k in range(3):  # the daemon's live rewrites: one scratch for all of them
        maps = {
            "com_mu": rng.normal(size=(30, 40)),
            "fwhm_mu": rng.normal(size=(30, 40)),  # same shape: the same buffer, in turn
            "binned": rng.normal(size=(15, 20)),
            "projections_omega": rng.normal(size=(3, 30, 40)),  # a stack: not kept
            "mosaicity": rng.random((30, 40, 3)).astype(np.float32),
            "count": np.arange(12, dtype=np.int64).reshape(3, 4),
        }
        path = write_maps_file(tmp_path / f"scan_{k}.h5", maps, ProcessInfo(frames_processed=k),
                               durable=False, scratch=scratch)
        written.append((path, maps))
    assert sorted(scratch) == [(15, 20), (30, 40)]
    for path, maps in written:
        back, process = read_maps_file(path)
        assert set(back) == set(maps)
        for name, values in maps.items():
            expected = values.astype(np.float32) if values.dtype.kind == "f" else values
            assert back[name].dtype == expected.dtype, name
            np.testing.assert_array_equal(back[name], expected, err_msg=name)
