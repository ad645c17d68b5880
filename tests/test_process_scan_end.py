"""`process` writes darfix's other analyses into the maps file (analysis/scan_end.py), read
back with h5py and silx's NXdata reader; `--no-scan-end` skips them."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import silx.io.nxdata

from dfxm_online.acquisition.simulate import SimulationSpec, simulate

CLI = [sys.executable, "-m", "dfxm_online.cli"]


def test_process_writes_the_scan_end_groups(redis_url, tmp_path):
    rec = simulate(redis_url, SimulationSpec(kind="mosaicity", points=9, frame_shape=(40, 36), peak_counts=4000.0,
                                             scan_dir=tmp_path / "s", session="se"))
    out = tmp_path / "maps.h5"
    run = subprocess.run([*CLI, "process", str(rec.filename), "-o", str(out), "--no-progress", "--no-fit",
                          "--accumulators", "projections", "nmf", "--scan-end", '{"domains": 3}'],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    with h5py.File(out) as f:
        entry = f["entry"]
        mask = entry["maps/mask"]
        assert silx.io.nxdata.is_valid_nxdata(mask) and mask[mask.attrs["signal"]].shape == (40, 36)
        domains = entry["maps/domains"]
        labels = domains["labels"][()]
        assert domains[domains.attrs["signal"]].attrs["interpretation"] == "rgba-image"
        assert silx.io.nxdata.is_valid_nxdata(domains) and len(np.unique(labels[labels >= 0])) == 3
        assert "drift" in entry and silx.io.nxdata.is_valid_nxdata(entry["drift"])
        assert "bss" in entry and any(silx.io.nxdata.is_valid_nxdata(g) for g in entry["bss"].values())
        assert "scan_end_options" in entry["process"] and "scan_end_skipped" in entry["process"]
    bare = tmp_path / "bare.h5"
    run = subprocess.run([*CLI, "process", str(rec.filename), "-o", str(bare), "--no-progress", "--no-fit",
                          "--no-scan-end"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    with h5py.File(bare) as f:
        assert "mask" not in f["entry/maps"] and "drift" not in f["entry"]
    bad = subprocess.run([*CLI, "process", str(rec.filename), "-o", str(bare), "--scan-end", '{"colour": 1}'],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown scan-end option(s): colour" in bad.stderr
