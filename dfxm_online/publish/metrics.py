"""Prometheus metrics and the /status endpoint of the daemon.

One `CollectorRegistry` per daemon (not the global one), so that several daemons in one
process (tests, tiles) do not collide. `serve_http` exposes `/metrics` (prometheus text
format) and `/status` (JSON: every scan's state, reason and progress) on one port.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

logger = logging.getLogger(__name__)


class Metrics:
    """The daemon's counters, gauges and histograms."""

    def __init__(self, latency_budget: float = 0.5) -> None:
        """`latency_budget`: a bucket boundary of `dfxm_frame_to_map_seconds`, so that the
        fraction of frames published within it can be read off the histogram."""
        self.registry = CollectorRegistry()
        r = self.registry
        self.frames = Counter("dfxm_frames_processed", "Frames added to the accumulators", registry=r)
        self.scans = Counter("dfxm_scans", "Scans finished, by final state", ["state"], registry=r)
        self.active = Gauge("dfxm_scans_active", "Scans being processed now", registry=r)
        self.batch_seconds = Histogram(
            "dfxm_batch_seconds", "Time to update the accumulators with one batch", registry=r,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.read_seconds = Histogram(
            "dfxm_read_seconds", "Time a scan worker waited for and read one batch of frames",
            registry=r, buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.publish_seconds = Histogram(
            "dfxm_publish_seconds", "Time to compute and write one scan's maps", registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.latency_seconds = Histogram(
            "dfxm_frame_to_map_seconds", "Time from a frame's arrival to the maps that include it",
            registry=r, buckets=sorted({0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, float(latency_budget)}),
        )
        self.publish_errors = Counter("dfxm_publish_errors", "Failed writes of a maps file", registry=r)
        self.store_errors = Counter("dfxm_store_errors", "Errors talking to the data store", registry=r)

    def text(self) -> bytes:
        return generate_latest(self.registry)


def serve_http(port: int, metrics: Metrics, status: Callable[[], dict], host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Start the /metrics + /status server in a daemon thread; returns the server.

    `host` is the address it listens on (the daemon's `metrics_address`): loopback unless
    configured otherwise, since /status is not authenticated and names every scan, folder
    and the store's address."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path.startswith("/metrics"):
                body, ctype = metrics.text(), CONTENT_TYPE_LATEST
            elif self.path.startswith("/status"):
                body, ctype = json.dumps(status(), indent=1).encode(), "application/json"
            else:
                self.send_error(404, "try /metrics or /status")
                return
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args) -> None:
            logger.debug("http: " + fmt, *args)

    class Server(ThreadingHTTPServer):
        def handle_error(self, request, client_address) -> None:
            # a client that went away before its reply (a scrape that timed out) is one
            # debug line, not a traceback on stderr
            exc = sys.exc_info()[1]
            if isinstance(exc, (BrokenPipeError, ConnectionResetError)):
                logger.debug("http: %s went away before its reply (%s)", client_address[0], exc)
                return
            super().handle_error(request, client_address)

    if ":" in host:  # an IPv6 address ("::1", "::")
        Server.address_family = socket.AF_INET6
    server = Server((host, port), Handler)
    thread = threading.Thread(target=server.serve_forever, name="dfxm-http", daemon=True)
    thread.start()
    logger.info("metrics and status on http://%s:%d/metrics and /status", host, server.server_address[1])
    return server
