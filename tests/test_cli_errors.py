"""User-facing failures end in one clear line and the right exit code, never a traceback: a
metrics port in use, a read-only state directory, and any error trackd did not foresee."""

from __future__ import annotations

import ctypes
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port, make_config, run_trackd, trackd_cmd, write_access_log

ROOT = Path(__file__).resolve().parent.parent


def message_lines(stderr: str) -> list[str]:
    """stderr without the structured log lines (JSON objects): what a person reads."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("{")]


class TestMetricsPortInUse:
    @pytest.mark.timeout(60)
    def test_port_in_use_is_a_startup_failure(self, tmp_path: Path) -> None:
        """`run` with metrics.listen on a taken port exits 3 with one line naming it."""
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
            taken.bind(("127.0.0.1", port))
            taken.listen()
            log = tmp_path / "a.log"
            write_access_log(log, 1, 3)
            cfg = make_config(
                tmp_path, paths=[str(log)], extra={"metrics": {"listen": f"127.0.0.1:{port}"}}
            )
            proc = run_trackd("run", "-c", str(cfg), timeout=30)
        assert proc.returncode == 3, proc.stderr
        assert "Traceback" not in proc.stderr
        (line,) = message_lines(proc.stderr)
        assert "metrics.listen" in line and f"127.0.0.1:{port}" in line


def _state_with_data(tmp: Path) -> Path:
    """A config whose state_dir holds a real state (one `run --once` of 3 lines)."""
    log = tmp / "a.log"
    write_access_log(log, 1, 3)
    cfg = make_config(tmp, paths=[str(log)])
    proc = run_trackd("run", "--once", "-c", str(cfg))
    assert proc.returncode == 0, proc.stderr
    return cfg


@pytest.fixture
def read_only_state(tmp_path: Path) -> Iterator[Path]:
    """A config whose state_dir (with a real state) is not writable: mode 0555 (restored after)."""
    cfg = _state_with_data(tmp_path)
    state = tmp_path / "state"
    state.chmod(0o555)
    try:
        yield cfg
    finally:
        state.chmod(0o755)


_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


def _without_dac_override() -> None:
    """Root ignores file modes; without these two capabilities it is held to them like anyone."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def run_read_only(*args: str) -> subprocess.CompletedProcess[str]:
    """A trackd command held to file modes (as root too: see `_without_dac_override`)."""
    return subprocess.run(
        trackd_cmd(*args),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
        preexec_fn=_without_dac_override if os.geteuid() == 0 else None,
    )


class TestReadOnlyStateDir:
    @pytest.mark.timeout(90)
    def test_status_reads_a_read_only_state_dir(self, read_only_state: Path) -> None:
        """`status` works on a state directory this user cannot write."""
        proc = run_read_only("status", "-c", str(read_only_state))
        assert proc.returncode == 0, proc.stderr
        assert "files (1)" in proc.stdout

    @pytest.mark.timeout(90)
    def test_identity_reads_a_read_only_state_dir(self, read_only_state: Path) -> None:
        """`identity` finds a device in a state directory this user cannot write."""
        proc = run_read_only("identity", "visitor00001x", "-c", str(read_only_state))
        assert proc.returncode == 0, proc.stderr
        assert "device visitor00001x" in proc.stdout

    @pytest.mark.timeout(90)
    def test_deadletters_list_reads_a_read_only_state_dir(self, read_only_state: Path) -> None:
        """`deadletters list` works on a state directory this user cannot write."""
        proc = run_read_only("deadletters", "list", "-c", str(read_only_state))
        assert proc.returncode == 0, proc.stderr
        assert "no dead letters" in proc.stdout

    @pytest.mark.timeout(90)
    def test_unreadable_wal_says_what_is_wrong(self, tmp_path: Path) -> None:
        """With changes in a WAL whose index this user cannot use, `status` exits 3 saying why."""
        cfg = _state_with_data(tmp_path)
        state = tmp_path / "state"
        db = state / "state.db"
        writer = sqlite3.connect(db, isolation_level=None)
        try:
            writer.execute("PRAGMA wal_autocheckpoint = 0")
            writer.execute("CREATE TABLE pending (x)")  # lives in the WAL while `writer` is open
            (state / "state.db-shm").chmod(0o000)
            state.chmod(0o555)
            proc = run_read_only("status", "-c", str(cfg))
        finally:
            state.chmod(0o755)
            (state / "state.db-shm").chmod(0o600)
            writer.close()
        assert proc.returncode == 3, proc.stderr
        assert "Traceback" not in proc.stderr
        (line,) = message_lines(proc.stderr)
        assert str(db) in line and "-shm" in line


#: Runs `trackd` with one command made to fail as trackd never meant to (a fault injected).
INJECT = """\
import sys
import agent.commands.status as status
def fail(*args, **kwargs):
    raise {exc}
status.collect = fail
from agent.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_with_fault(
    cfg: Path, exc: str = "RuntimeError('boom')", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "TRACKD_DEBUG"}
    return subprocess.run(
        [sys.executable, "-c", INJECT.format(exc=exc), "status", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
        env={**full_env, **(env or {})},
    )


class TestUnexpectedErrors:
    @pytest.mark.timeout(60)
    def test_unexpected_error_is_one_line_exit_1(self, tmp_path: Path) -> None:
        """An error trackd did not foresee is one line: what failed, where, what to try."""
        proc = run_with_fault(make_config(tmp_path, paths=[str(tmp_path / "a.log")]))
        assert proc.returncode == 1
        assert "Traceback" not in proc.stderr
        (line,) = message_lines(proc.stderr)
        assert "trackd status" in line and "RuntimeError: boom" in line
        assert "TRACKD_DEBUG=1" in line

    @pytest.mark.timeout(60)
    def test_unexpected_error_group_is_one_line(self, tmp_path: Path) -> None:
        """An exception group holding no trackd error is reported like any unexpected error."""
        cfg = make_config(tmp_path, paths=[str(tmp_path / "a.log")])
        proc = run_with_fault(cfg, exc="ExceptionGroup('tasks', [ValueError('bad value')])")
        assert proc.returncode == 1
        assert "Traceback" not in proc.stderr
        (line,) = message_lines(proc.stderr)
        assert "ValueError: bad value" in line

    @pytest.mark.timeout(60)
    def test_traceback_with_trackd_debug(self, tmp_path: Path) -> None:
        """TRACKD_DEBUG=1 adds the traceback to the line."""
        cfg = make_config(tmp_path, paths=[str(tmp_path / "a.log")])
        proc = run_with_fault(cfg, env={"TRACKD_DEBUG": "1"})
        assert proc.returncode == 1
        assert "Traceback" in proc.stderr and "RuntimeError: boom" in proc.stderr

    @pytest.mark.timeout(60)
    def test_traceback_at_log_level_debug(self, tmp_path: Path) -> None:
        """`log.level: debug` in the config adds the traceback too."""
        cfg = make_config(
            tmp_path,
            paths=[str(tmp_path / "a.log")],
            extra={"log": {"format": "json", "level": "debug"}},
        )
        proc = run_with_fault(cfg)
        assert proc.returncode == 1
        assert "Traceback" in proc.stderr


class TestJsonWhereItMeansNothing:
    def test_daemon_run_with_json_is_a_usage_error(self, tmp_path: Path) -> None:
        """`trackd run --json` (no --once) is refused (exit 2) saying where --json works,
        instead of being accepted and ignored; nothing starts."""
        cfg = make_config(tmp_path, paths=[str(tmp_path / "access.log")])
        proc = run_trackd("run", "--json", "-c", str(cfg), timeout=30)
        assert proc.returncode == 2, proc.stderr
        assert "--json works with --once only" in proc.stderr
        assert not (tmp_path / "state").exists()


class TestBrokenPipe:
    def test_output_cut_by_the_reader_ends_quietly(self, tmp_path: Path) -> None:
        """`trackd check --json | true`: the reader goes away at once; trackd exits 1 without an
        "unexpected error" line or a traceback."""
        (tmp_path / "access.log").write_text("")
        cfg = make_config(tmp_path, paths=[str(tmp_path / "access.log")])
        proc = subprocess.Popen(
            trackd_cmd("check", "--json", "-c", str(cfg)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # the reader is gone before trackd writes a byte
        stderr = proc.stderr.read()
        proc.stderr.close()
        assert proc.wait(timeout=60) == 1
        assert "unexpected error" not in stderr
        assert "Traceback" not in stderr
