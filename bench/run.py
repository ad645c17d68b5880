"""Benchmarks (make bench): accumulator throughput and end-to-end frames/s through the store.

Writes a Markdown table to --out (bench/RESULTS.md). Figures are measured on the machine it
runs on; nothing here is asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from threadpoolctl import threadpool_info

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dfxm_online.acquisition.geometry import MotorAxis, ScanGeometry  # noqa: E402
from dfxm_online.acquisition.publisher import ScanDescription, ScanPublisher  # noqa: E402
from dfxm_online.config import AnalysisConfig  # noqa: E402
from dfxm_online.gaussian import FWHM_PER_SIGMA  # noqa: E402
from dfxm_online.online.accumulators.background import EdgeBaseline  # noqa: E402
from dfxm_online.online.accumulators.moments import PowerSums, reduced_coordinates  # noqa: E402
from dfxm_online.online.accumulators.projections import Projections  # noqa: E402
from dfxm_online.online.pipeline import ScanPipeline  # noqa: E402
from dfxm_online.publish.layout import maps_path, scan_folder  # noqa: E402
from dfxm_online.store import EmbeddedStore  # noqa: E402


def frames_per_second(update, frames, positions, batch: int, repeat: int) -> float:
    """Median over `repeat` passes over `frames` (after a one-batch warm-up): a single pass
    on this VM swings by +-20 %, mostly the first one after the warm-up."""
    n = frames.shape[0]
    update(frames[:batch], {k: v[:batch] for k, v in positions.items()})  # warm-up
    rates = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for s in range(0, n, batch):
            update(frames[s : s + batch], {k: v[s : s + batch] for k, v in positions.items()})
        rates.append(n / (time.perf_counter() - t0))
    return float(np.median(rates))


#: passes over the frames per accumulator figure (their median is reported)
PASSES = 5


def synthetic_mesh(size: int, n_frames: int) -> tuple[np.ndarray, tuple[MotorAxis, MotorAxis], dict]:
    """The accumulator benchmarks' scan: `n_frames` uint16 frames of size x size (counts
    90-4000) on an 8 x 8 mesh of mu and chi, repeated; (frames, axes, positions)."""
    rng = np.random.default_rng(0)
    frames = rng.integers(90, 4000, size=(n_frames, size, size), dtype=np.uint16)
    axes = (MotorAxis("mu", -0.4, 0.4, 8), MotorAxis("chi", -1, 1, 8))
    mu = np.tile(np.linspace(-0.4, 0.4, 8), n_frames // 8 + 1)[:n_frames]
    chi = np.repeat(np.linspace(-1, 1, 8), n_frames // 8 + 1)[:n_frames]
    return frames, axes, {"mu": mu, "chi": chi}


def bench_accumulators(size: int, n_frames: int, batch: int) -> list[tuple[str, float]]:
    frames, axes, pos = synthetic_mesh(size, n_frames)
    p = size * size
    rows = []
    ps = PowerSums(axes, p)
    rows.append(("PowerSums, 2 motors, order 4 (15 sums), float64", frames_per_second(ps.update, frames, pos, batch, PASSES)))
    ps32 = PowerSums(axes, p, precision="float32")
    rows.append(("PowerSums, same, float32 batch products", frames_per_second(ps32.update, frames, pos, batch, PASSES)))
    eb = EdgeBaseline(axes, p)
    rows.append(("EdgeBaseline (edge frames only)", frames_per_second(eb.update, frames, pos, batch, PASSES)))
    pr = Projections(p, n_frames)
    rows.append(("Projections (sum, max, half sums)", frames_per_second(pr.update, frames, pos, batch, PASSES)))
    pipe = ScanPipeline(ScanGeometry(axes, n_frames, "det"), (size, size))
    rows.append(("ScanPipeline.update, defaults (moments + edge baseline + projections)",
                 frames_per_second(pipe.update, frames, pos, batch, PASSES)))
    daemon_batch = AnalysisConfig().frames_per_batch((size, size), frames.dtype)
    if daemon_batch != batch:  # the daemon's batches at this frame size (batch_mb)
        pipe_b = ScanPipeline(ScanGeometry(axes, n_frames, "det"), (size, size))
        rows.append((f"ScanPipeline.update, defaults, batches of {daemon_batch} (the daemon's at this size: batch_mb)",
                     frames_per_second(pipe_b.update, frames, pos, daemon_batch, PASSES)))
        del pipe_b
    pipe32 = ScanPipeline(ScanGeometry(axes, n_frames, "det"), (size, size), AnalysisConfig(precision="float32"))
    rows.append(("ScanPipeline.update, defaults with precision float32",
                 frames_per_second(pipe32.update, frames, pos, batch, PASSES)))
    t0 = time.perf_counter()
    maps = pipe.snapshot()
    rows.append(("ScanPipeline.snapshot (maps), seconds", time.perf_counter() - t0))
    rows += bench_window(maps, axes, frames, pos, batch)
    rows += bench_live_updates(pipe, frames, pos)
    rows += bench_live_versions(pipe)
    rows.append(("write_quicklook of these maps (the final PNG), seconds", bench_quicklook(maps)))
    return rows


def bench_live_updates(pipe: ScanPipeline, frames: np.ndarray, pos: dict) -> list[tuple[str, float]]:
    """The daemon's full-resolution updates of a live scan: its one- or two-frame batches one
    by one, against the same gathered 8 at a time (`behind_preview.GatheredBatches`): an
    update reads and writes every running sum whatever its frames."""
    n = min(64, len(frames))
    live, live_pos = frames[:n], {k: v[:n] for k, v in pos.items()}
    return [(f"ScanPipeline.update, batches of {b} (the daemon's full-resolution updates, {how})",
             frames_per_second(pipe.update, live, live_pos, b, 2))
            for b, how in ((1, "live batches one by one"), (8, "gathered"))]


def bench_live_versions(pipe: ScanPipeline, binning: int = 12, versions: int = 20) -> list[tuple[str, float]]:
    """Milliseconds to write one live version of this scan's maps at `binning` (the live
    binning a 2048^2 two-motor scan settles on with a workflow beside it): in full
    (`write_maps_file`) and from the previous version's file (`VersionWriter`), alternately,
    the frame count changing as in a running scan; median over `versions` of each."""
    import dataclasses

    from dfxm_online.online.maps import MapBuffers
    from dfxm_online.publish.nexus import ProcessInfo, write_maps_file
    from dfxm_online.publish.version_template import VersionWriter

    maps = pipe.snapshot(np.float32, binning, MapBuffers())
    info = ProcessInfo(state="running", frames_expected=1000, scan_key="esrf:scan:bench",
                       config=AnalysisConfig().model_dump_json(), extra={"map_binning": binning, "motors": "mu, chi"})
    writer = VersionWriter()
    full, template = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(versions + 1):
            info = dataclasses.replace(info, frames_processed=k)
            t0 = time.perf_counter()
            write_maps_file(Path(tmp) / "full.h5", maps, info, "com_mu", "bench", maps.axes, durable=False)
            t1 = time.perf_counter()
            writer.write(Path(tmp) / "template.h5", maps, info, "com_mu", "bench", maps.axes, durable=False)
            full.append(t1 - t0)
            template.append(time.perf_counter() - t1)
    assert writer.from_template == versions
    shape = "x".join(map(str, maps["com_mu"].shape))
    return [(f"a live version's file, {len(maps)} maps of {shape} ({binning}x{binning}), ms: written in full",
             1e3 * float(np.median(full[1:]))),
            (f"a live version's file, {len(maps)} maps of {shape}, ms: from the previous version's file",
             1e3 * float(np.median(template[1:])))]


def bench_quicklook(maps) -> float:
    """Seconds to draw and write the quick-look PNG of `maps` (matplotlib loaded first)."""
    from dfxm_online.publish.quicklook import write_quicklook

    key_axes = maps.axes.get("mosaicity_key")
    with tempfile.TemporaryDirectory() as tmp:
        small = {name: values[:16, :16] for name, values in maps.items() if name != "mosaicity_key"}
        write_quicklook({**small, "mosaicity_key": maps["mosaicity_key"]}, ["mu", "chi"], Path(tmp) / "w.png",
                        "bench", key_axes)
        t0 = time.perf_counter()
        write_quicklook(maps, ["mu", "chi"], Path(tmp) / "q.png", "bench", key_axes)
        return time.perf_counter() - t0


def bench_window(maps, axes, frames, pos, batch: int) -> list[tuple[str, float]]:
    """A pass of the final maps' moment window (`ScanPipeline.windowed_maps` makes one per
    `moment_window_passes`): its coefficients from the maps, then the windowed power sums on
    the numba pass (the step fused into it) and on the numpy floor (the step, then the sums
    of a float32 copy, a few frames at a time)."""
    from dfxm_online.online.moment_window import MomentWindow

    t0 = time.perf_counter()
    MomentWindow.from_maps(maps, axes, AnalysisConfig().moment_window)
    rows = [("MomentWindow.from_maps (a window's coefficients), seconds", time.perf_counter() - t0)]
    labels = {"window numba": "the step in the numba pass", "window numpy floor": "numpy floor: the step, then the sums"}
    for name, run in window_variants(maps, axes, frames, pos, batch).items():
        rows.append((f"MomentWindow.add_to, 2 motors (windowed power sums): {labels[name]}",
                     median_rate(run, len(frames))))
    return rows + bench_grain_window(axes, frames, pos, batch)


def median_rate(run, n_frames: int) -> float:
    """Frames/s of `run()` over `n_frames` frames: the median of PASSES runs after a first
    one (numba's compilation, the memory's first touch)."""
    run()
    rates = []
    for _ in range(PASSES):
        t0 = time.perf_counter()
        run()
        rates.append(n_frames / (time.perf_counter() - t0))
    return float(np.median(rates))


def grain_maps(size: int, axes: tuple[MotorAxis, MotorAxis]) -> dict[str, np.ndarray]:
    """Moment maps of a crystal of sub-grains 64 x 64 pixels each over half of the field of
    view (the other half without signal: NaN), each sub-grain its own centre within the
    middle 3/4 of the scanned range and sigmas of 0.5-1 step: the windows of a real mosaic,
    where the synthetic frames' maps make every window span the whole scan."""
    rng = np.random.default_rng(1)
    grains = (size + 63) // 64

    def field(values: np.ndarray) -> np.ndarray:
        return np.kron(values, np.ones((64, 64)))[:size, :size]

    maps = {}
    for axis in axes:
        half, step = 0.375 * abs(axis.high - axis.low), abs(axis.scale)
        maps[f"com_{axis.name}"] = field(rng.uniform(axis.centre - half, axis.centre + half, (grains, grains)))
        maps[f"fwhm_{axis.name}"] = field(rng.uniform(0.5, 1.0, (grains, grains))) * step * FWHM_PER_SIGMA
    maps[f"cov_{axes[0].name}_{axes[1].name}"] = np.zeros((size, size))
    maps[f"com_{axes[0].name}"][field(rng.random((grains, grains))) < 0.5] = np.nan
    return maps


def bench_grain_window(axes, frames, pos, batch: int) -> list[tuple[str, float]]:
    """The windowed pass of `grain_maps`' windows (numba): skipping the frames outside every
    window of a sub-tile (`MomentWindow.boxes`) against every frame (boxes open)."""
    import dataclasses

    from dfxm_online.online import kernels
    from dfxm_online.online.moment_window import MomentWindow

    window = MomentWindow.from_maps(grain_maps(frames.shape[-1], axes), axes, AnalysisConfig().moment_window)
    every = dataclasses.replace(window, boxes=np.stack([np.full(window.boxes.shape[::2], -np.inf),
                                                        np.full(window.boxes.shape[::2], np.inf)], axis=1))
    sums = PowerSums(axes, window.n_pixels)
    offset = np.zeros(window.n_pixels)
    rows = []
    for label, w in (("frames outside a sub-tile's windows skipped", window), ("every frame (boxes open)", every)):
        def run(w: MomentWindow = w) -> None:
            with kernels.use_backend("numba"):
                for s in range(0, len(frames), batch):
                    w.add_to(sums, frames[s:s + batch], {k: v[s:s + batch] for k, v in pos.items()}, offset)

        rows.append((f"MomentWindow.add_to, sub-grains' windows (half the pixels none): {label}",
                     median_rate(run, len(frames))))
    return rows

#: code paths the compute core is measured on, each in a process of its own (numba's target is
#: process-wide): (label, environment); DFXM_KERNELS=numba so that the generic target's numba
#: pass is measured too, next to the numpy floor that `auto` would take there
CODE_PATHS = (("host", {}), ("AVX2 (NUMBA_CPU_NAME=haswell)", {"NUMBA_CPU_NAME": "haswell"}),
              ("generic (NUMBA_CPU_NAME=generic)", {"NUMBA_CPU_NAME": "generic"}))


def code_paths() -> list[tuple[str, dict]]:
    """CODE_PATHS, and on an AVX-512 host whose kernels take 512-bit vectors the same CPU with
    LLVM's 256-bit preference (its name and features in the environment, as a user who names
    the target gets)."""
    from numba.core.codegen import get_host_cpu_features

    from dfxm_online.online import kernels

    paths = list(CODE_PATHS)
    if kernels.wide_vectors():
        name, _ = kernels.numba_target()
        paths.insert(1, (f"AVX-512, 256-bit vectors (NUMBA_CPU_NAME={name})",
                         {"NUMBA_CPU_NAME": name, "NUMBA_CPU_FEATURES": get_host_cpu_features()}))
    return paths


#: OpenBLAS kernels (OPENBLAS_CORETYPE) of a CPU of each forced numba target's kind: numpy's
#: OpenBLAS picks its kernels for the real CPU, so the product beside a forced AVX2 or
#: generic target runs AVX-512 code here; an AVX2 machine's product runs Haswell kernels
#: (AMD's Zen too), an SSE4.2 machine's Nehalem ones and an older SSE3 one's Prescott ones
#: (which OpenBLAS names "Katmai"). Measured in a process of its own each, beside the row.
PATH_BLAS = {"haswell": ("Haswell",), "generic": ("Nehalem", "Prescott")}

#: rounds of the compute-core measurement; each round runs every variant once, alternating
CORE_ROUNDS = 5
#: frames per round of the compute-core measurement (2048^2 uint16: 1 GiB)
CORE_FRAMES = 128


def numba_version() -> str:
    import numba

    return numba.__version__


def numpy_tiled_product(sums: np.ndarray, weights: np.ndarray, frames: np.ndarray) -> None:
    """The baseline of issue 20: the dense sums as a tiled float64 `w @ x` (16k-pixel tiles,
    one BLAS thread per tile thread), nothing else."""
    from dfxm_online.online.tiles import TILE_PIXELS, for_each_tile

    flat = frames.reshape(len(frames), -1)
    wt = np.ascontiguousarray(weights.T)

    def work(a: int, b: int) -> None:
        sums[:, a:b] += wt @ flat[:, a:b].astype(np.float64)

    for_each_tile(flat.shape[1], work, tile=TILE_PIXELS)


def bench_compute_core(size: int, n_frames: int, batch: int, product_only: bool = False) -> dict:
    """This process's code path: the compute core (ScanPipeline.update with the default
    preprocessing and accumulators: 2-motor moments to 4th order, edge baseline,
    projections) on the numba pass and on the numpy floor, and the numpy tiled product of the
    15 moment sums alone, in alternating rounds (frames/s: median, min-max); then a pass of the
    final maps' moment window (`MomentWindow.add_to`) on the numba pass and on the numpy
    floor; `product_only`: the product alone (under another OpenBLAS kernel, PATH_BLAS)."""
    from dfxm_online.online import kernels
    from dfxm_online.online.tiles import n_threads

    frames, axes, pos = synthetic_mesh(size, n_frames)
    geometry = ScanGeometry(axes, n_frames, "det")
    pipes = {"numba": ScanPipeline(geometry, (size, size)), "numpy": ScanPipeline(geometry, (size, size))}
    mono = pipes["numba"].moments.monomials(reduced_coordinates(axes, pos))
    sums = np.zeros((mono.shape[1], size * size))

    def core(backend: str) -> None:
        with kernels.use_backend(backend):
            for s in range(0, n_frames, batch):
                pipes[backend].update(frames[s:s + batch], {k: v[s:s + batch] for k, v in pos.items()})

    def product() -> None:
        for s in range(0, n_frames, batch):
            numpy_tiled_product(sums, mono[s:s + batch], frames[s:s + batch])

    variants = {"numba": lambda: core("numba"), "numpy floor": lambda: core("numpy"), "numpy product": product}
    if product_only:
        variants = {"numpy product": product}
    for run in variants.values():  # compile, fault the memory in
        run()
    if not product_only:
        variants |= window_variants(pipes["numba"].snapshot(), axes, frames, pos, batch)
        for name in ("window numba", "window numpy floor"):
            variants[name]()
    rates: dict[str, list[float]] = {k: [] for k in variants}
    # frames per second of this process's CPU time over the tile threads: on a machine shared
    # with other work the wall-clock rate measures the share of the cores it got as well
    cpu_rates: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(CORE_ROUNDS):
        for name, run in variants.items():
            t0, c0 = time.perf_counter(), time.process_time()
            run()
            rates[name].append(n_frames / (time.perf_counter() - t0))
            cpu_rates[name].append(n_frames * n_threads() / (time.process_time() - c0))
    snapshot: list[float] = []
    if not product_only:
        # the snapshot's per-pixel kernels on this target (all numba: moment maps of the sums,
        # pooled edge baseline, order statistics, mosaicity colours, KAM), warm
        pipes["numba"].snapshot()
        for _ in range(CORE_ROUNDS):
            t0 = time.perf_counter()
            pipes["numba"].snapshot()
            snapshot.append(time.perf_counter() - t0)
    name, _ = kernels.numba_target()
    blas = [i.get("architecture") for i in threadpool_info() if i.get("user_api") == "blas"]
    return {"target": name, "snapshot": (float(np.median(snapshot)), float(min(snapshot)), float(max(snapshot)))
            if snapshot else None, "instruction_set": kernels.instruction_set(), "auto": kernels.frame_pass_backend()
            if kernels.requested_backend() == "auto" else None, "blas": blas[0] if blas else None,
            **{k: (float(np.median(v)), float(min(v)), float(max(v))) for k, v in rates.items()},
            "cpu": {k: float(np.median(v)) for k, v in cpu_rates.items()}}


def window_variants(maps, axes, frames, pos, batch: int) -> dict:
    """A pass of the final maps' moment window over `frames` (`MomentWindow.add_to`, the
    defaults' radius) on the numba pass and on the numpy floor, as compute-core variants."""
    from dfxm_online.online import kernels
    from dfxm_online.online.moment_window import MomentWindow

    window = MomentWindow.from_maps(maps, axes, AnalysisConfig().moment_window)
    sums = PowerSums(axes, window.n_pixels)
    offset = np.zeros(window.n_pixels)

    def windowed(backend: str) -> None:
        with kernels.use_backend(backend):
            for s in range(0, len(frames), batch):
                window.add_to(sums, frames[s:s + batch], {k: v[s:s + batch] for k, v in pos.items()}, offset)

    return {"window numba": lambda: windowed("numba"), "window numpy floor": lambda: windowed("numpy")}


def _core_child(size: int, n_frames: int, batch: int, env: dict, product_only: bool = False) -> dict | str:
    """One compute-core child's JSON result, or the last line of its error."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_CPU", "OPENBLAS_CORETYPE"))}
    child_env.update(env)
    child_env["DFXM_KERNELS"] = "auto"
    flag = "--product-child" if product_only else "--compute-core-child"
    run = subprocess.run([sys.executable, str(Path(__file__)), flag, str(size), str(n_frames), str(batch)],
                         env=child_env, capture_output=True, text=True)
    if run.returncode != 0:
        return run.stderr.strip().splitlines()[-1] if run.stderr.strip() else "?"
    return json.loads(run.stdout.strip().splitlines()[-1])


def compute_core_paths(size: int, n_frames: int, batch: int) -> list[str]:
    """Markdown rows of the compute core on each code path (a subprocess each)."""
    rows = []
    for label, env in code_paths():
        r = _core_child(size, n_frames, batch, env)
        if isinstance(r, str):
            rows.append(f"| {label} | failed: {r} | | | | | | | | |")
            continue
        print(json.dumps({"path": label, **r}), flush=True)

        def fps(v: list[float]) -> str:
            return f"{v[0]:.0f} ({v[1]:.0f}-{v[2]:.0f})"

        chosen = "numba" if r["auto"] == "numba" else "numpy floor"
        cpu = r["cpu"]
        own = []
        for coretype in PATH_BLAS.get(env.get("NUMBA_CPU_NAME", ""), ()):
            b = _core_child(size, n_frames, batch, {**env, "OPENBLAS_CORETYPE": coretype}, product_only=True)
            if isinstance(b, str):
                own.append(f"{coretype}: failed ({b})")
                continue
            print(json.dumps({"path": label, "OPENBLAS_CORETYPE": coretype, **b}), flush=True)
            own.append(f"{coretype} ({b['blas']}): {fps(b['numpy product'])}, "
                       f"{r['auto']} {r[chosen][0] / b['numpy product'][0]:.2f}x")
        rows.append(f"| {label} | {r['target']} ({r['instruction_set']}) | {fps(r['numba'])} | {fps(r['numpy floor'])} "
                    f"| {fps(r['numpy product'])} | {r['auto']}: {r[chosen][0] / r['numpy product'][0]:.2f}x "
                    f"| {'; '.join(own) or '(the same CPU)'} "
                    f"| {cpu['numba']:.0f} / {cpu['numpy floor']:.0f} / {cpu['numpy product']:.0f}: "
                    f"{cpu[chosen] / cpu['numpy product']:.2f}x "
                    f"| {fps(r['window numba'])} / {fps(r['window numpy floor'])} "
                    f"| {r['snapshot'][0]:.2f} ({r['snapshot'][1]:.2f}-{r['snapshot'][2]:.2f}) |")
    return rows


def cpu_description() -> str:
    """The CPU model and its SIMD flags (from /proc/cpuinfo), for the top of RESULTS.md."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = value.split()
                break
    except OSError:
        pass
    simd = [f for f in flags if f.startswith(("sse", "ssse", "avx", "fma", "amx"))]
    from dfxm_online.online.kernels import l2_cache_bytes
    from dfxm_online.online.kernels.frame_pass import XS_BYTES

    l2 = l2_cache_bytes()
    cache = f"L2 {l2 // 1024} KB per core" if l2 else "L2 size unknown"
    return (f"{model}; SIMD flags: {' '.join(simd) or 'unknown'}; {cache} "
            f"(the frame pass's sub-tile: {XS_BYTES // 1024} KB)")


def wait_state(path: Path, timeout: float) -> dict:
    """The process fields of the maps file at `path` once its scan is no longer running.

    Only those fields are read: reading every map each 20 ms (~0.3 GB at 2048^2, two
    motors) took CPU from the daemon being measured."""
    import h5py

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with h5py.File(path, "r") as f:
                process = {name: dset[()] for name, dset in f["entry/process"].items()
                           if isinstance(dset, h5py.Dataset)}  # not the post_scan record (a group)
            process = {k: v.decode() if isinstance(v, bytes) else v for k, v in process.items()}
            if process.get("state") in ("complete", "aborted", "failed"):
                return process
        except (OSError, KeyError):  # not there yet, or swapped while being opened
            pass
        time.sleep(0.02)
    raise TimeoutError(f"{path} not complete within {timeout} s")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(port: int, path: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
        return reply.read()


def wait_status(port: int, done, timeout: float, what: str) -> dict:
    """The daemon's /status once `done(status)` holds (polled; a daemon not listening yet
    counts as not done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = json.loads(scrape(port, "/status"))
            if done(status):
                return status
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what} within {timeout} s")


def wait_connected(port: int, timeout: float = 120.0) -> None:
    """Until the daemon's /status says it follows the store. A fixed 2 s sleep was not
    always enough: late in a full run (GBs of Lima files being written back) a daemon took
    longer to start, missed a 1 s warm-up scan and the run waited for its file in vain."""
    wait_status(port, lambda status: status.get("store_connected"), timeout,
                f"the daemon on port {port} did not connect to the store")


def warm_up(url: str, workdir: Path, out: Path, size: int, image_mode: str, pool: np.ndarray,
            number: int, motors: int = 1) -> None:
    """A scan of `size` frames (over two batches) processed to its final file by the
    running daemon."""
    from blissdata.redis_engine.store import DataStore

    n = 140
    specs, positions, title = scan_motors(n, motors)
    desc = ScanDescription(
        session="warmup", number=number, name=title.split()[0], title=title,
        filename=workdir / "scans" / f"warmup_{number}.h5", detector="pco",
        frame_shape=(size, size), npoints=n, motors=specs,
    )
    pub = ScanPublisher(DataStore(url), desc, image_mode, frames_per_file=10)
    pub.start()
    for s in range(n):
        pub.publish_points({m[0]: positions[s : s + 1, i] for i, m in enumerate(specs)}, pool[s % len(pool)][None])
    pub.finish()
    wait_state(maps_file(out, desc), 300)


def maps_file(out: Path, desc: ScanDescription) -> Path:
    """Where the daemon writes the maps of a scan published with `desc` (publish/layout.py)."""
    return maps_path(scan_folder(out, desc.session, str(desc.filename)), desc.name, desc.number)


def scan_motors(n_frames: int, motors: int) -> tuple[list[tuple[str, float, float, int]], np.ndarray, str]:
    """The motors of a benchmark scan (one: an ascan of mu; two: a mesh of mu, 20 points,
    by chi), the (n_frames, motors) positions (mu fastest) and a BLISS-like title."""
    if motors == 1:
        specs = [("mu", -1.0, 1.0, n_frames)]
        return specs, np.linspace(-1, 1, n_frames)[:, None], f"ascan mu -1 1 {n_frames - 1} 0.01"
    n_mu = 20
    n_chi = max(1, n_frames // n_mu)
    if n_mu * n_chi != n_frames:
        raise ValueError(f"a two-motor benchmark scan has a multiple of {n_mu} frames")
    specs = [("mu", -1.0, 1.0, n_mu), ("chi", -2.0, 2.0, n_chi)]
    mu, chi = np.meshgrid(np.linspace(-1, 1, n_mu), np.linspace(-2, 2, n_chi))
    positions = np.stack([mu.reshape(-1), chi.reshape(-1)], axis=1)
    return specs, positions, f"amesh mu -1 1 {n_mu - 1} chi -2 2 {n_chi - 1} 0.01"


def write_binning_config(workdir: Path, factor: int) -> Path:
    """A daemon configuration that bins every frame factor x factor (sum) before the
    accumulators: maps of (size / factor)^2 pixels."""
    path = workdir / f"binning_{factor}.toml"
    path.write_text(f'[analysis]\npreprocess = [{{step = "binning", factor = {factor}}}]\n')
    return path


def metric_sums(text: str) -> dict[str, float]:
    """`<name>_sum` and `<name>_count` values of the daemon's histograms (prometheus text)."""
    out = {}
    for line in text.splitlines():
        if line.startswith("dfxm_") and ("_sum " in line or "_count " in line):
            name, value = line.split()
            out[name] = float(value)
    return out


class StatusWatch:
    """Polls the daemon's /status every 20 ms: when did the scan show up, and when did its
    last frame get processed."""

    def __init__(self, port: int, n_frames: int, number: int) -> None:
        import threading

        self.port, self.n_frames, self.number = port, n_frames, number
        self.seen_at: float | None = None  # when /status first lists a scan
        self.done_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                scans = json.loads(scrape(self.port, "/status"))["scans"]
            except OSError:
                continue
            # this benchmark's scan (not a warm-up scan of the same daemon)
            scans = {k: v for k, v in scans.items() if v["session"] == "bench" and v["number"] == self.number}
            if scans and self.seen_at is None:
                self.seen_at = time.monotonic()
            if any(s["frames_processed"] >= self.n_frames for s in scans.values()):
                self.done_at = time.monotonic()
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


#: extra flags of the daemon processes (--daemon-args)
DAEMON_ARGS: list[str] = []
DAEMON_LOG_LEVEL = ["WARNING"]


def clear_run(url: str, workdir: Path) -> None:
    """Remove what a run left: its scans in the store (deleted the blissdata way: they
    expire 10 s later) and its files (scans, Lima files, maps).

    Kept, a full run piled up ~20 GB of Lima and maps files in the page cache and ~6 GB of
    frames in Redis on this 24 GiB machine, and the last runs (the latency ones) paid for
    the kernel's reclaim: 2048^2 in-service latency p99 0.84-1.37 s at the end of a full
    run against 0.43-0.62 s alone."""
    import shutil

    from blissdata.redis_engine.store import DataStore

    store = DataStore(url)
    for key in store.search_existing_scans()[1]:
        store.delete_scan(key, force=True)
    for folder in ("scans", "maps"):
        shutil.rmtree(workdir / folder, ignore_errors=True)


def peak_rss_of(pid: int) -> int:
    """A process's peak resident set over its life so far (VmHWM, bytes): unlike polling,
    it cannot miss a short peak (a publish's maps, held for a few tenths of a second)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def cpu_seconds_of(pid: int) -> float:
    """A process's CPU time so far (user + system, its threads; not its children's)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_daemon(url: str, out: Path, port: int, workdir: Path, *extra: str) -> subprocess.Popen:
    """The daemon of this checkout (PYTHONPATH: from its temporary working directory the
    interpreter would import the installed package, another checkout's code)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(
        [sys.executable, "-m", "dfxm_online.cli", "--log-level", DAEMON_LOG_LEVEL[0], "serve", "--redis", url,
         "--output-dir", str(out), "--metrics-port", str(port), *extra, *DAEMON_ARGS], cwd=workdir, env=env,
    )


def bench_end_to_end(url: str, workdir: Path, size: int, n_frames: int, mode: str, number: int,
                     motors: int = 1) -> dict:
    """Publish pre-computed frames as fast as blissdata allows; the daemon runs as a process.

    Points go out in blocks of up to 4 MB of frames per blissdata entry (8 frames at 512^2,
    one at 2048^2), as a fast detector's points reach BLISS. Reported: the publisher's rate;
    the daemon's rate up to its last frame processed (from /status); the time from there to
    the final maps file; and, from /metrics, where the daemon's time went.

    Modes "<array|lima>-queued" publish every point (frames in Redis, or in the Lima
    files) before the daemon starts; the daemon then takes the running scan up from its
    first point, and its rate is counted from the moment /status lists the scan: the
    daemon's own rate, without a publisher (and its file writer) sharing the 2 cores.

    Modes "<array|lima>-paused" measure the same in a daemon that has already processed a
    scan of the same frame size (a daemon in service, its memory no longer fresh): after
    that warm-up scan the daemon is paused (SIGSTOP) while the measured scan is published,
    then resumed; its rate is counted from the resume, its time split is the difference of
    its metrics. Modes "<array|lima>-warm": the same warm-up scan, then a live run.
    """
    out = workdir / "maps"
    rng = np.random.default_rng(number)
    pool = rng.integers(90, 4000, size=(8, size, size), dtype=np.uint16)
    port = free_port()
    queued = mode.endswith("-queued")
    paused = mode.endswith("-paused")
    warm = mode.endswith("-paused") or mode.endswith("-warm")
    image_mode = mode.split("-")[0]
    specs, positions, title = scan_motors(n_frames, motors)
    names = [m[0] for m in specs]
    daemon = None if queued else start_daemon(url, out, port, workdir)
    peak = 0
    before: dict[str, float] = {}
    try:
        if daemon is not None:
            wait_connected(port)
        if warm:
            warm_up(url, workdir, out, size, image_mode, pool, number, motors)
            before = metric_sums(scrape(port, "/metrics").decode())
        if paused:
            daemon.send_signal(signal.SIGSTOP)
        desc = ScanDescription(
            session="bench", number=number, name=title.split()[0], title=title,
            filename=workdir / "scans" / f"bench_{number}.h5", detector="pco",
            frame_shape=(size, size), npoints=n_frames, motors=specs,
        )
        pub = ScanPublisher(__import__("blissdata.redis_engine.store", fromlist=["DataStore"]).DataStore(url),
                            desc, image_mode, frames_per_file=10)
        block = max(1, min(8, (4 << 20) // pool[0].nbytes))
        pub.start()
        # a queued Lima scan's last file counts as closed only once the stream is sealed
        # (blissdata's rule), so its frames are read after `finish`: not counted here
        counted = n_frames - 10 if (queued or paused) and image_mode == "lima" else n_frames
        watch = StatusWatch(port, counted, number)
        t0 = time.monotonic()
        for s in range(0, n_frames, block):
            k = min(block, n_frames - s)
            pub.publish_points({m: positions[s : s + k, i] for i, m in enumerate(names)},
                               pool[np.arange(s, s + k) % len(pool)])
            if daemon is not None and not paused and s % 8 < block:
                peak = max(peak, psutil.Process(daemon.pid).memory_info().rss)
        t_pub = time.monotonic() - t0
        if paused:
            daemon.send_signal(signal.SIGCONT)
            t0 = time.monotonic()
            while watch.done_at is None and time.monotonic() - t0 < 600:
                peak = max(peak, psutil.Process(daemon.pid).memory_info().rss)
                time.sleep(0.02)
        if daemon is None:
            daemon = start_daemon(url, out, port, workdir)
            while watch.seen_at is None and time.monotonic() - t0 < 120:
                peak = max(peak, psutil.Process(daemon.pid).memory_info().rss)
                time.sleep(0.02)
            t0 = watch.seen_at or t0
            while watch.done_at is None and time.monotonic() - t0 < 600:
                peak = max(peak, psutil.Process(daemon.pid).memory_info().rss)
                time.sleep(0.02)
        pub.finish()
        path = maps_file(out, desc)
        while True:
            peak = max(peak, psutil.Process(daemon.pid).memory_info().rss)
            try:
                process = wait_state(path, 0.2)
                break
            except TimeoutError:
                if time.monotonic() - t0 > 600:
                    raise
        t_all = time.monotonic() - t0
        watch.stop()
        t_frames = (watch.done_at or (t0 + t_all)) - t0
        sums = metric_sums(scrape(port, "/metrics").decode())
        sums = {k: v - before.get(k, 0.0) for k, v in sums.items()}
        return {
            "mode": mode, "size": size, "frames": n_frames, "motors": motors, "per_entry": block,
            "published_fps": n_frames / t_pub, "daemon_fps": counted / t_frames,
            "end_to_end_fps": n_frames / t_all, "final_maps_s": t_all - t_frames,
            "processed": int(process["frames_processed"]), "state": process["state"],
            "reason": process.get("reason", ""), "peak_rss_mb": peak / 2**20,
            "read_s": sums.get("dfxm_read_seconds_sum", float("nan")),
            "update_s": sums.get("dfxm_batch_seconds_sum", float("nan")),
            "publish_s": sums.get("dfxm_publish_seconds_sum", float("nan")),
            "publishes": int(sums.get("dfxm_publish_seconds_count", 0)),
        }
    finally:
        if daemon is not None:
            if paused:
                daemon.send_signal(signal.SIGCONT)  # a stopped process would not see SIGTERM
            daemon.terminate()
            daemon.wait(30)


def watch_progress(path: str, timeout: float, conn) -> None:
    """Child process of the latency bench: watch the maps file until the scan is no longer
    running (or `timeout`), then send back [(time, frames processed)] at each change and the
    time the final version appeared (None if it did not; "ready" first, once it watches;
    `time.monotonic`: one clock for every process).

    Every 2 ms it only stats the path (each published version is another inode: a
    new file renamed over the path), and reads the process fields when
    that changed. Opening the file every 5 ms instead cost ~4 ms of CPU per poll: from a
    thread of the bench (which also publishes the frames) the polls were up to 0.1 s
    apart, the publisher holding the GIL; from a process of its own they took CPU from
    the daemon. Either way the bench measured itself."""
    import h5py

    conn.send("ready")
    seen: list[tuple[float, int]] = []
    final = None  # when the file first said the scan is no longer running
    last = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            stat = os.stat(path)
            signature = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            if signature != last:
                t = time.monotonic()
                with h5py.File(path, "r") as f:
                    n = int(f["entry/process/frames_processed"][()])
                    state = f["entry/process/state"][()].decode()
                last = signature
                if not seen or n > seen[-1][1]:
                    seen.append((t, n))
                if state != "running":
                    final = t
                    break
        except (OSError, KeyError):  # not there yet, or swapped while being opened: again
            pass
        time.sleep(0.002)
    conn.send((seen, final))
    conn.close()


def bench_latency(url: str, workdir: Path, size: int, n_frames: int, rate: float, number: int,
                  in_service: bool = False, motors: int = 1, binning: int = 1,
                  live_binning: int = 1) -> dict:
    """Frame-to-published-map latency at `rate` frames/s: for each frame, the time from its
    publication to the first maps file that includes it (watched by another process,
    `watch_progress`).

    A new daemon's first scan, or with `in_service` a daemon that has processed a scan of
    the same size (published at full speed) just before: the start-up of a new daemon (its
    fresh memory, first files) is most of a short scan's latency at 2048^2. `motors`: as
    in `scan_motors` (two: a mesh, whose maps include the mosaicity colours). `binning` > 1:
    the daemon bins the frames binning x binning before the accumulators. `live_binning` > 1: the daemon's `--live-binning` (running versions binned
    from the full-resolution accumulators, final maps full resolution).

    Besides p50 and p99 over every frame, `p99_steady` leaves out the first 10 and last 5
    frames: the scan's start (a new pipeline, the first snapshot) and its end (the final
    maps), so that the steady state and those two moments can be told apart."""
    import multiprocessing
    import threading

    out = workdir / "maps"
    rng = np.random.default_rng(number)
    pool = rng.integers(90, 4000, size=(8, size, size), dtype=np.uint16)
    specs, positions, title = scan_motors(n_frames, motors)
    names = [spec[0] for spec in specs]
    kind = title.split()[0]  # ascan / amesh: the maps file's name

    def point(i: int) -> dict[str, float]:
        return dict(zip(names, positions[i].tolist()))

    port = free_port()
    extra: tuple[str, ...] = ()
    if binning > 1:
        extra = ("--config", str(write_binning_config(workdir, binning)))
    if live_binning > 1:
        extra = (*extra, "--live-binning", str(live_binning))
    daemon = start_daemon(url, out, port, workdir, "--publish-period", "0.1", *extra)
    try:
        wait_connected(port)
        from blissdata.redis_engine.store import DataStore

        desc = ScanDescription(
            session="latency", number=number, name=kind, title=title,
            filename=workdir / "scans" / f"lat_{number}.h5", detector="pco",
            frame_shape=(size, size), npoints=n_frames, motors=specs,
        )
        if in_service:
            warm = ScanDescription(
                session="latency", number=number + 1000, name=kind, title=title,
                filename=workdir / "scans" / f"lat_{number}_warmup.h5", detector="pco",
                frame_shape=(size, size), npoints=n_frames, motors=specs,
            )
            warm_pub = ScanPublisher(DataStore(url), warm, "array")
            warm_pub.start()
            for i in range(n_frames):
                warm_pub.publish(point(i), pool[i % len(pool)])
            warm_pub.finish()
            wait_state(maps_file(out, warm), 120)
        pub = ScanPublisher(DataStore(url), desc, "array")
        published: list[float] = []

        def publish() -> None:
            pub.start()
            t0 = time.monotonic()
            for i in range(n_frames):
                delay = t0 + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                pub.publish(point(i), pool[i % len(pool)])
                published.append(time.monotonic())
            pub.finish()

        context = multiprocessing.get_context("spawn")
        receive, send = context.Pipe(duplex=False)
        watcher = context.Process(target=watch_progress, daemon=True, args=(
            str(maps_file(out, desc)), n_frames / rate + 60, send))
        watcher.start()  # before the scan: its start-up (imports) must not delay the polls
        receive.recv()  # "ready"
        thread = threading.Thread(target=publish)
        thread.start()
        cpu_before = cpu_seconds_of(daemon.pid)
        seen, final = receive.recv()
        watcher.join()
        thread.join()
        cpu = cpu_seconds_of(daemon.pid) - cpu_before
        latencies = []
        for k, t_pub in enumerate(published):
            t_map = next((t for t, n in seen if n > k), None)
            if t_map is not None:
                latencies.append(max(0.0, t_map - t_pub))
        lat = np.array(latencies)
        peak_mb = peak_rss_of(daemon.pid) / 2**20
        return {"size": size, "rate": rate, "frames": n_frames, "motors": motors, "in_service": in_service,
                "binning": binning, "live_binning": live_binning,
                "p50": float(np.percentile(lat, 50)),
                "p99": float(np.percentile(lat, 99)), "measured": len(lat), "peak_rss_mb": peak_mb,
                "p99_steady": float(np.percentile(lat[10:-5], 99)) if len(lat) > 30 else float("nan"),
                # the final (full-resolution) maps on disk after the last frame's publication
                "final_after_last": float(final - published[-1]) if final is not None else float("nan"),
                # the daemon's own CPU (not its workflow processes') over the scan
                "daemon_cpu_s": cpu,
                # where the tail is: the slowest frames (index, latency), for the notes
                "slowest": [(int(k), round(float(lat[k]), 3)) for k in np.argsort(lat)[::-1][:6]]}
    finally:
        daemon.terminate()
        daemon.wait(30)


#: alternating rounds of `bench_process`
PROCESS_ROUNDS = 3

#: `dfxm-online process` runs of the recorded mesh (`bench_process`): (label, flags, whole
#: frames forced: the window's path for files whose frames are compressed)
PROCESS_RUNS = (("moment window off", ["--moment-window", "0"], False),
                ("defaults (the window by bands of rows, one read)", [], False),
                ("defaults, the window by whole frames (once per pass, as for compressed files)", [], True))

#: a `process` child: the CLI in a fresh interpreter (start-up included), optionally with the
#: window's band path off, printing its peak RSS (VmHWM, kB) last
PROCESS_CHILD = """
import sys
if sys.argv[1] == "whole":
    from dfxm_online.acquisition import blissfile
    blissfile.RecordedScan.stored_plainly = property(lambda self: False)
from dfxm_online import cli
code = cli.main(sys.argv[2:])
print([line for line in open("/proc/self/status") if line.startswith("VmHWM")][0].split()[1])
sys.exit(code)
"""


def bench_process(url: str, workdir: Path, size: int, points: tuple[int, int], rounds: int) -> list[str]:
    """`dfxm-online process` (no fits, scan-end analyses or PNG) of a two-motor mesh of
    size^2 uint16 frames recorded plainly in a BLISS file in the page cache, a fresh process
    each (its start-up in), the runs alternating: median (range) seconds and frames/s,
    peak RSS. Markdown rows."""
    from dfxm_online.acquisition.simulate import SimulationSpec, simulate

    spec = SimulationSpec(kind="mosaicity", motors=[("mu", -0.4, 0.4, points[0]), ("chi", -1.5, 1.5, points[1])],
                          frame_shape=(size, size), scan_dir=workdir / "process", session="process",
                          background=5.0, peak_counts=3000.0)
    rec = simulate(url, spec)
    n = points[0] * points[1]
    common = ["process", str(rec.filename), "--scan", f"{rec.scan_number}.1", "-o", str(workdir / "process.h5"),
              "--no-fit", "--no-scan-end", "--no-quicklook", "--no-progress"]
    seconds: dict[str, list[float]] = {label: [] for label, _, _ in PROCESS_RUNS}
    peaks: dict[str, list[float]] = {label: [] for label, _, _ in PROCESS_RUNS}
    for _ in range(rounds):
        for label, flags, whole in PROCESS_RUNS:
            t0 = time.perf_counter()
            run = subprocess.run([sys.executable, "-c", PROCESS_CHILD, "whole" if whole else "bands", *common, *flags],
                                 capture_output=True, text=True, timeout=1800)
            if run.returncode != 0:
                raise RuntimeError(f"process failed: {run.stderr[-2000:]}")
            seconds[label].append(time.perf_counter() - t0)
            peaks[label].append(int(run.stdout.split()[-1]) / 1024)
    rows = []
    for label, _, _ in PROCESS_RUNS:
        s = np.array(seconds[label])
        rows.append(f"| {label} | {np.median(s):.2f} ({s.min():.2f}-{s.max():.2f}) | {n / np.median(s):.1f} "
                    f"| {max(peaks[label]):.0f} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--only", choices=("compute-core", "accumulators", "e2e", "latency", "process"),
                        help="run one part and print it (RESULTS.md is written by full runs only)")
    parser.add_argument("--runs", help="e2e runs as mode:size:frames,... (with --only e2e)")
    parser.add_argument("--latency-runs",
                        help="latency runs as size:frames:daemon[:motors[:binning[:live]]],... with daemon "
                             "new or in-service, motors 1 (default) or 2, binning a factor the daemon "
                             "bins frames by (default 1: none), live the daemon's --live-binning (default 1) "
                             "(with --only latency)")
    parser.add_argument("--daemon-args", default="",
                        help="extra 'dfxm-online serve' flags for the daemon, e.g. '--batch-size 32'")
    parser.add_argument("--compute-core-child", nargs=3, type=int, metavar=("SIZE", "FRAMES", "BATCH"),
                        help=argparse.SUPPRESS)  # one code path's compute core, as JSON (see CODE_PATHS)
    parser.add_argument("--product-child", nargs=3, type=int, metavar=("SIZE", "FRAMES", "BATCH"),
                        help=argparse.SUPPRESS)  # the numpy tiled product alone (see PATH_BLAS)
    parser.add_argument("--daemon-log-level", default="WARNING",
                        help="the daemons' log level (their log goes to stderr), e.g. DEBUG for per-publish times")
    args = parser.parse_args()
    if args.compute_core_child:
        print(json.dumps(bench_compute_core(*args.compute_core_child)))
        return
    if args.product_child:
        print(json.dumps(bench_compute_core(*args.product_child, product_only=True)))
        return
    DAEMON_ARGS[:] = args.daemon_args.split()
    DAEMON_LOG_LEVEL[0] = args.daemon_log_level
    part = args.only
    size = 256 if args.quick else 2048
    batch = AnalysisConfig().batch_size
    lines = [
        "# Benchmark results",
        "",
        f"CPU: {cpu_description()}.",
        "",
        f"Machine: {platform.machine()}, {psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB; Python {platform.python_version()}, "
        f"numpy {np.__version__}, numba {numba_version()}. Run: `make bench` on {time.strftime('%Y-%m-%d')}.",
        "",
        f"## Compute core per code path, {size}x{size} uint16 frames from memory, batches of {batch}",
        "",
        "`ScanPipeline.update` with the default preprocessing and accumulators (2-motor moments to "
        "4th order, edge baseline, projections), forced onto each numba target in a process of its "
        "own, on the numba pass and on the numpy floor (`DFXM_KERNELS=numpy`), next to the plain "
        "numpy tiled product of the 15 moment sums (`w @ x` over 16k-pixel tiles, one BLAS thread "
        "per tile thread; OpenBLAS picks its kernel for the real CPU whatever the numba target). "
        f"frames/s over {CORE_FRAMES} frames: median (min-max) of {CORE_ROUNDS} alternating rounds. "
        "Then what `DFXM_KERNELS=auto` runs on that target, over the numpy tiled product. Then the "
        "product with the OpenBLAS kernels a CPU of the target's kind gets (`OPENBLAS_CORETYPE`, "
        "a process of its own each: Haswell for AVX2, also AMD's; Nehalem for SSE4.2 and Prescott, "
        "which OpenBLAS names Katmai, for older SSE CPUs), and what auto runs over it. Last column: "
        "the same per CPU time (frames per second of the process's CPU time x the tile threads: "
        "numba / numpy floor / numpy product, and auto over the product), which a machine shared "
        "with other work changes less than the wall-clock rates. The window column: a pass of the final "
        "maps' moment window (`MomentWindow.add_to`) over the same frames. The snapshot column: "
        f"`ScanPipeline.snapshot()` of those sums, warm, median (min-max) of {CORE_ROUNDS}: every per-pixel "
        "snapshot kernel (numba, compiled for the target: the moment maps, pooled edge baseline, order "
        "statistics, mosaicity colours, KAM).",
        "",
        "| path | numba target | compute core, numba | compute core, numpy floor | numpy tiled product (15 sums) "
        "| auto, over the product | the product with the target's BLAS kernels, auto over it "
        "| per CPU time: numba / floor / product, auto over the product "
        "| a moment window pass (windowed power sums): numba / numpy floor "
        "| ScanPipeline.snapshot (the maps), s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    if part in (None, "accumulators", "compute-core"):
        lines += compute_core_paths(size, CORE_FRAMES, batch)
    if part == "compute-core":
        print("\n".join(lines))
        return
    lines += [
        "",
        f"## Accumulators, {size}x{size} uint16 frames from memory, batches of {batch} (the default); "
        f"median of {PASSES} passes over 256 frames",
        "",
        "| accumulator | frames/s |",
        "|---|---|",
    ]
    for name, value in (bench_accumulators(size, 256, batch) if part in (None, "accumulators") else []):
        print(f"{name}: {value:.2f}", flush=True)
        lines.append(f"| {name} | {value:.2f} |" if "seconds" in name else f"| {name} | {value:.1f} |")
    lines += ["", "## End to end through the embedded store (daemon as a separate process)", "",
              "Daemon frames/s: frames / time from the first frame published to the last one "
              "processed (`/status`). End to end: to the final maps file. Daemon time split "
              "from its `/metrics`: waiting for + reading frames, accumulator updates, "
              "publishing maps (snapshot + write; count). `-queued`: the whole scan published "
              "before a new daemon starts (the daemon alone, its memory fresh); `-paused`: the same "
              "in a daemon that has processed a scan of that size before, paused while the scan is "
              "published (a daemon in service); `-warm`: that daemon, live.", "",
              "| image stream | frame | motors | frames | points per entry | published frames/s | daemon frames/s "
              "| end-to-end frames/s | final maps after last frame (s) | read / update / publish s (publishes) "
              "| processed | peak daemon RSS (MB) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        store = EmbeddedStore(Path(tmp) / "store")
        url = store.start()
        try:
            runs = [(512, 1000, "array", 1), (512, 3000, "array-queued", 1), (size, 100, "array", 1),
                    (size, 300, "array-queued", 1), (size, 100, "lima", 1), (size, 300, "lima", 1),
                    (size, 300, "lima-queued", 1), (size, 300, "lima-paused", 1), (size, 300, "lima-warm", 1),
                    (size, 300, "lima", 2), (size, 300, "lima-queued", 2),
                    (size, 300, "lima-paused", 2), (512, 3000, "array-paused", 1)]
            if args.quick:
                runs = [(128, 100, "array", 1), (256, 60, "lima", 2)]
            if args.runs:  # mode:size:frames[:motors]
                runs = [(int(f[1]), int(f[2]), f[0], int(f[3]) if len(f) > 3 else 1)
                        for f in (r.split(":") for r in args.runs.split(","))]
            if part not in (None, "e2e"):
                runs = []
            for number, (sz, n, mode, motors) in enumerate(runs, start=1):
                r = bench_end_to_end(url, Path(tmp), sz, n, mode, number, motors)
                clear_run(url, Path(tmp))
                print(json.dumps(r), flush=True)
                lines.append(
                    f"| {mode} | {sz}x{sz} | {motors} | {n} | {r['per_entry']} | {r['published_fps']:.1f} | {r['daemon_fps']:.1f} "
                    f"| {r['end_to_end_fps']:.1f} | {r['final_maps_s']:.2f} "
                    f"| {r['read_s']:.2f} / {r['update_s']:.2f} / {r['publish_s']:.2f} ({r['publishes']}) "
                    f"| {r['processed']} ({r['state']}{': ' + r['reason'] if r['reason'] else ''}) "
                    f"| {r['peak_rss_mb']:.0f} |"
                )
            lines += ["", "## Frame-to-published-map latency (publish period 0.1 s)", "",
                      "New daemon: the scan is the daemon's first. In service: the daemon has processed "
                      "a scan of the same size just before. Peak RSS: the daemon's high-water mark "
                      "(VmHWM) over its life, the in-service warm-up scan (published at full speed) "
                      "included. Binned: the daemon bins each frame (sum) before the "
                      "accumulators, so its maps have that many times fewer pixels per side. Live maps "
                      "binned: `--live-binning`, the running versions binned from the full-resolution "
                      "accumulators, the final maps full resolution. p99 steady: without the first 10 "
                      "and last 5 frames (the scan's start and its final maps). Final maps: from the last "
                      "frame's publication to the final version on disk. Daemon CPU: the daemon's own "
                      "(not its workflow processes') over the scan.", "",
                      "| frame | rate (frames/s) | frames | motors | daemon | p50 (s) | p99 (s) "
                      "| p99 steady (s) | final maps after last frame (s) | daemon CPU (s) | peak daemon RSS (MB) |",
                      "|---|---|---|---|---|---|---|---|---|---|---|"]
            lat_runs = [(512, 100, "new", 1, 1, 1), (2048, 60, "new", 1, 1, 1), (2048, 60, "new", 2, 1, 1),
                        (2048, 60, "in service", 1, 1, 1), (2048, 200, "in service", 1, 1, 1),
                        (2048, 200, "in service", 2, 1, 1), (2048, 200, "in service", 2, 1, 2)]
            if args.quick:
                lat_runs = [(128, 30, "new", 1, 1, 1), (128, 40, "new", 2, 1, 1)]
            if args.latency_runs:  # size:frames:daemon[:motors[:binning[:live]]]
                lat_runs = [(int(f[0]), int(f[1]), f[2].replace("-", " "), int(f[3]) if len(f) > 3 else 1,
                             int(f[4]) if len(f) > 4 else 1, int(f[5]) if len(f) > 5 else 1)
                            for f in (r.split(":") for r in args.latency_runs.split(","))]
            if part not in (None, "latency"):
                lat_runs = []
            if part in (None, "process"):
                cols = (24, 8) if args.quick else (20, 12)
                lines += ["", f"## `dfxm-online process` of a recorded {size}x{size} two-motor mesh "
                          f"({cols[0] * cols[1]} frames, uint16, an uncompressed BLISS file in the page cache)", "",
                          "No fits, scan-end analyses or PNG; a fresh process each (start-up included), "
                          f"{PROCESS_ROUNDS} alternating rounds: median (range) seconds, frames/s of the median, "
                          "the highest peak RSS (VmHWM).", "",
                          "| run | seconds | frames/s | peak RSS (MB) |", "|---|---|---|---|"]
                lines += bench_process(url, Path(tmp), 128 if args.quick else size, cols, PROCESS_ROUNDS)
            for k, (sz, n, daemon_kind, motors, binning, live) in enumerate(lat_runs, start=len(runs) + 1):
                r = bench_latency(url, Path(tmp), sz, n, 10.0, k, daemon_kind == "in service", motors, binning, live)
                clear_run(url, Path(tmp))
                print(json.dumps(r), flush=True)
                frame = f"{sz}x{sz}" + (f" binned {binning}x{binning}" if binning > 1 else "")
                frame += f", live maps binned {live}x{live}" if live > 1 else ""
                lines.append(f"| {frame} | 10 | {r['frames']} | {motors} | {daemon_kind} | {r['p50']:.3f} "
                             f"| {r['p99']:.3f} | {r['p99_steady']:.3f} | {r['final_after_last']:.2f} "
                             f"| {r['daemon_cpu_s']:.1f} | {r['peak_rss_mb']:.0f} |")
        finally:
            store.stop()
    from fits import section as fits_section  # bench/fits.py: the per-pixel fits vs darfix

    lines += [""] + fits_section(size=64 if args.quick else 256, darfix=not args.quick) if part is None else []
    text = "\n".join(lines) + "\n"
    if part is not None:
        print(text)
        return
    # the hand-written analysis below the tables survives a re-run
    marker = "\n## Notes"
    if args.out.exists() and marker in args.out.read_text():
        text += marker + args.out.read_text().split(marker, 1)[1]
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
