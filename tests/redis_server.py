"""A real `redis-server` for tests: a free 127.0.0.1 port, its own directory, no persistence
(`--save ''`, no AOF), killed at teardown. `.ci/run` installs the server (/usr/bin/redis-server).

    def test_x(redis_server: RedisServer) -> None:     # the fixture: see `serve`
        url = redis_server.url           # redis://127.0.0.1:PORT/0
        redis_server.stop()              # an outage ...
        redis_server.start()             # ... and the same server back, on the same port
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self, within: float = 10.0) -> None:
        """Start (or restart) the server and wait until it answers PING."""
        self.dir.mkdir(parents=True, exist_ok=True)
        log = (self.dir / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--save", "", "--appendonly", "no", "--protected-mode", "no"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + within
        client = self.client()
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"redis-server did not start on port {self.port}: see "
                            f"{self.dir / 'redis.log'}"
                        ) from None
                    time.sleep(0.02)  # the server process is starting: nothing to wait on
        finally:
            client.close()

    def stop(self) -> None:
        """Kill the server (SIGKILL: an outage, not a shutdown) and wait for it to exit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def used_memory(self) -> int:
        client = self.client()
        try:
            return int(client.info("memory")["used_memory"])
        finally:
            client.close()


def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The body of a module's `redis_server` fixture:

    @pytest.fixture
    def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
        yield from serve(tmp_path_factory)
    """
    if not Path(SERVER).exists():
        pytest.fail(f"{SERVER} is missing: install redis-server (.ci/run does)")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
