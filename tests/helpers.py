"""Shared test helpers: configs, log lines with sequence numbers, running the real `trackd`."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import yaml

TEST_SECRET = "test-secret-0123456789abcdef"
NGINX_FORMAT = (
    '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
    '"$http_referer" "$http_user_agent" "$http_cookie"'
)
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"


def access_line(
    seq: int,
    *,
    ts: str = "28/Nov/2026:10:00:00 +0000",
    ip: str = "203.0.113.9",
    cookie: str | None = None,
    method: str = "GET",
    status: int = 200,
    ua: str = UA,
) -> str:
    """A combined_cookie/nginx line whose path carries a unique sequence number `/p/<seq>`."""
    ck = cookie if cookie is not None else f"km_ai=visitor{seq % 97:05d}x"
    return (
        f'{ip} - - [{ts}] "{method} /p/{seq} HTTP/1.1" {status} 512 '
        f'"https://ref.example/" "{ua}" "{ck}"\n'
    )


def write_access_log(path: Path, first: int, count: int, **kw: Any) -> None:
    with path.open("a") as fh:
        fh.writelines(access_line(seq, **kw) for seq in range(first, first + count))


def make_config(
    tmp: Path,
    *,
    paths: list[str] | None = None,
    sink_path: str = "out.jsonl",
    fmt: str = "nginx",
    extra: dict[str, Any] | None = None,
    sources: list[dict[str, Any]] | None = None,
    identity: dict[str, Any] | None = None,
) -> Path:
    """A config in `tmp` with start_at: beginning, a fixed secret and no metrics server: one
    access source `web` reading `paths` in `fmt`, or the `sources` given; `identity` keys are
    added to the fixed ones."""
    secret = tmp / "secret.txt"
    secret.write_text(TEST_SECRET + "\n")
    if sources is None:
        source: dict[str, Any] = {"name": "web", "kind": "access", "paths": paths, "format": fmt}
        if fmt == "nginx":
            source["log_format"] = NGINX_FORMAT
        sources = [source]
    cfg: dict[str, Any] = {
        "state_dir": str(tmp / "state"),
        "start_at": "beginning",
        "identity": {"secret_file": str(secret), "site": "test", **(identity or {})},
        "sources": sources,
        "sink": {"type": "file", "path": sink_path},
        "metrics": {"listen": ""},
        "log": {"format": "json", "level": "info"},
    }
    cfg.update(extra or {})
    path = tmp / "trackd.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def trackd_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent", *args]


def run_trackd(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        trackd_cmd(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        check=False,
    )


def read_messages(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The messages of a JSON-lines file (its first `limit` bytes); a trailing partial line, still
    being written, is ignored."""
    if not path.exists():
        return []
    data = path.read_bytes()
    if limit is not None:
        data = data[:limit]
    complete = data[: data.rfind(b"\n") + 1]
    return [orjson.loads(line) for line in complete.splitlines() if line]


def committed_length(state_dir: Path, sink_path: Path) -> int | None:
    """The sink file length the state says was delivered (SPEC §4), or None if unknown."""
    db = state_dir / "state.db"
    if not db.exists():
        return None
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT length FROM sink_file WHERE path = ?", (str(sink_path),)
        ).fetchone()
    finally:
        conn.close()
    return None if row is None else int(row[0])


_SEQ = re.compile(r"/p/(\d+)")


def page_seqs(messages: list[dict[str, Any]]) -> list[int]:
    """The sequence numbers of page messages, in output order."""
    out = []
    for msg in messages:
        if msg.get("type") == "page":
            m = _SEQ.search(msg["properties"]["path"])
            assert m is not None, msg
            out.append(int(m.group(1)))
    return out


def outbox_bodies(state_dir: Path) -> list[dict[str, Any]]:
    db = state_dir / "state.db"
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [orjson.loads(b) for (b,) in conn.execute("SELECT body FROM outbox ORDER BY id")]
    finally:
        conn.close()


class NotifySocket:
    """A receiver for sd_notify datagrams, as systemd would be (set NOTIFY_SOCKET to `.path`)."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "notify.sock")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self.received: list[str] = []

    def wait_for(self, needle: str, timeout: float) -> str:
        """Block until a datagram containing `needle` arrives; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {needle!r} from sd_notify; got {self.received}")
            self._sock.settimeout(left)
            msg = self._sock.recv(4096).decode()
            self.received.append(msg)
            if needle in msg:
                return msg

    def close(self) -> None:
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a later daemon of the same test binds the same path


class DaemonHandle:
    """A running `trackd run` subprocess and the sd_notify socket it reports to."""

    def __init__(self, proc: subprocess.Popen[bytes], notify: NotifySocket) -> None:
        self.proc = proc
        self.notify = notify

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then wait for the drain; returns the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


@contextlib.contextmanager
def running_daemon(
    cfg: Path, tmp: Path, ready_timeout: float = 20, env: dict[str, str] | None = None
) -> Iterator[DaemonHandle]:
    """`trackd run -c cfg` as a subprocess, yielded once it notified READY=1; killed on exit if
    the test did not stop it."""
    notify = NotifySocket(tmp)
    proc = subprocess.Popen(
        trackd_cmd("run", "-c", str(cfg)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {}), "NOTIFY_SOCKET": notify.path},
    )
    try:
        notify.wait_for("READY=1", ready_timeout)
        yield DaemonHandle(proc, notify)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()


NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(pred: Callable[[], bool], timeout: float, what: str, every: float = 0.02) -> None:
    """Poll an observable condition with a deadline (for conditions no event announces)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def wait_for_seqs(out: Path, n: int, timeout: float = 30) -> list[int]:
    """Wait until `out` holds at least `n` page messages; returns their sequence numbers."""
    seqs: list[int] = []

    def enough() -> bool:
        nonlocal seqs
        seqs = page_seqs(read_messages(out))
        return len(seqs) >= n

    wait_until(enough, timeout, f"{n} page messages in {out}", every=0.05)
    return seqs


def http_get(port: int, path: str) -> tuple[int, str]:
    """GET http://127.0.0.1:`port``path`: the status and body (error statuses too)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric(port: int, name_with_labels: str) -> float | None:
    """The value of one series on the daemon's /metrics, e.g.
    `trackd_lines_total{source="web"}` (labels as the exporter writes them: sorted by name);
    None if it is not exported."""
    _status, body = http_get(port, "/metrics")
    for line in body.splitlines():
        if line.startswith(name_with_labels + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def wait_for_metric(
    port: int, name_with_labels: str, timeout: float, at_least: float = 1.0
) -> float:
    """Wait until the series reaches `at_least` (the daemon has no other signal for, say, "line
    read"); returns its value then. A server not listening yet counts as not there yet."""
    value: float | None = None

    def reached() -> bool:
        nonlocal value
        try:
            value = metric(port, name_with_labels)
        except OSError:
            value = None
        return value is not None and value >= at_least

    wait_until(reached, timeout, f"{name_with_labels} >= {at_least}", every=0.05)
    assert value is not None
    return value


class NginxServer:
    """A real nginx on 127.0.0.1:`port`, in the foreground, with its prefix, config, pid file and
    logs under `prefix`. `start()` returns once nginx says its workers started (it listens by
    then); `stop()` shuts it down gracefully — nginx writes every access log line before exiting —
    and waits for it."""

    def __init__(self, prefix: Path, http_block: str, *, tz: str = "UTC") -> None:
        assert NGINX is not None
        self.prefix = prefix
        self.tz = tz
        self._http = http_block
        self.conf = prefix / "nginx.conf"
        prefix.mkdir(parents=True, exist_ok=True)
        self._proc: subprocess.Popen[bytes] | None = None
        self.stderr = b""
        self.port = 0

    def _write_conf(self) -> None:
        self.port = free_port()
        temps = "\n".join(
            f"  {kind}_temp_path {self.prefix}/{kind}_temp;"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        http = self._http.replace("{port}", str(self.port)).replace("{prefix}", str(self.prefix))
        self.conf.write_text(
            "daemon off;\nmaster_process on;\nworker_processes 1;\n"
            f"pid {self.prefix}/nginx.pid;\nerror_log stderr notice;\n"
            "events { worker_connections 64; }\n"
            f"http {{\n{temps}\n  access_log off;\n{http}\n}}\n"
        )

    def start(self, timeout: float = 10.0, attempts: int = 3) -> None:
        """Start nginx; a port taken between `free_port()` and nginx's bind means a new port."""
        for attempt in range(attempts):
            self._write_conf()
            try:
                self._start(timeout)
                return
            except RuntimeError:
                if b"Address already in use" not in self.stderr or attempt == attempts - 1:
                    raise
                self.stderr = b""

    def _start(self, timeout: float) -> None:
        import selectors

        self._proc = subprocess.Popen(
            [NGINX, "-p", str(self.prefix), "-c", str(self.conf), "-e", "stderr"],  # type: ignore[list-item]
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "TZ": self.tz},
        )
        assert self._proc.stderr is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self._proc.stderr, selectors.EVENT_READ)
            while b"start worker process" not in self.stderr:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    self.stop()
                    raise TimeoutError(f"nginx did not start: {self.stderr.decode()}")
                chunk = os.read(self._proc.stderr.fileno(), 65536)
                if not chunk:
                    self._proc.wait(timeout)
                    raise RuntimeError(f"nginx exited at start: {self.stderr.decode()}")
                self.stderr += chunk

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful shutdown (SIGQUIT): requests finish and are logged; then wait for the exit."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGQUIT)
        try:
            _out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            _out, err = proc.communicate(timeout=timeout)
        self.stderr += err or b""
