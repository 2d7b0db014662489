"""Helpers for the tailing scenarios (SCENARIOS.md §A): a real `trackd run`, a sequenced writer,
real logrotate, and the exactly-once check."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.helpers import (
    NotifySocket,
    access_line,
    committed_length,
    free_port,
    make_config,
    page_seqs,
    read_messages,
    trackd_cmd,
    wait_until,
    write_access_log,
)

LOGROTATE = "/usr/sbin/logrotate"
#: The /metrics series counting lines skipped for their length (SCENARIOS 26).
TOO_LONG = 'trackd_lines_skipped_total{reason="too_long",source="web"}'


class Agent:
    """A `trackd run` subprocess on a config in `tmp`, with sd_notify to know when it is up."""

    def __init__(
        self,
        tmp: Path,
        paths: list[str],
        extra: dict[str, Any] | None = None,
        *,
        nofile: int | None = None,
    ) -> None:
        self.tmp = tmp
        settings = {"rotate_wait": "1s", **(extra or {})}
        self.cfg = make_config(tmp, paths=paths, extra=settings)
        self.out = tmp / "out.jsonl"
        self.state = tmp / "state"
        self.proc: subprocess.Popen[bytes] | None = None
        self.notify: NotifySocket | None = None
        self.nofile = nofile
        self.starts = 0

    def start(self, *, wait_ready: bool = True) -> Agent:
        if self.notify is None:
            self.notify = NotifySocket(self.tmp)
        self.starts += 1
        err = (self.tmp / f"stderr.{self.starts}.log").open("wb")
        cmd = trackd_cmd("run", "-c", str(self.cfg))
        if self.nofile is not None:
            cmd = ["prlimit", f"--nofile={self.nofile}", *cmd]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, "NOTIFY_SOCKET": self.notify.path},
        )
        err.close()
        if wait_ready:
            self.notify.wait_for("READY=1", 30)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stderr(self) -> str:
        return (self.tmp / f"stderr.{self.starts}.log").read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no drain, no last commit."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        """SIGTERM and wait: the drain's exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def hup(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def seqs(self) -> list[int]:
        return page_seqs(read_messages(self.out))

    def delivered(self) -> int:
        """Messages in the output so far (its complete lines: cheap enough to poll)."""
        try:
            with self.out.open("rb") as fh:
                return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
        except FileNotFoundError:
            return 0

    def wait_seqs(self, n: int, timeout: float = 30) -> list[int]:
        """Wait until at least `n` page messages were delivered; returns their sequence numbers."""
        wait_until(lambda: self.delivered() >= n, timeout, f"{n} messages in {self.out}", 0.05)
        return self.seqs()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        if self.notify is not None:
            self.notify.close()
            self.notify = None


def assert_exactly_once(
    seqs: list[int], expected: range | set[int], allow_missing: int = 0
) -> set[int]:
    """No sequence number twice; none missing beyond `allow_missing`. Returns the missing ones."""
    dup = [s for s, n in Counter(seqs).items() if n > 1]
    assert dup == [], f"{len(dup)} duplicated, e.g. {sorted(dup)[:10]}"
    missing = set(expected) - set(seqs)
    assert len(missing) <= allow_missing, f"{len(missing)} lost, e.g. {sorted(missing)[:10]}"
    extra = set(seqs) - set(expected)
    assert extra == set(), f"unexpected sequence numbers {sorted(extra)[:10]}"
    return missing


def assert_copy_window_losses(missing: set[int], rotations: int, longest: int = 50) -> None:
    """copytruncate loses what the writer appends between the copy and the truncation (trackd
    never sees those bytes): allow at most one short run of consecutive lines per rotation."""
    runs: list[list[int]] = []
    for seq in sorted(missing):
        if runs and seq == runs[-1][-1] + 1:
            runs[-1].append(seq)
        else:
            runs.append([seq])
    assert len(runs) <= rotations, f"{len(runs)} separate losses for {rotations} rotations: {runs}"
    assert all(len(run) <= longest for run in runs), f"a loss longer than {longest}: {runs}"


def assert_state_consistent(tmp: Path) -> None:
    """After a kill: nothing twice in the committed output of the file sink. (The file sink is
    its own outbox, SPEC §4: it writes no outbox rows, so there is no outbox to check here.)"""
    committed = committed_length(tmp / "state", tmp / "out.jsonl") or 0
    out_ids = [m["messageId"] for m in read_messages(tmp / "out.jsonl", committed)]
    assert len(out_ids) == len(set(out_ids)), "a message twice in the committed output"


def logrotate(tmp: Path, log: Path, *directives: str, rotate: int = 5) -> None:
    """Rotate `log` now with real logrotate and the given directives (create, copytruncate...)."""
    conf = tmp / "logrotate.conf"
    body = "\n".join(f"  {d}" for d in ("missingok", f"rotate {rotate}", *directives))
    conf.write_text(f"{log} {{\n{body}\n}}\n")
    proc = subprocess.run(
        [LOGROTATE, "-f", "-s", str(tmp / "logrotate.status"), str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


class Writer:
    """Appends sequenced access lines to `path` at about `rate` lines/s on a thread; reopens the
    path when it was rotated away (as an app does on logrotate's postrotate signal)."""

    def __init__(self, path: Path, rate: float, first: int = 0, *, reopen: bool = True) -> None:
        self.path = path
        self.rate = rate
        self.next = first
        self.reopen = reopen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Writer:
        self._thread.start()
        return self

    def _run(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        started = time.monotonic()
        written = 0
        try:
            while not self._stop.is_set():
                if self.reopen and _moved(self.path, fd):
                    os.close(fd)
                    fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                due = int((time.monotonic() - started) * self.rate) - written
                if due <= 0:
                    time.sleep(0.002)
                    continue
                batch = min(due, 200)
                data = "".join(access_line(self.next + i) for i in range(batch)).encode()
                os.write(fd, data)
                self.next += batch
                written += batch
        finally:
            os.close(fd)

    def stop(self) -> int:
        """Stop writing; returns the next sequence number (= lines written so far + first)."""
        self._stop.set()
        self._thread.join(timeout=30)
        return self.next


def _moved(path: Path, fd: int) -> bool:
    try:
        return os.stat(path).st_ino != os.fstat(fd).st_ino
    except FileNotFoundError:
        return True


def file_rows(state: Path) -> list[dict[str, Any]]:
    """The saved file rows (read-only), for assertions on positions and states."""
    conn = sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM files ORDER BY id")]
    finally:
        conn.close()


def overlong_agent(tmp: Path) -> tuple[Agent, Path, int]:
    """The SCENARIOS 26 set-up: an `Agent` (not started yet) tailing `tmp`/app.log, which holds
    access lines 0-9, with /metrics on a free port; returns the agent, the log and the port."""
    log = tmp / "app.log"
    port = free_port()
    agent = Agent(tmp, [str(log)], {"metrics": {"listen": f"127.0.0.1:{port}"}})
    write_access_log(log, 0, 10)
    return agent, log, port


def write_overlong(log: Path, mib: int) -> None:
    """Append a 1 MiB line, then `mib` MiB of one line with no newline yet."""
    with log.open("ab") as fh:
        fh.write(b"A" * (1 << 20) + b"\n")
        fh.flush()
        for _ in range(mib):
            fh.write(b"B" * (1 << 20))
            fh.flush()
