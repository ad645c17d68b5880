"""Malformed scans published through the real store, as a broken or hostile beamline would.

`scan_cases()` is a hypothesis strategy of whole scans: their identity (names with control
characters, NUL, non-ASCII, path separators, ~300 characters; names that are not UTF-8),
their scan_info (npoints and motor ranges that are junk: NaN, inf, 10**30, strings, lists),
their motor streams (missing, of any dtype, NaN/inf readings, fewer or more points than
frames) and their image stream (missing, bool / complex / float / integer dtypes, NaN/inf
pixels, declared shapes that are 1-D, 3-D, huge or free, frames of 0 pixels, 1 point or
none) and how they end (closed with any end reason, or never: a publisher that died).
`publish()` sends one through blissdata; `outcome_problems()` says what the daemon did
wrong with it: a scan left running, a reason that is a raw exception text or not one line,
a maps file out of the output folder or not final, a temporary file left behind.
tests/test_fuzz_store.py runs them into a real daemon (~200 in `make test`, 1,000+ in
`make soak`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from blissdata.redis_engine.store import DataStore
from blissdata.streams.default import Stream
from hypothesis import strategies as st

from dfxm_online.publish.nexus import read_maps_file

FINAL = ("complete", "aborted", "failed")

# -- the cases ------------------------------------------------------------------------------
#: names as a beamline might send them, and worse (NUL, newline, escape, separators, long)
_plain_names = st.one_of(
    st.sampled_from(["ascan", "amesh", "dark", "a/b", "a_b", "a b", "..", "/", "", "é\u202etxt", "\x00", "x\n[ERROR] forged"]),
    st.text(max_size=12),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=200, max_size=300),
)
#: names that are not UTF-8 (bytes decoded with surrogateescape, as os.fsdecode does):
#: RedisJSON refuses them, so such a scan never reaches the daemon (`publish` says so)
_not_utf8 = st.binary(min_size=1, max_size=6).map(lambda b: (b + b"\xff").decode("utf-8", "surrogateescape"))
#: names as a beamline might send them, and worse (NUL, newline, escape, separators, long),
#: now and then not UTF-8 at all
names = st.integers(0, 24).flatmap(lambda k: _not_utf8 if k == 0 else _plain_names)
junk = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(allow_nan=True, allow_infinity=True),
                 st.text(max_size=6), st.lists(st.integers(-3, 3), max_size=3), st.just({"a": 1}))
small_number = st.one_of(st.integers(-2, 8), st.floats(-1, 1, allow_nan=False), junk)
DTYPES = ["uint16", "uint8", "int32", "float32", "float64", "bool", "complex64", "complex128", ">u2"]
MOTOR_DTYPES = ["float64", "float32", "int32", "bool", "complex128"]


@dataclass
class MotorCase:
    name: str
    stream: bool  # published at all (a declared motor whose stream is missing)
    dtype: str
    start: object
    stop: object
    axis_points: object
    special: str  # "" | "nan" | "inf" | "constant": what its readings hold
    extra_points: int  # readings beyond the frames (negative: fewer)


@dataclass
class ScanCase:
    session: str
    name: str
    number: int
    title: str
    path: str
    npoints: object
    motors: list[MotorCase]
    image: bool
    dtype: str
    declared: tuple
    frame_shape: tuple[int, int]
    points: int
    special_pixels: str  # "" | "nan" | "inf"
    ending: str  # "SUCCESS" | "ABORTED" | "FAILURE" | "never closed"
    extra_info: dict = field(default_factory=dict)


def often(draw, usual, unusual, odds: int = 5):
    """`usual` but one time in `odds` `unusual`: most scans are nearly valid, so that the
    fuzz reaches the frames, the accumulators and the files, not only the first check."""
    return draw(unusual) if draw(st.integers(0, odds - 1)) == 0 else draw(usual)


@st.composite
def motor_cases(draw, name: str, points: int, first: bool) -> MotorCase:
    start = draw(st.floats(-1, 1))
    return MotorCase(
        name=name, stream=often(draw, st.just(True), st.just(False), 10),
        dtype=often(draw, st.just("float64"), st.sampled_from(MOTOR_DTYPES), 4),
        start=often(draw, st.just(start), small_number, 8),
        stop=often(draw, st.just(start + 0.5), small_number, 8),
        axis_points=often(draw, st.just(points if first else 1), small_number, 8),
        special=often(draw, st.just(""), st.sampled_from(["nan", "inf", "constant"]), 5),
        extra_points=often(draw, st.just(0), st.integers(-2, 2), 6),
    )


@st.composite
def scan_cases(draw) -> ScanCase:
    points = draw(st.sampled_from([0, 1, 2, 3, 5, 8]))
    motor_names = often(draw, st.sampled_from([["mu"], ["mu", "chi"]]),
                        st.lists(st.sampled_from(["mu", "chi", "ffz", "omega"]), max_size=4, unique=True))
    h, w = often(draw, st.sampled_from([(4, 3), (6, 6), (1, 5), (1, 1)]), st.sampled_from([(0, 4), (3, 0), (512, 512)]))
    declared = often(draw, st.just((h, w)),
                     st.sampled_from([(-1, -1), (4096, 4096), (10**6, 10**6), (w,), (2, h, w), ()]), 4)
    return ScanCase(
        session=draw(names), name=draw(names), number=draw(st.integers(-3, 10**12)), title=draw(names),
        path=draw(st.sampled_from(["/data/s/s.h5", "", "../../../etc/passwd", "/", "x.h5"]) | names),
        npoints=often(draw, st.just(points), st.one_of(st.just(10**30), small_number)),
        motors=[draw(motor_cases(m, points, i == 0)) for i, m in enumerate(motor_names)],
        image=often(draw, st.just(True), st.just(False), 10),
        dtype=often(draw, st.sampled_from(["uint16", "uint16", "int32", "float32"]), st.sampled_from(DTYPES), 3),
        declared=declared, frame_shape=(h, w), points=points,
        special_pixels=often(draw, st.just(""), st.sampled_from(["nan", "inf"]), 4),
        ending=draw(st.sampled_from(["SUCCESS", "SUCCESS", "SUCCESS", "ABORTED", "FAILURE", "never closed"])),
        extra_info=draw(st.dictionaries(st.sampled_from(["type", "data_dim", "npoints1", "zigzag", "count_time"]),
                                        junk, max_size=2)),
    )


# -- publishing -----------------------------------------------------------------------------
def scan_info(case: ScanCase) -> dict:
    channels = {f"axis:{m.name}": {"start": m.start, "stop": m.stop, "axis_points": m.axis_points, "axis_id": i}
                for i, m in enumerate(case.motors)}
    channels["pco:image"] = {"dim": 2}
    return {"npoints": case.npoints, "title": case.title, "type": case.name, "filename": case.path,
            "channels": channels, **case.extra_info}


def frames_of(case: ScanCase, n: int, rng: np.random.Generator) -> np.ndarray:
    h, w = case.frame_shape
    values = rng.integers(0, 200, size=(n, h, w)).astype(np.float64)
    if case.special_pixels and values.size:
        values.reshape(-1)[:: max(1, values.size // 3)] = np.nan if case.special_pixels == "nan" else np.inf
    if np.dtype(case.dtype).kind in "ui":
        values = np.nan_to_num(values, nan=0, posinf=100, neginf=0)
    if case.dtype == "bool":
        return np.nan_to_num(values) > 100
    return values.astype(case.dtype)


def positions_of(motor: MotorCase, n: int) -> np.ndarray:
    values = np.linspace(-0.5, 0.5, max(n, 0)) if motor.special != "constant" else np.zeros(max(n, 0))
    if motor.special and motor.special != "constant" and n:
        values[n // 2] = np.nan if motor.special == "nan" else np.inf
    if motor.dtype == "bool":
        return values > 0
    if motor.dtype == "int32":
        return np.nan_to_num(values * 10).astype(np.int32)
    return values.astype(motor.dtype)


@dataclass
class Published:
    key: str | None  # None: the store (or blissdata) refused the scan; the daemon never sees it
    refused: str = ""  # why, when it did


def publish(url: str, case: ScanCase, seed: int = 0) -> Published:
    """Publish `case` through blissdata (the beamline's side). Whatever blissdata or the
    store refuses mid-way is where a real publisher would have stopped too: the scan is
    closed if it was created (unless the case is a publisher that dies)."""
    store = DataStore(url)
    identity = {"name": case.name, "number": case.number, "data_policy": "no_policy", "session": case.session,
                "path": case.path}
    try:
        scan = store.create_scan(identity, info=scan_info(case))
    except Exception as exc:  # the store refuses names that are not UTF-8, numbers it cannot hold
        return Published(None, f"{type(exc).__name__}: {exc}"[:200])
    rng = np.random.default_rng(seed)
    try:
        motors = {m.name: scan.create_stream(Stream.make_definition(f"axis:{m.name}", m.dtype))
                  for m in case.motors if m.stream}
        image = (scan.create_stream(Stream.make_definition("pco:image", case.dtype, case.declared))
                 if case.image else None)
        scan.prepare()
        scan.start()
        for m in case.motors:
            if m.stream and case.points + m.extra_points > 0:
                motors[m.name].send(positions_of(m, case.points + m.extra_points))
        if image is not None and case.points:
            image.send(frames_of(case, case.points, rng))
    except Exception:  # blissdata refused a frame of another shape: the scan ends there
        pass
    if case.ending != "never closed":
        try:
            scan.stop()
            scan.info["end_reason"] = case.ending
            scan.close()
        except Exception:
            pass
    return Published(scan.key)


# -- what the daemon must have done ---------------------------------------------------------
#: a reason that is a raw exception's text: "ValueError: ...", "KeyError: 'x'", a traceback,
#: or Python's own phrasing of one
RAW = re.compile(r"^\w*(Error|Exception|Warning)\b|Traceback|object has no attribute|unsupported operand|"
                 r"not subscriptable|takes \d+ positional|invalid literal for|can't multiply sequence|"
                 r"NoneType|could not broadcast|index \d+ is out of bounds|operands could not")


def reason_problem(reason: str) -> str | None:
    """What is wrong with a scan's reason as text for a person, or None."""
    if "\n" in reason or "\r" in reason:
        return "reason spans several lines"
    if len(reason) > 600:
        return f"reason of {len(reason)} characters"
    if RAW.search(reason):
        return "reason is a raw exception text"
    return None


def outcome_problems(daemon, key: str, output_dir: Path) -> list[str]:
    """Everything the daemon did wrong with the scan `key` (it must have finished)."""
    problems = []
    status = daemon.scan_status(key)
    worker = daemon.workers.get(key)
    if worker is not None and worker.is_alive():
        problems.append("worker still running")
    if status is None:
        return problems  # the scan could not be loaded (logged): nothing written, nothing stuck
    if status.state not in FINAL:
        problems.append(f"left {status.state!r}")
    if status.state == "failed" and not status.reason:
        problems.append("failed without a reason")
    if (problem := reason_problem(status.reason)) is not None:
        problems.append(problem)
    path = Path(status.path)
    if not path.resolve().is_relative_to(Path(output_dir).resolve()):
        problems.append(f"maps file {path} out of the output folder")
    if path.exists():
        try:
            _, process = read_maps_file(path)
        except (OSError, KeyError) as exc:
            problems.append(f"maps file unreadable: {exc}")
        else:
            if process.get("state") != status.state:
                problems.append(f"file says {process.get('state')!r}, /status {status.state!r}")
            if (problem := reason_problem(str(process.get("reason", "")))) is not None:
                problems.append(f"file: {problem}")
    return [f"{p} (reason: {status.reason!r:.200})" for p in problems]
