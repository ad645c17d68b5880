"""`dfxm-online process` runs the per-pixel fits after the moments: /entry/fit in the same
maps file, read back with h5py, compared with the simulator's truth; `--no-fit` skips them."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from dfxm_online.acquisition.simulate import SimulationSpec, simulate
from dfxm_online.publish.nexus import read_maps_file

CLI = [sys.executable, "-m", "dfxm_online.cli"]
CONTRACT = ["amplitude", "background", "chi2", "converged", "iterations"]


@pytest.fixture()
def mesh(redis_url, tmp_path):
    """A mosaicity mesh recorded through Lima files (the scan file's virtual dataset), a dark
    scan before it, a 5-photon background under the peaks."""
    spec = SimulationSpec(kind="mosaicity", frame_shape=(24, 20), scan_dir=tmp_path / "scans", dark_frames=8, session="fit",
                          peak_counts=3000.0, background=5.0, image_mode="lima", zigzag=True)
    return simulate(redis_url, spec)


def run_process(result, out, *flags):
    cmd = [*CLI, "process", str(result.filename), "--scan", f"{result.scan_number}.1", "-o", str(out),
           "--no-progress", *flags]
    if result.dark_number is not None:
        cmd += ["--dark", f"{result.filename}::{result.dark_number}.1"]
    return subprocess.run(cmd, capture_output=True, text=True)


def test_process_writes_the_fits_beside_the_maps(mesh, tmp_path):
    out = tmp_path / "maps.h5"
    run = run_process(mesh, out)
    assert run.returncode == 0, run.stderr
    maps, process = read_maps_file(out)
    names = mesh.motors
    with h5py.File(out, "r") as f:
        group = f["entry/fit"]
        expected = CONTRACT + [f"{kind}_{m}" for m in names for kind in ("peak", "fwhm")]
        expected += [f"{kind}_{m}_error" for m in names for kind in ("peak", "fwhm")]
        expected += ["correlation_mu_chi"]
        assert set(expected) <= set(group)
        fit = {}
        for name in group:
            nxdata = group[name]
            assert nxdata.attrs["NX_class"] == "NXdata" and nxdata.attrs["signal"] == name
            fit[name] = nxdata[name][()]
            assert fit[name].shape == maps["intensity"].shape
        assert f["entry/maps/com_mu/com_mu"].shape == (24, 20)  # the maps' layout is unchanged
    # the moment maps' signal mask, no more, no less
    fitted = fit["iterations"] > 0
    np.testing.assert_array_equal(fitted, np.isfinite(maps["com_mu"]))
    assert np.isnan(fit["peak_mu"][~fitted]).all()
    converged = fit["converged"] == 1
    assert process["fit_pixels"] == fitted.sum()
    assert process["fit_converged_fraction"] == pytest.approx(converged.sum() / fitted.sum())
    settings = json.loads(process["fit_settings"])
    assert settings["max_peaks"] == 1 and settings["background"]  # what the moments subtracted too
    model = mesh.model
    crystal = model.amplitude > 0.2 * 3000.0
    assert np.mean(converged[crystal]) > 0.95
    # where there is no crystal (in the mask when the background leaves a pedestal), a peak
    # is seldom claimed: not converged, or an amplitude its standard error cannot tell
    # from 0 (3 of 224 such pixels here: a free position finds the largest fluctuation)
    empty = fitted & (model.amplitude == 0)
    with np.errstate(invalid="ignore"):
        claimed = converged & (fit["amplitude"] > 3 * fit["amplitude_error"])
    assert claimed[empty].sum() <= 0.05 * empty.sum()
    # against the simulator's truth: errors within 3 standard errors, widths unbiased
    converged &= crystal
    for i, m in enumerate(names):
        z = np.abs(fit[f"peak_{m}"] - model.centre[i])[converged] / fit[f"peak_{m}_error"][converged]
        assert np.mean(z < 3) >= 0.95, (m, np.mean(z < 3))
        bias = np.median((fit[f"fwhm_{m}"] - model.fwhm[i])[converged] / model.fwhm[i][converged])
        assert abs(bias) < 0.01, (m, bias)
    # --no-fit: the same maps, no /entry/fit
    plain = tmp_path / "plain.h5"
    run = run_process(mesh, plain, "--no-fit")
    assert run.returncode == 0, run.stderr
    plain_maps, plain_process = read_maps_file(plain)
    with h5py.File(plain, "r") as f:
        assert "fit" not in f["entry"]
    assert "fit_pixels" not in plain_process
    for name in maps:
        np.testing.assert_array_equal(plain_maps[name], maps[name])


def test_process_two_peaks_on_a_rocking_scan(redis_url, tmp_path):
    spec = SimulationSpec(kind="rocking", frame_shape=(16, 16), scan_dir=tmp_path / "scans", session="fit2",
                          peak_counts=2000.0)
    result = simulate(redis_url, spec)
    out = tmp_path / "maps.h5"
    run = run_process(result, out, "--fit-peaks", "2")
    assert run.returncode == 0, run.stderr
    with h5py.File(out, "r") as f:
        fit = {name: f[f"entry/fit/{name}/{name}"][()] for name in f["entry/fit"]}
    fitted = fit["iterations"] > 0
    assert {"peaks", "amplitude_2", "peak_mu_2", "fwhm_mu_2_error"} <= set(fit)
    # the simulator's curves have one peak: a second is kept for < 2 % of them
    assert np.mean(fit["peaks"][fitted] == 1) > 0.98
    np.testing.assert_array_equal(fit["peaks"][~fitted], 0)
    run = run_process(result, tmp_path / "x.h5", "--fit-peaks", "2", "--motors", "mu", "--fit-max-iterations", "0")
    assert run.returncode == 2 and "max_iterations" in run.stderr


def test_two_peaks_on_a_mesh_are_refused_before_reading(mesh, tmp_path):
    run = run_process(mesh, tmp_path / "x.h5", "--fit-peaks", "2")
    assert run.returncode == 2 and "one motor" in run.stderr
    assert not (tmp_path / "x.h5").exists()
