"""Celery configuration of dfxm-online's ewoksjob workers and of the daemon as their client.

Point both at it: the workers with `EWOKS_CONFIG_URI=/etc/dfxm-online/celeryconfig.py`
(services/ewoksjob-worker@.service), the daemon with `[post_scan] celery_config` (or the
same environment variable). The embedded store (or the beamline's Redis) is the broker and
the result backend, in databases of their own: blissdata's scans live in database 0.
"""

import os

_store = os.environ.get("DFXM_CELERY_REDIS", "redis://127.0.0.1:6379")

broker_url = f"{_store}/1"
result_backend = f"{_store}/2"
# a job's result (the graph's small outputs: paths) is kept a day
result_expires = 86400
# STARTED is recorded, so that the daemon can tell queued from running jobs
task_track_started = True
# one job at a time per process slot: a scan's fit bands spread over the workers instead of
# queueing behind one worker's prefetched messages
worker_prefetch_multiplier = 1
# and none reserved while every slot is busy: a worker running a scan's workflow would
# otherwise hold one of that scan's fit bands in its buffer until the workflow, which waits
# for the band, gives up waiting (measured: a 2-band fit took 41 s instead of 16 s)
worker_disable_prefetch = True
# a job whose worker process dies (OOM, kill) fails with WorkerLostError: the daemon records
# it, the sharded fit submits the band again (workflow/sharding.py)
task_acks_late = False
# JSON only, never pickle: what crosses the broker is paths and settings
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
broker_connection_retry_on_startup = True
