"""Hypothesis-generated malformed scans through the real store into a real daemon (issue 25).

Each example publishes a batch of scans (tests/fuzz_scans.py: junk scan_info, motor and
image streams of any dtype, bool and complex included, NaN/inf, empty, 1-point, huge
declared sizes, names with control characters or not UTF-8) and waits for the daemon to
finish them all; then: zero daemon deaths (the listener and every thread alive, no
exception escaped a thread), zero stuck scans (every one finished: complete, aborted or
failed, the idle timeout included), zero raw exception texts as reasons, no maps file out
of the output folder, no temporary file left. ~200 scans here; `make soak` runs 1,000+
(DFXM_FUZZ_SCANS).
"""

from __future__ import annotations

import os
import threading
import time

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from dfxm_online.config import DaemonConfig

from .fuzz_scans import outcome_problems, publish, scan_cases

#: scans per example (published together, processed concurrently) and in all
BATCH = 10
SCANS = int(os.environ.get("DFXM_FUZZ_SCANS", "200"))


@pytest.fixture()
def thread_errors():
    """Exceptions that escaped any thread (a worker or writer thread dying)."""
    caught: list[str] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: caught.append(f"{args.thread.name}: {args.exc_type.__name__}: {args.exc_value}")
    yield caught
    threading.excepthook = previous


def test_malformed_scans_through_the_store_never_hurt_the_daemon(make_daemon, redis_url, tmp_path, thread_errors):
    out = tmp_path / "maps"
    # idle scans (a publisher that died) end after 1 s; a 512x512 frame over the budget
    config = DaemonConfig(publish_period=0.2, scan_idle_timeout=1.0, memory_budget_mb=64, quicklook=False)
    daemon = make_daemon(config, output_dir=out)
    seen = {"published": 0, "refused": 0, "states": {}}

    # no shrinking: each step would run a batch through the daemon again, and the failure
    # message names the offending scans' cases already
    @settings(max_examples=max(1, SCANS // BATCH), deadline=None, database=None, print_blob=False,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture])
    @given(st.lists(scan_cases(), min_size=BATCH, max_size=BATCH))
    def run(cases):
        keys = []
        for i, case in enumerate(cases):
            published = publish(redis_url, case, seed=i)
            if published.key is None:
                seen["refused"] += 1
            else:
                keys.append((published.key, case))
        seen["published"] += len(keys)
        deadline = time.monotonic() + 60
        for key, _case in keys:
            while time.monotonic() < deadline and (key not in daemon.workers or daemon.workers[key].is_alive()):
                time.sleep(0.02)
        problems = []
        for key, case in keys:
            found = outcome_problems(daemon, key, out)
            if found:
                problems.append(f"{key}: {found}; case {case!r:.400}")
            status = daemon.scan_status(key)
            if status is not None:
                seen["states"][status.state] = seen["states"].get(status.state, 0) + 1
        assert not problems, "\n".join(problems)
        assert daemon._thread.is_alive(), "the daemon's listener died"
        assert not thread_errors, thread_errors
        leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]
        assert not leftovers, leftovers

    run()
    # the fuzz reached the daemon, and not only with scans it refuses
    assert seen["published"] >= SCANS // 2, seen
    print(f"fuzzed scans: {seen}")
    assert seen["states"].get("complete", 0) + seen["states"].get("aborted", 0) > 0, seen
