"""The one-pass maps are those of main before the live path's redesign, bit for bit.

tests/data/before_redesign_<case>.npz hold the frames and positions of three simulated
scans (one, two and three motors; a zigzag mesh among them) and the maps that main at
e6aa944 made of them: the full-resolution float64 snapshot and the daemon's float32 live
snapshot binned 2x2 (the script that made them: docs/architecture.md, "Reference maps").
The redesign (configuration, accumulator registry, daemon split, live binning) moved no
bit of either (checked before the numba frame pass was merged). The numba pass (issue 20)
adds the frames in another order than the C pass it replaced, so the float64 maps now agree
within a summation-order bound: the same NaN pattern, values within 1e-9 of each map's
largest magnitude (measured: at most 2e-10, on the kurtosis of a three-motor scan, where the
central moments come from raw sums by cancellation; 1e-14 elsewhere). The float32 live
snapshot is still identical bit for bit. The final maps' window (moment_window) is new and
not part of them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dfxm_online.acquisition.geometry import MotorAxis, ScanGeometry
from dfxm_online.config import AnalysisConfig
from dfxm_online.online.pipeline import ScanPipeline

DATA = Path(__file__).resolve().parent / "data"


@pytest.mark.parametrize("case", ["rocking", "mosaicity", "strain"])
def test_maps_equal_those_of_main_before_the_redesign(case):
    ref = np.load(DATA / f"before_redesign_{case}.npz")
    axes = tuple(MotorAxis(str(n), float(a), float(b), int(p))
                 for n, a, b, p in zip(ref["motors"], ref["starts"], ref["stops"], ref["points"]))
    frames, positions = ref["frames"], ref["positions"]
    shape = frames.shape[1:]
    geometry = ScanGeometry(motors=axes, npoints=len(positions), detector="pco", frame_shape=shape)
    pipeline = ScanPipeline(geometry, shape, AnalysisConfig(batch_size=16))
    named = {a.name: positions[:, i] for i, a in enumerate(axes)}
    for start in range(0, len(positions), 16):
        pipeline.update(frames[start:start + 16], {k: v[start:start + 16] for k, v in named.items()})
    pipeline.finish()
    for prefix, maps in (("map_", pipeline.snapshot()), ("live_", pipeline.snapshot(np.float32, binning=2))):
        expected = {k[len(prefix):]: ref[k] for k in ref.files if k.startswith(prefix)}
        assert set(maps) == set(expected), prefix
        for name, values in expected.items():
            assert maps[name].dtype == values.dtype, name
            if prefix == "live_" or values.dtype.kind != "f":
                np.testing.assert_array_equal(maps[name], values, err_msg=f"{prefix}{name}")
                continue
            finite = np.isfinite(values)
            np.testing.assert_array_equal(np.isfinite(maps[name]), finite, err_msg=f"{prefix}{name} NaN pattern")
            scale = np.abs(values[finite]).max() if finite.any() else 1.0
            np.testing.assert_allclose(maps[name][finite], values[finite], rtol=0, atol=1e-9 * scale,
                                       err_msg=f"{prefix}{name}")
