"""The /metrics + /status server: clients that go away are not tracebacks."""

from __future__ import annotations

import socket
import struct
import time

from dfxm_online.publish.metrics import Metrics, serve_http
from dfxm_online.store import free_port


def test_a_client_gone_before_its_reply_is_no_traceback(capfd):
    replied = []

    def status() -> dict:
        time.sleep(0.3)  # the client gives up meanwhile
        replied.append(True)
        return {"scans": {str(i): "x" * 100 for i in range(50_000)}}  # ~5 MB: the writes fail

    port = free_port()
    server = serve_http(port, Metrics(), status)
    try:
        client = socket.create_connection(("127.0.0.1", port))
        client.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        # close with a reset (linger 0), as a timed-out scraper's socket may end
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        deadline = time.monotonic() + 5
        while not replied and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the handler writes and fails
        assert replied
        err = capfd.readouterr().err
        assert "Traceback" not in err, err
        # and the server still answers
        with socket.create_connection(("127.0.0.1", port)) as again:
            again.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert again.recv(12).startswith(b"HTTP/1.0 200")
    finally:
        server.shutdown()
        server.server_close()
