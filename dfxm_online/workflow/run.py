"""Run one scan-end workflow in this process: `python -m dfxm_online.workflow.run GRAPH JOB`.

What the daemon's local pool starts for each scan (workflow/trigger.py): a separate process,
so that a workflow's memory, threads and crashes never touch the live path. JOB is a JSON
file of the graph's start-node inputs (workflow/job.py). Exit code 0 when the graph ran; 1
with the reason on the last line of stderr (one line) when it did not.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..logtext import one_line
from .catalog import graph_path

logger = logging.getLogger(__name__)


def root_cause(exc: BaseException) -> BaseException:
    """The innermost cause: ewoks wraps a task's error in TaskExecutionError."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def execute(graph: str, inputs: dict, job_id: str | None = None) -> dict:
    """Execute `graph` (a shipped name or a path) with `inputs` for its start node."""
    import ewoks

    execinfo = {"job_id": job_id} if job_id else None
    return ewoks.execute_graph(str(graph_path(graph)), inputs=[{"name": k, "value": v} for k, v in inputs.items()],
                               execinfo=execinfo, outputs=[{"all": False}])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dfxm_online.workflow.run")
    parser.add_argument("graph")
    parser.add_argument("job", type=Path, help="JSON file of the start node's inputs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    inputs = json.loads(args.job.read_text())
    try:
        execute(args.graph, inputs, inputs.get("job_id") or None)
    except Exception as exc:  # noqa: BLE001 - any failure is reported, as one line
        cause = root_cause(exc)
        print(f"workflow failed: {one_line(f'{type(cause).__name__}: {cause}')}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
