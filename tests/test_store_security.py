"""Security settings: the metrics/status address, a Redis ACL user, a TLS (rediss://) store.

The embedded store's valkey-server is built with TLS as a loadable module that the wheel
does not ship ("Missing implement of connection type tls"), so the TLS test puts a TLS
terminating proxy (Python's ssl, a certificate made by openssl for the test) in front of
the store: everything the daemon sends goes over TLS, its three kinds of connection
included (blissdata's, the frame reader's own, the announcer's).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import ssl
import subprocess
import threading
import urllib.request

import pytest
import redis

from dfxm_online.acquisition.simulate import SimulationSpec, simulate
from dfxm_online.cli import build_parser
from dfxm_online.config import ConfigError, DaemonConfig, load_config
from dfxm_online.daemon import Daemon
from dfxm_online.store import free_port

from .conftest import wait_done

#: what the daemon needs of the store (docs/operations.md): read commands, transactions,
#: RediSearch's FT.SEARCH and RedisJSON's JSON.GET, and XADD for the maps announcements
DAEMON_ACL = ["~*", "&*", "+@read", "+@connection", "+@transaction", "+ft.search", "+json.get", "+xadd"]


def spec(tmp_path, session: str) -> SimulationSpec:
    return SimulationSpec(kind="rocking", points=11, frame_shape=(16, 16), scan_dir=tmp_path / "scans", session=session)


def own_addresses() -> list[str]:
    """This host's IPv4 addresses other than loopback."""
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    except OSError:
        return []
    return sorted({i[4][0] for i in infos if not i[4][0].startswith("127.")})


def test_the_status_endpoint_listens_on_loopback_unless_configured(redis_url, tmp_path):
    assert DaemonConfig().metrics_address == "127.0.0.1"
    args = build_parser().parse_args(["serve", "--redis", redis_url, "--output-dir", str(tmp_path),
                                      "--metrics-port", "1", "--metrics-address", "0.0.0.0"])
    assert load_config(None, metrics_port=args.metrics_port, metrics_address=args.metrics_address).metrics_address \
        == "0.0.0.0"
    for address, reachable_outside in (("127.0.0.1", False), ("0.0.0.0", True)):
        port = free_port()
        daemon = Daemon(redis_url, tmp_path / "maps", DaemonConfig(metrics_port=port, metrics_address=address)).start()
        try:
            assert daemon._http.server_address[0] == address
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as reply:
                assert reply.status == 200
            for host in own_addresses():  # the host's other addresses reach it only when asked for
                try:
                    socket.create_connection((host, port), timeout=2).close()
                    reached = True
                except OSError:
                    reached = False
                assert reached == reachable_outside, (address, host)
        finally:
            daemon.stop()


def test_a_metrics_address_that_cannot_be_used_is_one_line(redis_url, tmp_path):
    daemon = Daemon(redis_url, tmp_path, DaemonConfig(metrics_port=free_port(), metrics_address="192.0.2.254"))
    with pytest.raises(ConfigError, match=r"metrics server on 192.0.2.254:\d+: "):
        daemon.start()


def test_a_redis_acl_user_with_the_documented_rights_runs_the_daemon(store, redis_url, tmp_path, caplog):
    admin = redis.Redis.from_url(redis_url)
    admin.execute_command("ACL", "SETUSER", "dfxm-test", "reset", "on", ">s3cret:pw", *DAEMON_ACL)
    url = redis_url.replace("redis://", "redis://dfxm-test:s3cret:pw@")
    daemon = Daemon(url, tmp_path / "maps", DaemonConfig(publish_period=0.2))
    try:
        with caplog.at_level(logging.INFO, logger="dfxm_online"):
            daemon.start()
            assert daemon.ready.wait(10), "the daemon did not connect as the ACL user"
            result = simulate(redis_url, spec(tmp_path, "acl"))  # the beamline writes as the default user
            assert wait_done(daemon, result.scan_key).state == "complete"
        clients = admin.execute_command("CLIENT", "LIST").decode()
        assert "user=dfxm-test" in clients  # the daemon's connections are the ACL user's
        assert "s3cret" not in caplog.text and "s3cret" not in str(daemon.status())
        # the user cannot write the beamline's data: the ACL holds, the daemon needs no more
        with pytest.raises(redis.exceptions.NoPermissionError):
            redis.Redis.from_url(url).set("esrf:forged", 1)
    finally:
        daemon.stop()
        admin.execute_command("ACL", "DELUSER", "dfxm-test")


class TlsProxy:
    """A TLS endpoint on a free port forwarding every connection to the plain store."""

    def __init__(self, backend_port: int, cert: str, key: str) -> None:
        self.backend_port = backend_port
        self.port = free_port()
        self.connections = 0
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name="tls-proxy", daemon=True)

    async def _pipe(self, reader, writer) -> None:
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(self, client_reader, client_writer) -> None:
        self.connections += 1
        reader, writer = await asyncio.open_connection("127.0.0.1", self.backend_port)
        await asyncio.gather(self._pipe(client_reader, writer), self._pipe(reader, client_writer))

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port,
                                                                   ssl=self.context))
        self.ready.set()
        self.loop.run_forever()
        server.close()
        tasks = asyncio.all_tasks(self.loop)  # the connections still piped: ended, not left
        for task in tasks:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.loop.run_until_complete(server.wait_closed())
        self.loop.close()

    def __enter__(self) -> TlsProxy:
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make the test's certificate")
def test_the_daemon_works_over_tls(store, redis_url, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    backend = int(redis_url.rsplit(":", 1)[1])
    with TlsProxy(backend, str(cert), str(key)) as proxy:
        url = f"rediss://127.0.0.1:{proxy.port}?ssl_ca_certs={cert}"
        # the proxy speaks TLS only: a plain client gets nowhere
        with pytest.raises(redis.exceptions.ConnectionError):
            redis.Redis.from_url(f"redis://127.0.0.1:{proxy.port}", socket_timeout=2).ping()
        daemon = Daemon(url, tmp_path / "maps", DaemonConfig(publish_period=0.2))
        try:
            daemon.start()
            assert daemon.ready.wait(10), "the daemon did not connect over TLS"
            result = simulate(redis_url, spec(tmp_path, "tls"))
            status = wait_done(daemon, result.scan_key)
            assert status.state == "complete", status.reason
            assert status.frames_processed == 11
        finally:
            daemon.stop()
        # the listener, blissdata's scan reads, the frame reader's own connection, the announcer
        assert proxy.connections >= 3
