"""Benchmark of the per-pixel Gaussian fits (`process`'s /entry/fit) against darfix's
RockingCurves fit, on the mesh of issue 19: 21 x 21 points (mu +-0.5 deg, chi +-1.0 deg) of
256^2 frames, Poisson counts, a dark offset of 100 counts (recorded in a dark scan of the
same file) and read noise 2, a flat pedestal of 5 counts above the dark in every pixel, and
over half of the detector a 2-D Gaussian rocking curve per pixel (amplitude 200-300, centres
within ~+-0.1 deg mu / +-0.2 deg chi, sigma 0.06-0.08 deg mu / ~0.15 deg chi).

Both fits are timed in the same run on the same frames: ours through `process` (the frames
read again from the file in bands of rows, preprocessing and background as the moments),
darfix's `fit_rocking_curve_parallel` (what its RockingCurves task runs: joblib over all
cores) on the frames in memory with the dark scan's mean subtracted, in a subprocess of the
scratch venv /work/darfix-venv (`pip install darfix`) when it exists. Accuracy is over the
crystal's pixels: mean |peak - truth| and mean (fwhm - truth) per motor.

Run alone: `python bench/fits.py [--size 256] [--no-darfix]` (prints the Markdown section);
`bench/run.py` appends the same section to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dfxm_online.acquisition.geometry import MotorAxis  # noqa: E402
from dfxm_online.acquisition.model import scan_positions  # noqa: E402
from dfxm_online.gaussian import FWHM_PER_SIGMA  # noqa: E402

DARFIX_PYTHON = Path("/work/darfix-venv/bin/python")
MOTORS = (MotorAxis("mu", -0.5, 0.5, 21), MotorAxis("chi", -1.0, 1.0, 21))
DARK_FRAMES = 20

# darfix's fit of the same frames, in its own venv: the dark scan's mean subtracted (its
# background subtraction), the stack in its grid layout (chi slow, mu fast: the mesh's
# acquisition order), the default RockingCurveFitOptions
DARFIX_SCRIPT = r"""
import json, sys, time
import h5py, numpy
from darfix._core.rocking_curves import fit_rocking_curve_parallel
from darfix._processing.rocking_curve.fit_options import RockingCurveFitOptions
path, out = sys.argv[1], sys.argv[2]
with h5py.File(path, "r") as f:
    frames = f["1.1/measurement/pco"][()].astype(numpy.float32)
    dark = f["2.1/measurement/pco"][()].astype(numpy.float32).mean(axis=0)
    mu = f["1.1/instrument/positioners/mu"][()]
    chi = f["1.1/instrument/positioners/chi"][()]
data = (frames - dark).reshape(21, 21, *frames.shape[1:])
t0 = time.perf_counter()
_, maps = fit_rocking_curve_parallel(data, {"mu": mu, "chi": chi}, RockingCurveFitOptions())
seconds = time.perf_counter() - t0
numpy.savez(out, **{k.replace(" ", "_"): numpy.asarray(v, dtype=float)[..., 0] if numpy.ndim(v) == 3 else v
                    for k, v in maps.items()})
print(json.dumps({"seconds": seconds}))
"""


def make_mesh_file(path: Path, size: int = 256, seed: int = 0,
                   motors: tuple[MotorAxis, ...] = MOTORS) -> dict[str, np.ndarray]:
    """The mesh scan (1.1) and its dark scan (2.1) in a BLISS-layout file; returns the truth."""
    rng = np.random.default_rng(seed)
    h = w = size
    yy, xx = np.mgrid[0:h, 0:w] / size
    crystal = xx < 0.5  # half of the detector
    centre = np.stack([0.1 * np.sin(2 * np.pi * (1.3 * xx + 0.7 * yy)), 0.2 * np.cos(2 * np.pi * (0.9 * yy - 0.4 * xx))])
    sigma = np.stack([0.07 + 0.01 * np.sin(5 * xx + 3 * yy), 0.15 + 0.01 * np.cos(4 * yy - 2 * xx)])
    amplitude = np.where(crystal, 250 + 50 * np.sin(7 * xx) * np.cos(5 * yy), 0.0)
    positions = scan_positions(motors)
    pedestal, offset, read_noise = 5.0, 100.0, 2.0
    with h5py.File(path, "w") as f:
        for scan, title, n, pos in (("1.1", "amesh mu -0.5 0.5 20 chi -1.0 1.0 20 0.1", len(positions), positions),
                                    ("2.1", f"dark loopscan {DARK_FRAMES} 0.1", DARK_FRAMES, None)):
            entry = f.create_group(scan)
            entry["title"] = title
            stack = entry.create_dataset("measurement/pco", shape=(n, h, w), dtype=np.uint16, chunks=(1, h, w))
            positioners = entry.create_group("instrument/positioners")
            for i, axis in enumerate(motors):
                positioners[axis.name] = pos[:, i] if pos is not None else np.zeros(n)
            for k in range(n):  # one frame at a time: a 2048^2 mesh is 8 GB
                photons = 0.0
                if pos is not None:
                    z = ((pos[k][:, None, None] - centre) / sigma) ** 2
                    photons = rng.poisson(pedestal + amplitude * np.exp(-0.5 * z.sum(axis=0)))
                stack[k] = np.rint(photons + offset + rng.normal(0, read_noise, (h, w))).clip(0, 65535)
    return {"crystal": crystal, "centre": centre, "fwhm": FWHM_PER_SIGMA * sigma}


def accuracy(peaks: dict[str, np.ndarray], fwhms: dict[str, np.ndarray], truth: dict) -> dict[str, float]:
    """Mean |peak - truth| and mean (fwhm - truth) per motor over the crystal's pixels
    (the pixels a fit left NaN count as missing, reported as a fraction)."""
    out = {}
    crystal = truth["crystal"]
    for i, axis in enumerate(MOTORS):
        peak, fwhm = peaks[axis.name][crystal], fwhms[axis.name][crystal]
        ok = np.isfinite(peak) & np.isfinite(fwhm)
        out[f"peak_{axis.name}"] = float(np.mean(np.abs(peak[ok] - truth["centre"][i][crystal][ok])))
        out[f"fwhm_bias_{axis.name}"] = float(np.mean(fwhm[ok] - truth["fwhm"][i][crystal][ok]))
        out["missing"] = float(1 - ok.mean())
    return out


def bench_ours(path: Path, truth: dict, dark: bool) -> dict:
    from dfxm_online.analysis.fits import FitSettings
    from dfxm_online.config import AnalysisConfig
    from dfxm_online.offline import analyse_scan

    t0 = time.perf_counter()
    result = analyse_scan(path, "1.1", AnalysisConfig(), f"{path}::2.1" if dark else None, progress=False,
                          fit=FitSettings())
    total = time.perf_counter() - t0
    fit = result.fit_maps
    names = [a.name for a in MOTORS]
    acc = accuracy({n: fit[f"peak_{n}"] for n in names}, {n: fit[f"fwhm_{n}"] for n in names}, truth)
    converged = truth["crystal"] & (fit["converged"] == 1)
    for n in names:  # the mean |error| the standard errors predict: sqrt(2/pi) se per pixel
        acc[f"expected_{n}"] = float(np.sqrt(2 / np.pi) * np.mean(fit[f"peak_{n}_error"][converged]))
    moments = accuracy({n: result.maps[f"com_{n}"] for n in names}, {n: result.maps[f"fwhm_{n}"] for n in names}, truth)
    return {"fit_s": result.fit_info["fit_seconds"], "total_s": total, "pixels": result.fit_info["fit_pixels"],
            "converged": result.fit_info["fit_converged_fraction"],
            "background": json.loads(result.fit_info["fit_settings"])["background"],
            "accuracy": acc, "moments": moments}


def bench_darfix(path: Path, truth: dict) -> dict | None:
    if not DARFIX_PYTHON.exists():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "darfix_maps.npz"
        run = subprocess.run([str(DARFIX_PYTHON), "-c", DARFIX_SCRIPT, str(path), str(out)],
                             capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"darfix fit failed: {run.stderr[-2000:]}")
        seconds = json.loads(run.stdout.strip().splitlines()[-1])["seconds"]
        maps = dict(np.load(out))
    names = [a.name for a in MOTORS]
    acc = accuracy({n: maps[f"COM_{n}"] for n in names}, {n: maps[f"FWHM_{n}"] for n in names}, truth)
    fitted = int(np.isfinite(maps["COM_mu"]).sum())
    return {"seconds": seconds, "accuracy": acc, "pixels": fitted}


def _acc_cells(acc: dict) -> str:
    expected = (f" (errors predict {acc['expected_mu']:.4f} / {acc['expected_chi']:.4f})"
                if "expected_mu" in acc else "")
    return (f"{acc['peak_mu']:.4f} / {acc['peak_chi']:.4f}{expected} | {acc['fwhm_bias_mu']:+.4f} / "
            f"{acc['fwhm_bias_chi']:+.4f} | {100 * acc['missing']:.1f} %")


def section(size: int = 256, darfix: bool = True) -> list[str]:
    """The bench/RESULTS.md section of the fits (Markdown lines)."""
    from dfxm_online.analysis import gaussian_lm

    t0 = time.perf_counter()
    gaussian_lm.warm_up()  # numba's cache: compiled once per machine, loaded once per process
    warm = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mesh.h5"
        truth = make_mesh_file(path, size)
        runs = {label: bench_ours(path, truth, dark) for label, dark in (("with --dark", True), ("without --dark", False))}
        theirs = bench_darfix(path, truth) if darfix else None
    lines = [f"## Per-pixel Gaussian fits: 21x21 mesh of {size}x{size} frames (issue 19's case)", "",
             "Our fits: `process` defaults (the frames read again from the file in bands of rows, the "
             "moments' background and signal mask), 2 tile threads; fit time includes reading the frames. "
             "darfix 7.0.2: `fit_rocking_curve_parallel` (its RockingCurves task; joblib on all cores) on "
             "the frames in memory minus the dark scan's mean, default options. Accuracy over the crystal "
             "(half the detector): mean |peak - truth| (deg, mu / chi), mean fwhm - truth (deg), pixels "
             f"of the crystal left NaN. Kernel load (numba cache) {warm:.2f} s, not included.", "",
             "| fit | background | pixels fitted | converged | fit time (s) | peak error | fwhm bias | crystal missing |",
             "|---|---|---|---|---|---|---|---|"]
    for label, r in runs.items():
        lines.append(f"| ours, {label} | {r['background']} | {r['pixels']} | {100 * r['converged']:.1f} % "
                     f"| {r['fit_s']:.2f} | {_acc_cells(r['accuracy'])} |")
        lines.append(f"| (moments of the same run) | {r['background']} | | | {r['total_s'] - r['fit_s']:.2f} "
                     f"| {_acc_cells(r['moments'])} |")
    if theirs is None:
        lines.append("| darfix | skipped: no /work/darfix-venv (`python3 -m venv /work/darfix-venv && "
                     "/work/darfix-venv/bin/pip install darfix`) | | | | | | |")
    else:
        lines.append(f"| darfix RockingCurves | dark mean, then curve minimum | {theirs['pixels']} | | "
                     f"{theirs['seconds']:.1f} | {_acc_cells(theirs['accuracy'])} |")
        ratios = ", ".join(f"{theirs['seconds'] / r['fit_s']:.0f}x {label} ({r['pixels']} pixels fitted)"
                           for label, r in runs.items())
        lines += ["", f"Speed-up over darfix ({theirs['pixels']} pixels fitted): {ratios}."]
    return lines + [""]


LARGE_MOTORS = (MotorAxis("mu", -0.5, 0.5, 26), MotorAxis("chi", -1.0, 1.0, 37))

# `process` of the large mesh in a process of its own, so that its peak RSS is its own
LARGE_SCRIPT = r"""
import json, sys, time
from dfxm_online.analysis.fits import FitSettings
from dfxm_online.config import AnalysisConfig
from dfxm_online.offline import analyse_scan
path, dark = sys.argv[1], sys.argv[2] == "dark"
t0 = time.perf_counter()
r = analyse_scan(path, "1.1", AnalysisConfig(), f"{path}::2.1" if dark else None, progress=False, fit=FitSettings())
total = time.perf_counter() - t0
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
print(json.dumps({"total_s": total, "fit_s": r.fit_info["fit_seconds"], "pixels": r.fit_info["fit_pixels"],
                  "converged": r.fit_info["fit_converged_fraction"], "peak_rss_gb": hwm / 2**20}))
"""


def large_case(path: Path, dark: bool) -> dict:
    """`process` (moments + fits) of the 962-frame (26 x 37) 2048^2 mesh in `path`."""
    run = subprocess.run([sys.executable, "-c", LARGE_SCRIPT, str(path), "dark" if dark else "edges"],
                         capture_output=True, text=True, cwd=ROOT)
    if run.returncode != 0:
        raise RuntimeError(run.stderr[-2000:])
    return json.loads(run.stdout.strip().splitlines()[-1])


def mesh_curves(n_pixels: int, seed: int = 0, motors: tuple[MotorAxis, ...] = LARGE_MOTORS):
    """Curves (N, P) uint16 of `n_pixels` crystal pixels of the bench mesh (the sample and
    noise of `make_mesh_file`, pixels spread over the crystal), without a file: the dark
    offset already subtracted (offset 0), the pedestal's variance as the noise variance, and
    a start like the moments' (position off by up to a step, width by up to 25 %)."""
    rng = np.random.default_rng(seed)
    yy, xx = rng.uniform(0, 1, n_pixels), rng.uniform(0, 0.5, n_pixels)
    centre = np.stack([0.1 * np.sin(2 * np.pi * (1.3 * xx + 0.7 * yy)), 0.2 * np.cos(2 * np.pi * (0.9 * yy - 0.4 * xx))])
    sigma = np.stack([0.07 + 0.01 * np.sin(5 * xx + 3 * yy), 0.15 + 0.01 * np.cos(4 * yy - 2 * xx)])
    amplitude = 250 + 50 * np.sin(7 * xx) * np.cos(5 * yy)
    positions = scan_positions(motors)
    z = ((positions[:, :, None] - centre[None]) / sigma[None]) ** 2
    photons = rng.poisson(5.0 + amplitude * np.exp(-0.5 * z.sum(axis=1)))
    curves = np.rint(photons + rng.normal(0, 2.0, photons.shape)).clip(0, 65535).astype(np.uint16)
    step = np.array([(a.stop - a.start) / (a.npoints - 1) for a in motors])
    start_peak = centre + step[:, None] * rng.uniform(-1, 1, centre.shape)
    start_sigma = sigma * rng.uniform(0.8, 1.25, sigma.shape)
    return positions, curves, start_peak, start_sigma, np.full(n_pixels, 5.0 + 4.0)


def kernel_section(n_pixels: int = 4096, rounds: int = 7, against: str | None = None) -> list[str]:
    """One thread, us per pixel of `gaussian_lm.fit_block` on the 26 x 37 mesh's curves,
    alternating in one process (median of `rounds`): each peak on its support (the default)
    and over every frame (q_cut = inf), and with `against` a git revision whose fit_block
    (its signature before the support: no q_cut) runs beside them."""
    import importlib.util
    import platform

    from dfxm_online.analysis import gaussian_lm
    from dfxm_online.analysis.fits import FitStart, ReducedAxes, _reduced_start

    names = [a.name for a in LARGE_MOTORS]
    positions, curves, peak, sigma, noise = mesh_curves(n_pixels)
    axes = ReducedAxes.of_positions(names, positions)
    u = axes.reduce(positions)
    theta0 = _reduced_start(FitStart(peak, sigma, np.zeros((1, n_pixels))), axes, u, 1)
    args = (curves, np.zeros(n_pixels), noise, u, theta0, 2, 1, True, 100, 1e-2)
    kernels = {"support (default)": lambda *o: gaussian_lm.fit_block(*args, gaussian_lm.Q_CUT, *o, 0, n_pixels),
               "every frame (q_cut = inf)": lambda *o: gaussian_lm.fit_block(*args, np.inf, *o, 0, n_pixels)}
    if against:
        with tempfile.TemporaryDirectory() as tmp:
            source = subprocess.run(["git", "show", f"{against}:dfxm_online/analysis/gaussian_lm.py"], cwd=ROOT,
                                    capture_output=True, text=True, check=True).stdout
            path = Path(tmp) / "gaussian_lm_before.py"
            path.write_text(source)
            spec = importlib.util.spec_from_file_location("gaussian_lm_before", path)
            before = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(before)
            kernels[f"before ({against})"] = lambda *o: before.fit_block(*args, *o, 0, n_pixels)
            return _time_kernels(kernels, n_pixels, rounds, platform.machine())
    return _time_kernels(kernels, n_pixels, rounds, platform.machine())


def _time_kernels(kernels: dict, n_pixels: int, rounds: int, machine: str) -> list[str]:
    import os

    def run(kernel):
        outs = (np.empty((7, n_pixels)), np.empty((7, n_pixels)), np.empty(n_pixels), np.empty(n_pixels, np.uint8),
                np.empty(n_pixels, np.int32))
        t0 = time.perf_counter()
        kernel(*outs)
        return time.perf_counter() - t0, outs

    results = {k: run(f)[1] for k, f in kernels.items()}  # compiled or loaded from numba's cache first
    times: dict[str, list[float]] = {k: [] for k in kernels}
    for _ in range(rounds):
        for k, f in kernels.items():
            times[k].append(run(f)[0] / n_pixels * 1e6)
    first = next(iter(kernels))
    reference = results[first]
    target = os.environ.get("NUMBA_CPU_NAME", "host")
    lines = [f"fit_block, one thread, {n_pixels} pixels of the 26 x 37 mesh (962 frames), {machine}, numba target "
             f"{target}, median (min-max) of {rounds} alternating rounds:", "",
             "| kernel | us per pixel | iterations | converged | max abs(diff) / standard error vs the first row |",
             "|---|---|---|---|---|"]
    for k, t in times.items():
        out = results[k]
        with np.errstate(invalid="ignore"):
            diff = np.nanmax(np.abs(out[0] - reference[0]) / reference[1])
        lines.append(f"| {k} | {np.median(t):.1f} ({min(t):.1f}-{max(t):.1f}) | {out[4].mean():.2f} | "
                     f"{100 * out[3].mean():.2f} % | {diff:.1e} |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--no-darfix", action="store_true")
    parser.add_argument("--large", type=Path, metavar="FILE",
                        help="also time process on the 26 x 37 mesh of 2048^2 frames in FILE (made there if "
                             "missing: 8 GB)")
    parser.add_argument("--kernel", action="store_true",
                        help="only time the fit kernel on the 26 x 37 mesh's curves (support / every frame)")
    parser.add_argument("--against", metavar="REV", help="with --kernel: also the fit kernel of this git revision")
    args = parser.parse_args()
    if args.kernel:
        print("\n".join(kernel_section(against=args.against)))
        return
    print("\n".join(section(args.size, not args.no_darfix)))
    if args.large:
        if not args.large.exists():
            make_mesh_file(args.large, 2048, motors=LARGE_MOTORS)
        for dark in (False, True):
            r = large_case(args.large, dark)
            print(f"| 26x37 mesh, 2048^2, {'with' if dark else 'without'} --dark | {r['pixels']} pixels fitted, "
                  f"{100 * r['converged']:.1f} % converged | fit {r['fit_s']:.1f} s (reading included) | "
                  f"process {r['total_s']:.1f} s | peak RSS {r['peak_rss_gb']:.2f} GiB |")


if __name__ == "__main__":
    main()
