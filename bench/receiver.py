"""A real nginx as a fast HTTP receiver for the delivery benchmarks: it answers every request with
one fixed status (204 by default), reads and discards request bodies, logs nothing per request.

    with NginxReceiver() as rx:
        ...  # point the sink at rx.url

nginx runs in the foreground (`daemon off;`, a master and 2 workers) from a temp prefix holding
its nginx.conf, pid file and error log; the listening port is a free 127.0.0.1 port. Needs
/usr/sbin/nginx (`apt-get install nginx`). See `receiver_selftest.py` for its throughput.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["NGINX", "NginxMissing", "NginxReceiver"]

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)

_CONF = """\
daemon off;
master_process on;
worker_processes {workers};
{user}pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
{temps}
  keepalive_requests 100000;
  keepalive_timeout 300s;
  client_max_body_size 10m;
  client_body_buffer_size 10m;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    # `return` finalizes the request, and nginx reads and discards any request body first, so
    # a POST of up to client_max_body_size keeps the connection alive.
    location / {{ return {status}; }}
  }}
}}
"""


class NginxMissing(RuntimeError):
    """nginx is not installed."""


def free_port() -> int:
    """A port free on 127.0.0.1 right now (nginx binds it a moment later; start() retries)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NginxReceiver:
    """nginx answering `status` to every request on `url` (http://127.0.0.1:PORT), started on
    enter (returns once the port accepts connections) and stopped on exit."""

    def __init__(self, status: int = 204, *, workers: int = 2) -> None:
        if NGINX is None:
            raise NginxMissing(
                "nginx is not installed (/usr/sbin/nginx missing): run `apt-get install nginx`"
            )
        self.status = status
        self.workers = workers
        self.port = 0
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def prefix(self) -> Path:
        assert self._tmp is not None, "not started"
        return Path(self._tmp.name)

    def error_log(self) -> str:
        """nginx's error log so far (startup problems, worker crashes)."""
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> NginxReceiver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _write_conf(self) -> Path:
        prefix = self.prefix
        self.port = free_port()
        temps = "\n".join(
            f"  {kind}_temp_path {prefix}/{kind}_temp;"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        # As root, nginx would switch its workers to `nobody`, who cannot use the 0700 temp
        # prefix; keep them root. As another user, the directive only draws a warning: omit it.
        user = "user root root;\n" if os.geteuid() == 0 else ""
        conf = _CONF.format(
            workers=self.workers,
            user=user,
            prefix=prefix,
            temps=temps,
            port=self.port,
            status=self.status,
        )
        (prefix / "error.log").unlink(missing_ok=True)  # a retry reads only its own errors
        path = prefix / "nginx.conf"
        path.write_text(conf)
        return path

    def start(self, timeout: float = 10.0, attempts: int = 3) -> None:
        """Start nginx and wait until its port accepts connections; a port taken between
        `free_port()` and nginx's bind means another try on a new port."""
        self._tmp = tempfile.TemporaryDirectory(prefix="trackd-nginx-")
        try:
            for attempt in range(attempts):
                conf = self._write_conf()
                try:
                    self._start(conf, timeout)
                    return
                except RuntimeError:
                    if "Address already in use" not in self.error_log() or attempt == attempts - 1:
                        raise
        except BaseException:
            self.stop()
            raise

    def _start(self, conf: Path, timeout: float) -> None:
        prefix = self.prefix
        # `daemon off;` is in the conf; `-g 'daemon off;'` as well would be a duplicate directive.
        # -e: where nginx logs before it has read the conf (else /var/log/nginx/error.log).
        self._proc = subprocess.Popen(
            [NGINX, "-p", f"{prefix}/", "-c", str(conf), "-e", str(prefix / "error.log")],  # type: ignore[list-item]
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                code, self._proc = self._proc.returncode, None
                raise RuntimeError(f"nginx exited at start ({code}): {self.error_log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self._terminate()
                raise TimeoutError(f"nginx did not listen within {timeout}s: {self.error_log()}")
            time.sleep(0.005)

    def _terminate(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)  # graceful: idle keep-alive connections close
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)

    def stop(self) -> None:
        """Stop nginx (graceful, then SIGKILL after 10 s) and remove its prefix."""
        self._terminate()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
