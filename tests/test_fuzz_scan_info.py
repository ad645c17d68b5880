"""Malformed scan descriptions get a one-line reason written for a person (a ScanError),
never a raw ValueError/TypeError/OverflowError (hypothesis-generated scan_info and stream
shapes: huge, negative, NaN, strings, wrong types)."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dfxm_online.acquisition.geometry import ScanError, geometry_from_scan_info

junk = st.one_of(st.none(), st.booleans(), st.integers(-10**31, 10**31), st.floats(allow_nan=True, allow_infinity=True),
                 st.text(max_size=8), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3),
                                                                                             st.integers(), max_size=2))
number = st.one_of(st.integers(-5, 50), st.floats(-2, 2), junk)


@st.composite
def scans(draw):
    motors = draw(st.lists(st.sampled_from(["mu", "chi", "ffz", "omega"]), max_size=4, unique=True))
    channels = {f"axis:{m}": {"start": draw(number), "stop": draw(number), "axis_points": draw(number),
                              "axis_id": i} for i, m in enumerate(motors)}
    info = {"npoints": draw(number), "channels": draw(st.one_of(st.just(channels), junk)), "title": draw(st.text())}
    shape = draw(st.one_of(st.none(), st.tuples(st.integers(-3, 3000), st.integers(-3, 3000)),
                           st.tuples(st.integers(0, 5)), st.lists(st.integers(), max_size=4).map(tuple)))
    streams = {f"axis:{m}": None for m in motors if draw(st.integers(0, 4))}  # a stream missing now and then
    streams["pco:image"] = shape
    return info, streams


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scans())
def test_any_scan_info_gives_a_geometry_or_a_one_line_reason(scan):
    info, streams = scan
    try:
        geometry = geometry_from_scan_info(info, streams)
    except ScanError as exc:
        message = str(exc)
        assert message and "\n" not in message and len(message) < 300
        return
    assert 1 <= geometry.npoints <= 10**9 and 1 <= len(geometry.motors) <= 3
    for axis in geometry.motors:
        assert math.isfinite(axis.start) and math.isfinite(axis.stop) and 1 <= axis.npoints <= 10**9
