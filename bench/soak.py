"""Soak run: a daemon fed scans for an hour (or `--duration`), with faults injected.

A stream of rocking scans at `--rate` frames/s (10) of `--shape` frames (1024^2 uint16)
is published through the embedded store into a `dfxm-online serve` process; meanwhile the
store is restarted once (at 40 % of the run) and the maps folder, a tmpfs of `--disk-mb`,
is filled for `--disk-full-seconds` (at 70 %). Reported (and written into bench/RESULTS.md
with `--out`): scans by final state, frames lost (frames published in scans the faults did
not hit that the daemon did not put in their final maps: target 0), the daemon's RSS and
open files over time (target flat after warm-up), frame-to-map latency percentiles (from
the store's `dfxm-online:maps` announcements: a frame's latency is the time from its
publication to the first announced version that holds it).

    python bench/soak.py                   # one hour
    python bench/soak.py --duration 600    # the 10-minute variant (`make soak SOAK_SECONDS=600`)

Needs root for the tmpfs (tests/small_disk.py). Scans and their BLISS files are deleted
once the daemon has finished them, so the store and the disks stay bounded.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blissdata.redis_engine.store import DataStore  # noqa: E402

from dfxm_online.acquisition.publisher import ScanDescription, ScanPublisher  # noqa: E402
from dfxm_online.publish.announce import STREAM  # noqa: E402
from dfxm_online.store import EmbeddedStore, free_port  # noqa: E402
from tests.small_disk import SmallDisk  # noqa: E402

logger = logging.getLogger("soak")
FINAL = ("complete", "aborted", "failed")


@dataclass
class ScanRecord:
    key: str
    number: int
    points: int
    sent: int = 0
    sent_times: list[float] = field(default_factory=list)
    fault: str = ""  # the injected fault that hit this scan, if any
    state: str = ""
    reason: str = ""
    processed: int = 0
    path: str = ""
    ended: float = 0.0  # seconds into the run when its last frame was published


class Frames:
    """A rocking curve per pixel (centres across the detector), cheap to make per frame."""

    def __init__(self, shape: tuple[int, int], points: int) -> None:
        self.mu = np.linspace(-0.5, 0.5, points)
        self.centre = np.linspace(-0.2, 0.2, shape[1], dtype=np.float32)[None, :]
        self.amplitude = np.full(shape, 800.0, np.float32)

    def frame(self, k: int) -> np.ndarray:
        g = np.exp(-0.5 * ((self.mu[k] - self.centre) / 0.08) ** 2)
        return (100.0 + self.amplitude * g).astype(np.uint16)


class Sampler(threading.Thread):
    """The daemon's RSS (MB) and open files, every `period` seconds."""

    def __init__(self, pid: int, t0: float, period: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.t0, self.period = pid, t0, period
        self.samples: list[tuple[float, float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.period):
            try:
                status = Path(f"/proc/{self.pid}/status").read_text()
                rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024
                fds = len(os.listdir(f"/proc/{self.pid}/fd"))
            except (OSError, AttributeError):
                continue
            self.samples.append((time.monotonic() - self.t0, rss, fds))


class Announcements(threading.Thread):
    """Every version the daemon announces: (scan key, frames, wall time), through store restarts."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.versions: list[tuple[str, int, float, str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        last = "$"
        while not self.stop.is_set():
            try:
                r = redis.Redis.from_url(self.url, socket_timeout=5)
                while not self.stop.is_set():
                    reply = r.xread({STREAM: last}, block=1000, count=1000)
                    for _, entries in reply or []:
                        for entry_id, fields in entries:
                            last = entry_id
                            f = {k.decode(): v.decode() for k, v in fields.items()}
                            ms = int(entry_id.decode().split("-")[0])
                            self.versions.append((f["scan_key"], int(f["frames"].split("/")[0]), ms / 1000.0,
                                                  f["state"]))
            except redis.RedisError:
                last = "0"  # a restarted store has a new, empty stream
                self.stop.wait(1.0)


def daemon_status(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as reply:
            return json.load(reply)["scans"]
    except (OSError, ValueError):
        return {}


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values)
    return {f"p{q}": float(np.percentile(a, q)) for q in (50, 90, 99)} | {"max": float(a.max())}


def slope_per_hour(samples: list[tuple[float, float, int]], column: int, after: float) -> float:
    pts = [(t, s[column]) for s in samples if (t := s[0]) >= after]
    if len(pts) < 3:
        return float("nan")
    t, v = np.array(pts).T
    return float(np.polyfit(t, v, 1)[0] * 3600)


def run(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="dfxm-soak-"))
    store = EmbeddedStore(work / "store")
    url = store.start()
    port = int(url.rsplit(":", 1)[1])
    metrics_port = free_port()
    scans: list[ScanRecord] = []
    with SmallDisk(work / "maps", args.disk_mb << 20) as out, SmallDisk(work / "scans", 1 << 30) as scan_disk:
        log = open(work / "daemon.log", "w")
        env = dict(os.environ, **({"MALLOC_ARENA_MAX": str(args.malloc_arena_max)} if args.malloc_arena_max else {}))
        daemon = subprocess.Popen(
            [sys.executable, "-m", "dfxm_online.cli", "serve", "--redis", url, "--output-dir", str(out.path),
             "--metrics-port", str(metrics_port), "--publish-period", str(args.publish_period)],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
        t0 = time.monotonic()
        sampler = Sampler(daemon.pid, t0)
        sampler.start()
        announced = Announcements(url)
        announced.start()
        frames = Frames(tuple(args.shape), args.points)
        restart_at, full_at = args.restart_at * args.duration, args.disk_full_at * args.duration
        restarted = filled = False
        done: dict[str, ScanRecord] = {}

        def tidy() -> None:
            """Scans the daemon has finished: record, then delete them from the store and disks."""
            status = daemon_status(metrics_port)
            for rec in scans:
                st = status.get(rec.key)
                if rec.key in done or st is None or st["state"] not in FINAL:
                    continue
                rec.state, rec.reason, rec.processed, rec.path = st["state"], st["reason"], st["frames_processed"], st["path"]
                done[rec.key] = rec
                try:
                    DataStore(url).delete_scan(rec.key, force=True)
                except Exception as exc:  # a scan lost with the store restart
                    logger.debug("scan %s not deleted: %s", rec.key, exc)
                Path(rec.path).unlink(missing_ok=True)
                Path(rec.path).with_suffix(".png").unlink(missing_ok=True)
                (scan_disk.path / f"soak_{rec.number}.h5").unlink(missing_ok=True)

        time.sleep(args.warmup)  # the daemon's start (imports, numba's cached kernels)
        number = 0
        while time.monotonic() - t0 < args.duration:
            number += 1
            desc = ScanDescription(
                session="soak", number=number, name="ascan", title=f"ascan mu -0.5 0.5 {args.points - 1} 0.1",
                filename=scan_disk.path / f"soak_{number}.h5", detector="pco", frame_shape=tuple(args.shape),
                npoints=args.points, motors=[("mu", -0.5, 0.5, args.points)],
            )
            try:
                pub = ScanPublisher(DataStore(url), desc)
                pub.start()
            except Exception as exc:
                logger.warning("scan %d not started: %s", number, exc)
                time.sleep(1.0)
                continue
            rec = ScanRecord(pub.key, number, args.points)
            scans.append(rec)
            start = time.monotonic()
            try:
                for k in range(args.points):
                    pace = start + k / args.rate - time.monotonic()
                    if pace > 0:
                        time.sleep(pace)
                    elapsed = time.monotonic() - t0
                    if not restarted and elapsed >= restart_at:
                        restarted, rec.fault = True, "store restart"
                        logger.info("%.0f s: restarting the store", elapsed)
                        store.stop()
                        time.sleep(3.0)
                        store.start(port=port)
                        raise RuntimeError("store restarted")
                    if not filled and elapsed >= full_at:
                        filled = True
                        logger.info("%.0f s: maps folder full for %.0f s", elapsed, args.disk_full_seconds)
                        out.fill()
                        threading.Timer(args.disk_full_seconds, out.free).start()
                    pub.publish({"mu": float(frames.mu[k])}, frames.frame(k))
                    rec.sent_times.append(time.time())
                    rec.sent += 1
                pub.finish()
            except Exception as exc:
                rec.fault = rec.fault or f"publisher: {exc}"
                logger.info("scan %d interrupted: %s", number, exc)
            rec.ended = time.monotonic() - t0
            tidy()
        deadline = time.monotonic() + 120
        while len(done) < len(scans) and time.monotonic() < deadline:
            tidy()
            time.sleep(1.0)
        for rec in scans:  # scans whose end (and final file) fell in a fault
            if rec.fault:
                continue
            if restarted and restart_at - 30 <= rec.ended <= restart_at + 5 and rec.state != "complete":
                rec.fault = "store restart (ended just before it: its final maps read the frames again)"
            elif filled and full_at - 15 <= rec.ended <= full_at + args.disk_full_seconds + 5:
                # its final maps (read again from the store) are written a few seconds after
                rec.fault = "disk full when it ended"
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(30)
        sampler.stop.set()
        announced.stop.set()
        log.close()
    store.stop()
    return summarise(args, scans, sampler.samples, announced.versions, code, time.monotonic() - t0, work)


def summarise(args, scans, samples, versions, exit_code, elapsed, work) -> dict:
    announced: dict[str, list[tuple[int, float]]] = {}
    for key, frames, t, _state in versions:
        announced.setdefault(key, []).append((frames, t))
    latencies = []
    for rec in scans:
        if rec.fault:
            continue
        covered = 0  # frames of the scan held by an earlier version
        for frames, t in sorted(announced.get(rec.key, []), key=lambda v: v[1]):
            while covered < min(frames, len(rec.sent_times)):
                latencies.append(t - rec.sent_times[covered])
                covered += 1
    clean = [r for r in scans if not r.fault]
    lost = sum(r.sent - r.processed for r in clean if r.state)
    states: dict[str, int] = {}
    for r in scans:
        states[r.state or "unfinished"] = states.get(r.state or "unfinished", 0) + 1
    warm = elapsed / 3  # the trend over the last two thirds: the first scans fill the allocator's arenas
    after = [s for s in samples if s[0] >= warm]
    return {
        "duration_s": round(elapsed), "rate": args.rate, "shape": list(args.shape), "points": args.points,
        "scans": len(scans), "states": states,
        "faulted": [f"#{r.number}: {r.fault} -> {r.state or 'unfinished'} ({r.reason[:90]})" for r in scans if r.fault],
        "clean_not_complete": [f"#{r.number}: {r.state} {r.reason[:90]}" for r in clean if r.state != "complete"],
        "frames_published_clean": sum(r.sent for r in clean), "frames_lost_clean": lost,
        "latency_s": percentiles(latencies),
        "rss_mb": {"start": after[0][1] if after else None, "end": after[-1][1] if after else None,
                   "max": max((s[1] for s in samples), default=None),
                   "slope_per_h": slope_per_hour(samples, 1, warm)},
        "open_files": {"start": after[0][2] if after else None, "end": after[-1][2] if after else None,
                       "max": max((s[2] for s in samples), default=None)},
        "samples": [(round(t), round(r), f) for t, r, f in samples[:: max(1, len(samples) // 12)]],
        "daemon_exit_code": exit_code, "work_dir": str(work), "malloc_arena_max": args.malloc_arena_max,
    }


def markdown(result: dict) -> str:
    lat = result["latency_s"]
    arenas = result.get("malloc_arena_max")
    rows = "\n".join(f"| {t} | {r} | {f} |" for t, r, f in result["samples"])
    title = "## Soak (bench/soak.py)" + (f", MALLOC_ARENA_MAX={arenas}" if arenas else "")
    return f"""{title}

`python bench/soak.py --duration {result['duration_s']}{f' --malloc-arena-max {arenas}' if arenas else ''}`: rocking scans of {result['points']} frames of
{result['shape'][0]}x{result['shape'][1]} uint16 at {result['rate']} frames/s through the embedded store into
`dfxm-online serve` (a subprocess), for {result['duration_s']} s, with the store restarted once (40 %) and
the maps folder (a tmpfs) full for a while (70 %). The machine (2 cores) was shared with other sessions
during the run: latencies are upper figures.

- scans: {result['scans']}, by final state {result['states']}; daemon exit code on SIGTERM: {result['daemon_exit_code']}
- hit by the injected faults (expected to fail or abort): {'; '.join(result['faulted']) or 'none'}
- scans the faults did not hit that did not complete: {'; '.join(result['clean_not_complete']) or 'none'}
- frames lost (published in those scans, not in their final maps): **{result['frames_lost_clean']}** of
  {result['frames_published_clean']}
- frame-to-map latency (publication to the first announced version holding the frame):
  p50 {lat.get('p50', float('nan')):.2f} s, p90 {lat.get('p90', float('nan')):.2f} s,
  p99 {lat.get('p99', float('nan')):.2f} s, max {lat.get('max', float('nan')):.2f} s
- daemon RSS after warm-up: {result['rss_mb']['start']:.0f} MB at start, {result['rss_mb']['end']:.0f} MB at the end,
  max {result['rss_mb']['max']:.0f} MB, trend over the last two thirds {result['rss_mb']['slope_per_h']:+.0f} MB/h;
  open files {result['open_files']['start']} -> {result['open_files']['end']} (max {result['open_files']['max']})

| t (s) | RSS (MB) | open files |
|---|---|---|
{rows}
"""


def write_results(path: Path, text: str) -> None:
    """Replace the section of RESULTS.md with this run's title (or append it)."""
    old = path.read_text() if path.exists() else ""
    start = old.find(text.splitlines()[0] + "\n")
    if start >= 0:
        end = old.find("\n## ", start + 1)
        old = old[:start] + (old[end + 1:] if end >= 0 else "")
    path.write_text(old.rstrip() + "\n\n" + text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=3600.0, help="seconds (default 3600; 600: the short run)")
    parser.add_argument("--rate", type=float, default=10.0, help="frames per second")
    parser.add_argument("--shape", type=int, nargs=2, default=[1024, 1024])
    parser.add_argument("--points", type=int, default=100, help="frames per scan")
    parser.add_argument("--publish-period", type=float, default=1.0)
    parser.add_argument("--disk-mb", type=int, default=512, help="size of the maps folder's tmpfs")
    parser.add_argument("--restart-at", type=float, default=0.4, help="store restart, fraction of the run")
    parser.add_argument("--disk-full-at", type=float, default=0.7, help="disk-full episode, fraction of the run")
    parser.add_argument("--disk-full-seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds between the daemon's start and the first scan")
    parser.add_argument("--malloc-arena-max", type=int, default=0,
                        help="MALLOC_ARENA_MAX for the daemon (glibc: one malloc arena per thread by default)")
    parser.add_argument("--out", type=Path, help="write the results into this RESULTS.md")
    args = parser.parse_args()
    if (why := SmallDisk.available()) is not None:
        parser.error(why)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = run(args)
    logger.info("%s", json.dumps(result, indent=1))
    if args.out:
        write_results(args.out, markdown(result))


if __name__ == "__main__":
    main()
