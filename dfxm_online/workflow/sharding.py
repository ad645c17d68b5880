"""One scan's fit spread over ewoksjob workers: bands of detector rows as separate jobs.

The fit of each pixel is independent of the others, so bands of rows fitted anywhere and
put together give the fit of the whole frame (the same per-pixel solver, the same start,
the same frames). The fit stage submits `fit_shards` bands to the workflow's ewoksjob queue
(`workflows/fit_band.json`), fits the first band itself while the others run, and then:

- a band whose job failed (its worker died: Celery's WorkerLostError, or any error) is
  submitted again, at most `RETRIES` times;
- a band no worker has picked up `STEAL_AFTER` seconds after its submission, when the stage
  has nothing else to do, is revoked and fitted by the stage itself, so that a queue whose
  only worker runs this very workflow cannot deadlock (a band picked up meanwhile is fitted
  twice: same result, same file).

Only paths cross the broker: the job (JSON) with the state and maps parts on shared storage.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from celery.result import AsyncResult

from .catalog import load_graph
from .job import Job
from .parts import Part, read_part, write_part
from .stages import _state, fit_band

logger = logging.getLogger(__name__)

#: times a failed band is submitted again
RETRIES = 2
#: seconds between looks at the bands' jobs
POLL = 0.2
#: seconds a band may wait for a worker before the stage fits it itself
STEAL_AFTER = 30.0


def row_shards(height: int, shards: int) -> list[tuple[int, int]]:
    """`shards` bands of rows as equal as can be (fewer when the frame has fewer rows)."""
    edges = np.linspace(0, height, min(shards, height) + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def _submit(job: Job, rows: tuple[int, int], stage: str):
    from ewoksjob.client import submit

    inputs = [{"id": "fit_band", "name": "job", "value": job.model_dump()},
              {"id": "fit_band", "name": "rows", "value": list(rows)},
              {"id": "fit_band", "name": "stage", "value": stage}]
    # the graph itself, not its path: a worker on another host may have another install
    return submit(args=(load_graph("fit_band"),), kwargs={"inputs": inputs}, queue=job.queue)


def fit_sharded(job: Job) -> Job:
    """The fit stage: in this task (`fit_shards` 1, or no ewoksjob) or over workers."""
    if not job.fit or job.fit_shards <= 1 or not job.ewoksjob:
        return fit_band(job)
    pipeline = _state(job)
    if not pipeline.geometry.motors:
        return job
    shards = row_shards(pipeline.frame_shape[0], job.fit_shards)
    stages = [f"fit_{i}" for i in range(len(shards))]
    pending = {i: _submit(job, shards[i], stages[i]) for i in range(1, len(shards))}
    submitted = dict.fromkeys(pending, time.monotonic())
    tries = dict.fromkeys(pending, 0)
    logger.info("%s: fit in %d bands of rows, %d submitted to queue %s", job.output, len(shards), len(pending), job.queue)
    fit_band(job, shards[0], stages[0])
    while pending:
        for i, future in list(pending.items()):
            # the job's state and result from the backend, without AsyncResult.get(): this
            # stage runs inside a Celery task itself, where get() is refused
            result = AsyncResult(future.uuid)
            state = result.state
            if state == "SUCCESS":
                del pending[i]
            elif state in ("FAILURE", "REVOKED"):
                if tries[i] >= RETRIES:
                    raise RuntimeError(f"fit band {shards[i]} failed {tries[i] + 1} times: {result.result}")
                tries[i] += 1
                logger.warning("fit band %s failed (%s): submitted again", shards[i], result.result)
                pending[i] = _submit(job, shards[i], stages[i])
                submitted[i] = time.monotonic()
            elif state == "PENDING" and time.monotonic() - submitted[i] > STEAL_AFTER:
                # still queued (workers track STARTED: services/celeryconfig.py)
                result.revoke()
                logger.info("fit band %s not picked up by a worker: fitted here", shards[i])
                fit_band(job, shards[i], stages[i])
                del pending[i]
        if pending:
            time.sleep(POLL)
    return _assemble(job, shards, stages)


def _assemble(job: Job, shards: list[tuple[int, int]], stages: list[str]) -> Job:
    """The bands' fit maps put together into one part, as one fit would have written it."""
    parts = [read_part(job.part_path(stage)) for stage in stages]
    fit: dict[str, np.ndarray] = {}
    for (r0, r1), part in zip(shards, parts, strict=True):
        for name, values in part.groups.get("fit", {}).items():
            if name not in fit:
                fit[name] = np.array(values, copy=True)
            fit[name][r0:r1] = values[r0:r1]
    pixels = [int(p.process.get("fit_pixels", 0)) for p in parts]
    converged = sum(float(p.process.get("fit_converged_fraction", 0.0)) * n for p, n in zip(parts, pixels, strict=True))
    info = dict(parts[0].process)
    info.pop("fit_rows", None)
    info.pop("fit_host", None)
    info.update(fit_pixels=sum(pixels), fit_converged_fraction=converged / sum(pixels) if sum(pixels) else 0.0,
                fit_seconds=max(float(p.process.get("fit_seconds", 0.0)) for p in parts),
                fit_shards=len(shards), fit_hosts=" ".join(sorted({str(p.process.get("fit_host")) for p in parts})))
    path = write_part(job.part_path("fit"), Part(groups={"fit": fit}, process=info))
    return job.model_copy(update={"parts": [*job.parts, str(path)]})
