"""`trackd backfill` while `trackd run` runs (SPEC §5.1, §6): the job is handed to the daemon
through the state database, the command follows its progress, Ctrl-C detaches, and the daemon
keeps reading its live files while it carries the job out. Real subprocesses, real files."""

from __future__ import annotations

import gzip
import json
import os
import select
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from agent.state import jobs
from agent.state.db import StateLock, StatePaths, connect, migrate
from tests.helpers import (
    access_line,
    make_config,
    page_seqs,
    read_messages,
    running_daemon,
    trackd_cmd,
    wait_until,
)
from tests.test_backfill import GENERATIONS, history, pack

pytestmark = pytest.mark.timeout(180)

#: Live lines get sequence numbers from here (history lines are below).
LIVE = 5_000_000


def write_history(logs: Path, per_file: int) -> list[Path]:
    """The rotated generations `.1` … `.4.xz` (oldest has the smallest sequence numbers) and an
    empty live `access.log`; returns the rotated files."""
    logs.mkdir(parents=True, exist_ok=True)
    rotated = []
    for age, name in enumerate(reversed(GENERATIONS[1:])):
        path = logs / name
        path.write_bytes(pack(name, history(age * per_file, per_file)))
        rotated.append(path)
    (logs / "access.log").write_bytes(b"")
    return rotated


def world(tmp_path: Path, per_file: int) -> tuple[list[Path], Path, Path, Path]:
    """A rotated history under tmp/logs with an empty live access.log, and a config tailing it:
    (rotated files, config, sink file, state dir)."""
    logs = tmp_path / "logs"
    rotated = write_history(logs, per_file)
    cfg = make_config(tmp_path, paths=[str(logs / "access.log")])
    return rotated, cfg, tmp_path / "out.jsonl", tmp_path / "state"


def backfill(cfg: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """`trackd backfill -c cfg ARGS…` to its end."""
    return subprocess.run(
        trackd_cmd("backfill", "-c", str(cfg), *map(str, args)),
        capture_output=True,
        text=True,
        timeout=120,
    )


def job_rows(state: Path) -> list[jobs.Job]:
    """The jobs table as a reader sees it now."""
    conn = connect(StatePaths(str(state)).db, readonly=True)
    try:
        return sorted(jobs.recent(conn, 100), key=lambda j: j.id)
    finally:
        conn.close()


def job_state(state: Path, job_id: int = 1) -> str | None:
    rows = [j for j in job_rows(state) if j.id == job_id]
    return rows[0].state if rows else None


def start_backfill(cfg: Path, *files: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        trackd_cmd("backfill", "-c", str(cfg), *map(str, files)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_until(proc: subprocess.Popen[str], text: str, timeout: float) -> str:
    """What the command wrote to stderr until `text` appeared (read from the raw pipe, so
    `communicate` gets the rest)."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    got = b""
    deadline = time.monotonic() + timeout
    while text.encode() not in got:
        left = deadline - time.monotonic()
        assert left > 0, f"no {text!r} on stderr within {timeout}s: {got!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            data = os.read(fd, 65536)
            assert data, f"stderr closed before {text!r}: {got!r}"
            got += data
    return got.decode()


def exactly_once(out: Path, expected: set[int]) -> None:
    seqs = page_seqs(read_messages(out))
    dups = len(seqs) - len(set(seqs))
    assert dups == 0, f"{dups} duplicates"
    missing = expected - set(seqs)
    assert not missing, f"{len(missing)} lines lost, e.g. {sorted(missing)[:5]}"
    assert set(seqs) == expected


class _Tail:
    """Reads what the file sink appended since the last look (the sink file grows large)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pos = 0
        self.buf = b""

    def holds(self, needle: bytes) -> bool:
        if self.path.exists():
            with self.path.open("rb") as fh:
                fh.seek(self.pos)
                data = fh.read()
            self.pos += len(data)
            self.buf = self.buf[-256:] + data
        return needle in self.buf


class TestHandOff:
    def test_live_files_are_read_while_the_job_runs(self, tmp_path: Path) -> None:
        """With `run` running, backfill hands the job over and follows it to the end (exit 0,
        the summary printed); live lines appended meanwhile reach the sink while the job is
        still running, within a second each; every line, history and live, exactly once."""
        logs = tmp_path / "logs"
        per_file = 25_000
        rotated = write_history(logs, per_file)
        live = logs / "access.log"
        cfg = make_config(tmp_path, paths=[str(live)])
        out, state = tmp_path / "out.jsonl", tmp_path / "state"
        tail = _Tail(out)
        seen_during_job: list[float] = []
        written = []
        with running_daemon(cfg, tmp_path) as daemon:
            proc = start_backfill(cfg, *rotated)
            wait_until(lambda: job_state(state) == jobs.RUNNING, 30, "the job to start")
            seq = LIVE
            while job_state(state) == jobs.RUNNING:
                with live.open("a") as fh:
                    fh.write(access_line(seq))
                written.append(seq)
                t0 = time.monotonic()
                wait_until(lambda s=seq: tail.holds(f"/p/{s}".encode()), 10, f"live line {seq}")
                if job_state(state) == jobs.RUNNING:
                    seen_during_job.append(time.monotonic() - t0)
                seq += 1
            _, stderr = proc.communicate(timeout=120)
            assert proc.returncode == 0, stderr
            assert daemon.stop() == 0
        assert "handed 4 file(s) to it as job #1" in stderr
        assert f"read {4 * per_file} lines from 4 file(s)" in stderr
        assert seen_during_job, "no live line was delivered while the job ran"
        assert max(seen_during_job) < 1.0, seen_during_job
        exactly_once(out, set(range(4 * per_file)) | set(written))
        (job,) = job_rows(state)
        assert job.state == jobs.DONE and job.result is not None
        assert job.result["lines"] == 4 * per_file

    def test_ctrl_c_detaches_and_the_job_completes(self, tmp_path: Path) -> None:
        """SIGINT stops following (exit 0, "detached") and `status` shows the job; the daemon
        finishes it; running the same backfill again while it is active follows the same job
        instead of adding one; a backfill of the same files after it is done adds nothing."""
        per_file = 20_000
        rotated, cfg, out, state = world(tmp_path, per_file)
        with running_daemon(cfg, tmp_path) as daemon:
            proc = start_backfill(cfg, *rotated)
            head = read_until(proc, "Ctrl-C stops following", 30)
            proc.send_signal(signal.SIGINT)
            _, rest = proc.communicate(timeout=30)
            stderr = head + rest
            assert proc.returncode == 0, stderr
            assert "detached; job #1 goes on" in stderr
            status = subprocess.run(
                trackd_cmd("status", "--json", "-c", str(cfg)),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert status.returncode == 0, status.stderr
            (shown,) = json.loads(status.stdout)["backfill_jobs"]
            assert (shown["id"], shown["files"]) == (1, 4)
            assert shown["state"] in (jobs.QUEUED, jobs.RUNNING, jobs.DONE)
            text = subprocess.run(
                trackd_cmd("status", "-c", str(cfg)), capture_output=True, text=True, timeout=60
            ).stdout
            assert "backfill jobs (newest first):" in text and "job #1 (4 file(s)):" in text
            again = backfill(cfg, *rotated)
            assert again.returncode == 0, again.stderr
            assert job_state(state) == jobs.DONE
            if "already job #1" not in again.stderr:
                # The job finished before the second command looked: it ran as job #2, empty.
                assert "job #2" in again.stderr and "read 0 lines" in again.stderr
            before = out.read_bytes()
            third = backfill(cfg, *rotated)
            assert third.returncode == 0, third.stderr
            assert "read 0 lines" in third.stderr and "files not read again" in third.stderr
            assert daemon.stop() == 0
        assert out.read_bytes() == before
        exactly_once(out, set(range(4 * per_file)))

    @pytest.mark.parametrize("how", ["sigterm", "kill9"])
    def test_a_job_cut_by_a_daemon_stop_resumes_at_its_next_start(
        self, tmp_path: Path, how: str
    ) -> None:
        """The daemon stops (SIGTERM drain, or kill -9) in the middle of a job: the follower says
        so (exit 1); the next `run` takes the job up where it stopped: no loss, no duplicate."""
        per_file = 25_000
        rotated, cfg, out, state = world(tmp_path, per_file)
        with running_daemon(cfg, tmp_path) as daemon:
            proc = start_backfill(cfg, *rotated)
            wait_until(lambda: len(page_seqs(read_messages(out))) >= 5_000, 60, "the job under way")
            if how == "sigterm":
                assert daemon.stop() == 0
            else:
                daemon.proc.kill()
                daemon.proc.wait()
            _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 1, stderr
        assert "stopped before job #1 was done" in stderr
        assert job_state(state) in jobs.ACTIVE
        with running_daemon(cfg, tmp_path) as daemon:
            wait_until(lambda: job_state(state) == jobs.DONE, 90, "the job to finish")
            assert daemon.stop() == 0
        exactly_once(out, set(range(4 * per_file)))

    def test_a_truncated_gz_is_reported_by_name_in_the_job_summary(self, tmp_path: Path) -> None:
        """A .gz cut short in a handed-off history: its readable lines arrive, the rest of the
        files are read, and the summary (`--json` here) names the damaged file and its lines."""
        logs = tmp_path / "logs"
        per_file = 3_000
        rotated = write_history(logs, per_file)
        damaged = logs / "access.log.2.gz"
        whole = gzip.compress(history(2 * per_file, per_file))
        damaged.write_bytes(whole[: len(whole) // 2])
        cfg = make_config(tmp_path, paths=[str(logs / "access.log")])
        out = tmp_path / "out.jsonl"
        with running_daemon(cfg, tmp_path) as daemon:
            proc = subprocess.run(
                trackd_cmd("backfill", "--json", "-c", str(cfg), *map(str, rotated)),
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert daemon.stop() == 0
        assert proc.returncode == 0, proc.stderr
        data = json.loads(proc.stderr.strip().splitlines()[-1])
        assert data["job"] == 1 and data["state"] == "done"
        (bad,) = data["damaged_files"]
        assert bad["path"] == str(damaged) and 0 < bad["lines_read"] < per_file
        assert data["lines"] == 3 * per_file + bad["lines_read"]
        seqs = set(page_seqs(read_messages(out)))
        others = set(range(per_file * 2)) | set(range(3 * per_file, 4 * per_file))
        assert others <= seqs
        got = seqs & set(range(2 * per_file, 3 * per_file))
        assert 0 < len(got) < per_file


class TestHandOffErrors:
    def _backfill_while_locked(
        self, tmp_path: Path, *, drop_jobs: bool
    ) -> subprocess.CompletedProcess[str]:
        """`trackd backfill` of one file while this test holds the state lock (as a daemon
        would), over a database without the jobs table (`drop_jobs`) or none at all."""
        (tmp_path / "access.log.1").write_bytes(history(0, 5))
        cfg = make_config(tmp_path, paths=[str(tmp_path / "access.log")])
        (tmp_path / "state").mkdir(mode=0o700)
        paths = StatePaths(str(tmp_path / "state"))
        if drop_jobs:
            conn = connect(paths.db)
            migrate(conn)
            conn.execute("DROP TABLE jobs")
            conn.close()
        lock = StateLock(paths)
        lock.acquire()
        try:
            return subprocess.run(
                trackd_cmd("backfill", "-c", str(cfg), str(tmp_path / "access.log.1")),
                capture_output=True,
                text=True,
                timeout=60,
            )
        finally:
            lock.release()

    def test_an_older_daemon_without_jobs_is_told_to_restart(self, tmp_path: Path) -> None:
        """The lock holder's database has no jobs table (an older trackd): exit 3, saying to
        restart it; nothing is written."""
        proc = self._backfill_while_locked(tmp_path, drop_jobs=True)
        assert proc.returncode == 3, proc.stderr
        assert "older than this one" in proc.stderr and "restart" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert not (tmp_path / "out.jsonl").exists()

    def test_a_locked_state_without_a_database_is_explained(self, tmp_path: Path) -> None:
        """The lock is held but no state.db exists yet (a daemon starting up): exit 3 saying to
        wait, and no database is created by the command."""
        proc = self._backfill_while_locked(tmp_path, drop_jobs=False)
        assert proc.returncode == 3, proc.stderr
        assert "holds no state database yet" in proc.stderr
        assert not Path(StatePaths(str(tmp_path / "state")).db).exists()


def test_job_rows_round_trip(tmp_path: Path) -> None:
    """The jobs table: submit, find the same active job by its arguments, progress, finish."""
    conn = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    migrate(conn)
    args = {"files": [["/x/a.log.1", "web"]], "since": None, "until": None}
    jid = jobs.submit(conn, args, 1.0)
    assert jobs.same_active(conn, args) is not None
    assert jobs.same_active(conn, {**args, "since": 5.0}) is None
    jobs.start(conn, jid, 2.0)
    jobs.note_progress(conn, jid, {"lines": 7}, 3.0)
    job = jobs.get(conn, jid)
    assert job is not None and job.state == jobs.RUNNING and job.progress == {"lines": 7}
    jobs.finish(conn, jid, jobs.DONE, {"exit": 0}, 4.0)
    assert jobs.active(conn) == [] and jobs.same_active(conn, args) is None
    done = jobs.get(conn, jid)
    assert done is not None and done.result == {"exit": 0} and done.finished == 4.0
