"""Scan-end workflow timings: from a scan's last frame to its fitted maps on disk, in the
daemon's local pool and on two ewoksjob workers (a fit sharded in two bands), and the
queue latency of a job on the embedded broker.

The daemon's part at scan end is saving the accumulator state (timed here); the live
accumulation before it is not part of this delay and is done here by `offline.accumulate`.
Usage: python bench/workflow.py [--size 256] [--large FILE]  (FILE: the 26 x 37 mesh of
2048^2 frames of bench/fits.py, made there if missing: 8 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from fits import LARGE_MOTORS, MOTORS, make_mesh_file  # noqa: E402

from dfxm_online.acquisition.blissfile import open_scan  # noqa: E402
from dfxm_online.config import AnalysisConfig  # noqa: E402
from dfxm_online.offline import accumulate  # noqa: E402
from dfxm_online.publish.scan_state import save_state  # noqa: E402
from dfxm_online.store import EmbeddedStore  # noqa: E402
from dfxm_online.workflow.catalog import graph_path, load_graph  # noqa: E402
from dfxm_online.workflow.job import Job  # noqa: E402


def hand_off(scan_file: Path, work: Path) -> tuple[Job, float]:
    """What the daemon holds at the last frame, and the time it takes to save it."""
    with open_scan(scan_file, "1.1") as rec:
        pipeline = accumulate(rec, AnalysisConfig(), f"{scan_file}::2.1", progress=False)
    t0 = time.perf_counter()
    state = save_state(work / "maps.state.h5", pipeline, "bench")
    seconds = time.perf_counter() - t0
    del pipeline
    return Job(filename=str(scan_file), scan="1.1", output=str(work / "maps.h5"), state=str(state)), seconds


def in_process(job: Job) -> float:
    """The local pool's command for one scan: `python -m dfxm_online.workflow.run`."""
    job_file = job.work_dir / "job.json"
    job_file.parent.mkdir(parents=True, exist_ok=True)
    job_file.write_text(job.model_dump_json(exclude={"parts", "started"}))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dfxm_online.workflow.run", str(graph_path("post_scan")), str(job_file)],
                   check=True, cwd=ROOT, capture_output=True)
    return time.perf_counter() - t0


class Workers:
    """An embedded store and `n` ewoksjob workers on it (one process slot each)."""

    def __init__(self, tmp: Path, n: int = 2) -> None:
        self.store = EmbeddedStore(tmp / "store")
        self.store.start()
        self.config = tmp / "celeryconfig.py"
        shutil.copy(ROOT / "services" / "celeryconfig.py", self.config)
        os.environ.update(EWOKS_CONFIG_URI=str(self.config), DFXM_CELERY_REDIS=self.store.url)
        self.queue = "bench"
        self.logs = [tmp / f"worker{i}.log" for i in range(n)]
        self.procs = [subprocess.Popen(
            [str(Path(sys.executable).with_name("ewoksjob")), "worker", "-Q", self.queue, "--concurrency", "1",
             "-n", f"w{i}@%h", "--without-gossip", "--without-mingle"],
            stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=ROOT) for i, log in enumerate(self.logs)]
        while not all("ready." in log.read_text() for log in self.logs):
            time.sleep(0.2)

    def close(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait(30)
        self.store.stop()


def on_workers(workers: Workers, job: Job, shards: int) -> float:
    from ewoksjob.client import submit

    inputs = {**job.model_dump(exclude={"parts", "started"}), "ewoksjob": True, "fit_shards": shards,
              "queue": workers.queue}
    t0 = time.perf_counter()
    future = submit(args=(load_graph("post_scan"),), kwargs={"inputs": [{"name": k, "value": v} for k, v in inputs.items()]},
                    queue=workers.queue)
    future.result(timeout=3600)
    return time.perf_counter() - t0


def queue_latency(workers: Workers, n: int = 20) -> float:
    """Median round trip of an empty job (submit -> its result back), seconds."""
    from ewoksjob.client import submit_test

    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        submit_test(seconds=0, queue=workers.queue).result(timeout=60)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def case(scan_file: Path, label: str, workers: Workers) -> list[str]:
    lines = []
    with tempfile.TemporaryDirectory(dir=scan_file.parent) as tmp:
        job, save = hand_off(scan_file, Path(tmp))
        local = in_process(job)
        lines.append(f"| {label} | local pool (1 process) | {save:.1f} | {local:.1f} | {save + local:.1f} |")
        for shards in (1, 2):
            t = on_workers(workers, job, shards)
            lines.append(f"| {label} | 2 ewoksjob workers, fit in {shards} band(s) | {save:.1f} | {t:.1f} | "
                         f"{save + t:.1f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--large", type=Path, metavar="FILE")
    args = parser.parse_args()
    lines = ["| scan | where | state saved (s) | workflow (s) | last frame -> fitted maps (s) |",
             "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        workers = Workers(Path(tmp))
        try:
            small = Path(tmp) / "mesh.h5"
            make_mesh_file(small, args.size, motors=MOTORS)
            lines += case(small, f"{MOTORS[0].npoints}x{MOTORS[1].npoints} mesh, {args.size}^2", workers)
            if args.large:
                if not args.large.exists():
                    make_mesh_file(args.large, 2048, motors=LARGE_MOTORS)
                lines += case(args.large, "26x37 mesh, 2048^2", workers)
            latency = queue_latency(workers)
        finally:
            workers.close()
    lines += ["", f"ewoksjob queue latency on the embedded broker (empty job, submit -> result, median of 20): "
                  f"{1000 * latency:.0f} ms"]
    print("\n".join(lines))
    print(json.dumps({"queue_latency_s": latency}), file=sys.stderr)


if __name__ == "__main__":
    main()
