"""Faults of issue 13 around the state and the file sink: a state database that refuses commits,
a full disk under the sink, both at once (exactly once, in a loop over failure points); a reset
or lost state that must not deliver again what the sink already holds; `run --once` workers that
must die with their parent.

The daemon runs in process (the real `Daemon`, `Runtime`, pipeline and file sink); faults are
injected at the seams a full disk hits: the chunk transaction (`sqlite3.OperationalError:
database or disk is full` at BEGIN, in its body, or at COMMIT) and the sink file's `os.write` /
`os.fsync` (ENOSPC, part-way through a chunk).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.pipeline import core
from agent.pipeline.tail import TailLoop
from agent.state import db as state_db
from agent.state import files as files_db
from agent.supervisor import Daemon
from tests.harness import real_daemon
from tests.helpers import (
    committed_length,
    free_port,
    http_get,
    make_config,
    page_seqs,
    read_messages,
    run_trackd,
    trackd_cmd,
    wait_until,
    write_access_log,
)
from tests.sinks.test_file_faults import DiskFull


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- the daemon in process -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def daemon(cfg: Path) -> AsyncIterator[Daemon]:
    """The real daemon with the file sink, yielded once ready; stopped (exit 0) on exit."""
    async with real_daemon(cfg, stop_within=10) as d:
        assert d.tail is not None
        d.tail.retry_initial = 0.02  # backoff in tests: milliseconds, not seconds
        yield d


async def until(pred: Callable[[], bool], what: str) -> None:
    """Wait up to 15 s for an observable condition no event announces (the sink file's
    content, the loop's error), polling off the event loop."""
    await asyncio.to_thread(wait_until, pred, 15, what)


@dataclass
class StateFull:
    """The chunk transaction fails `times` times with SQLite's disk-full error, `where`: at
    BEGIN, in its body (writing positions), or at COMMIT (after every statement ran)."""

    where: str
    times: int
    failed: int = 0

    def _fail(self) -> None:
        self.failed += 1
        raise sqlite3.OperationalError("database or disk is full")

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_tx = state_db.transaction  # what core.transaction is
        real_positions = files_db.update_positions

        @contextlib.contextmanager
        def tx(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
            if self.where == "begin" and self.failed < self.times:
                self._fail()
            with real_tx(conn):
                yield conn
                if self.where == "commit" and self.failed < self.times:
                    self._fail()

        def positions(conn: sqlite3.Connection, rows: Any) -> None:
            if self.where == "body" and self.failed < self.times:
                self._fail()
            real_positions(conn, rows)

        monkeypatch.setattr(core, "transaction", tx)
        monkeypatch.setattr(files_db, "update_positions", positions)


#: Failure points: the state refusing the commit, the sink's disk full, and both in turn (the
#: sink fails first, then — the chunk written — the state refuses it).
SCENARIOS: dict[str, tuple[tuple[str, int] | None, dict[str, Any] | None]] = {
    "state_begin": (("begin", 2), None),
    "state_body": (("body", 2), None),
    "state_commit": (("commit", 3), None),
    "sink_write": (None, {"times": 2}),
    "sink_torn_line": (None, {"times": 2, "partial": 33}),
    "sink_fsync": (None, {"times": 2, "call": "fsync"}),
    "sink_torn_then_state_commit": (("commit", 2), {"times": 2, "partial": 5}),
    "sink_fsync_then_state_body": (("body", 2), {"times": 1, "call": "fsync"}),
}


def assert_exactly_once(out: Path, state: Path, n: int) -> None:
    data = out.read_bytes()
    assert data.endswith(b"\n"), "a torn last line"
    seqs = page_seqs(read_messages(out))
    dups = len(seqs) - len(set(seqs))
    assert dups == 0, f"{dups} duplicates"
    assert sorted(seqs) == list(range(n)), f"lost {sorted(set(range(n)) - set(seqs))[:10]}"
    assert committed_length(state, out) == len(data)


@pytest.mark.anyio
@pytest.mark.timeout(40)
@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_daemon_delivers_exactly_once_through_commit_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scenario: str
) -> None:
    """Whichever write a full disk refuses (state or sink, at any point), the daemon retries the
    chunk until it commits: the sink file holds every message once, its committed length is its
    size."""
    log, out = tmp_path / "access.log", tmp_path / "out.jsonl"
    write_access_log(log, 0, 50)
    state_fault, sink_fault = SCENARIOS[scenario]
    async with daemon(make_config(tmp_path, paths=[str(log)])) as d:
        await until(lambda: len(page_seqs(read_messages(out))) >= 50, "the first 50 messages")
        faults: list[StateFull | DiskFull] = []
        if state_fault is not None:
            faults.append(StateFull(*state_fault))
        if sink_fault is not None:
            faults.append(DiskFull(str(out), **sink_fault))
        for fault in faults:
            fault.install(monkeypatch)
        write_access_log(log, 50, 150)
        await until(lambda: all(f.failed == f.times for f in faults), "every fault to fire")
        await until(lambda: len(page_seqs(read_messages(out))) >= 200, "all 200 messages")
        assert d.tail is not None
        await until(lambda: getattr(d.tail, "sink_error", None) is None, "recovery")
    assert_exactly_once(out, tmp_path / "state", 200)


@pytest.mark.anyio
@pytest.mark.timeout(30)
async def test_a_full_disk_under_the_sink_pauses_reading_until_it_has_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sink file that cannot be written stops the daemon from moving on (no progress past the
    committed length, the reason kept for /healthz) instead of ending it; once there is room,
    it resumes by itself and delivers exactly once."""
    log, out = tmp_path / "access.log", tmp_path / "out.jsonl"
    write_access_log(log, 0, 20)
    async with daemon(make_config(tmp_path, paths=[str(log)])) as d:
        assert d.tail is not None
        tail = d.tail
        await until(lambda: len(page_seqs(read_messages(out))) >= 20, "the first messages")
        full = DiskFull(str(out), times=10**9, partial=9)
        full.install(monkeypatch)
        write_access_log(log, 20, 30)
        await until(lambda: full.failed >= 3, "a few refused writes")
        assert tail.sink_error is not None and "No space left on device" in tail.sink_error
        assert out.stat().st_size == committed_length(tmp_path / "state", out)
        full.times = 0  # room again
        await until(lambda: tail.sink_error is None, "recovery")
        await until(lambda: len(page_seqs(read_messages(out))) >= 50, "all 50 messages")
    assert_exactly_once(out, tmp_path / "state", 50)


@pytest.mark.anyio
@pytest.mark.timeout(30)
async def test_healthz_says_503_while_the_sink_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the sink's disk is full, /healthz answers 503 with the reason."""
    log, out = tmp_path / "access.log", tmp_path / "out.jsonl"
    write_access_log(log, 0, 5)
    port = free_port()
    cfg = make_config(
        tmp_path, paths=[str(log)], extra={"metrics": {"listen": f"127.0.0.1:{port}"}}
    )
    async with daemon(cfg) as d:
        assert d.tail is not None
        tail = d.tail
        await until(lambda: len(page_seqs(read_messages(out))) >= 5, "the first messages")
        full = DiskFull(str(out), times=10**9)
        full.install(monkeypatch)
        write_access_log(log, 5, 5)
        await until(lambda: tail.sink_error is not None, "the sink error")
        status, body = await asyncio.to_thread(http_get, port, "/healthz")
        full.times = 0
        assert status == 503 and "No space left on device" in body


def test_retry_backoff_starts_at_a_second() -> None:
    """Outside tests the first retry of a refused commit waits 1 s (then doubles, up to 30 s)."""
    assert TailLoop.retry_initial == 1.0


# -- a reset or lost state (SPEC §5.1) -----------------------------------------------------------


def _run_once(cfg: Path) -> subprocess.CompletedProcess[str]:
    done = run_trackd("run", "--once", "-c", str(cfg), env={"TRACKD_WORKERS": "0"})
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.timeout(60)
def test_on_corrupt_reset_starts_files_at_end(tmp_path: Path) -> None:
    """`state.on_corrupt: reset` with `start_at: beginning`: the fresh state starts every file at
    its end, so nothing the sink already holds is delivered again; later lines still flow."""
    log, out = tmp_path / "access.log", tmp_path / "out.jsonl"
    write_access_log(log, 0, 100)
    cfg = make_config(tmp_path, paths=[str(log)], extra={"state": {"on_corrupt": "reset"}})
    _run_once(cfg)
    db = tmp_path / "state" / "state.db"
    db.write_bytes(b"this is not a database " * 500)
    done = _run_once(cfg)
    assert '"event":"state_corrupt"' in done.stderr
    assert page_seqs(read_messages(out)) == list(range(100))
    write_access_log(log, 100, 10)
    _run_once(cfg)
    assert page_seqs(read_messages(out)) == list(range(110))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("lost", ["zero_length", "missing"])
def test_a_lost_state_warns_and_does_not_deliver_again(tmp_path: Path, lost: str) -> None:
    """A state.db that is empty or gone while the sink file holds messages the state never
    recorded: a warning names the sink file, and `run --once` starts files at their end rather
    than duplicating what the file holds."""
    log, out = tmp_path / "access.log", tmp_path / "out.jsonl"
    write_access_log(log, 0, 100)
    cfg = make_config(tmp_path, paths=[str(log)])
    _run_once(cfg)
    db = tmp_path / "state" / "state.db"
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    if lost == "zero_length":
        db.write_bytes(b"")
    else:
        db.unlink()
    done = _run_once(cfg)
    assert '"event":"sink_file_not_in_state"' in done.stderr
    assert str(out) in done.stderr
    assert page_seqs(read_messages(out)) == list(range(100))
    write_access_log(log, 100, 10)
    _run_once(cfg)
    assert page_seqs(read_messages(out)) == list(range(110))


@pytest.mark.timeout(60)
def test_a_first_start_with_an_empty_sink_file_reads_from_start_at(tmp_path: Path) -> None:
    """An existing but empty sink file is no sign of a lost state: start_at applies."""
    log, out = tmp_path / "access.log", tmp_path / "out.jsonl"
    write_access_log(log, 0, 30)
    out.write_bytes(b"")
    done = _run_once(make_config(tmp_path, paths=[str(log)]))
    assert "sink_file_not_in_state" not in done.stderr
    assert page_seqs(read_messages(out)) == list(range(30))


# -- run --once workers die with their parent (issue 13 #6) --------------------------------------


def _children() -> dict[int, list[int]]:
    """Every process's children, from /proc."""
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def _descendants(pid: int) -> dict[int, int]:
    """Descendants of `pid` with their depth (1 = children)."""
    kids, out, todo = _children(), {}, [(pid, 0)]
    while todo:
        parent, depth = todo.pop()
        for child in kids.get(parent, []):
            out[child] = depth + 1
            todo.append((child, depth + 1))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.timeout(60)
def test_kill_9_of_run_once_takes_its_workers_with_it(tmp_path: Path) -> None:
    """`kill -9` of `run --once` while its worker processes prepare: the forkserver, the workers
    and the resource tracker are all gone within a few seconds."""
    log = tmp_path / "access.log"
    write_access_log(log, 0, 400_000)
    cfg = make_config(tmp_path, paths=[str(log)])
    proc = subprocess.Popen(
        trackd_cmd("run", "--once", "-c", str(cfg)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TRACKD_WORKERS": "2"},
    )
    seen: dict[int, int] = {}
    try:
        deadline = time.monotonic() + 30
        while sum(1 for depth in seen.values() if depth >= 2) < 2:
            assert proc.poll() is None, "run --once ended before its workers were seen"
            assert time.monotonic() < deadline, f"no workers seen: {seen}"
            seen.update(_descendants(proc.pid))
            time.sleep(0.02)
        seen.update(_descendants(proc.pid))
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        deadline = time.monotonic() + 5
        while any(map(_alive, seen)) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [pid for pid in seen if _alive(pid)]
        assert not left, f"left behind: {[Path(f'/proc/{p}/cmdline').read_bytes() for p in left]}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in seen:
            if _alive(pid):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
