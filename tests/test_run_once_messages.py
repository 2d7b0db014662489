"""What `run --once` and `run` say: a sink file that cannot be opened is a startup failure (exit
3, naming sink.path), a first start at `start_at: end` says what it left unread and how to read
it, and `--json` makes the one-line summary a JSON object on stderr."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import orjson
import pytest

from tests.helpers import (
    NotifySocket,
    make_config,
    read_messages,
    run_trackd,
    trackd_cmd,
    write_access_log,
)

HINT = "set start_at: beginning before the first start, or replay them with `trackd backfill"


def _summary(stderr: str) -> str:
    (line,) = [ln for ln in stderr.splitlines() if ln.startswith("trackd: read ")]
    return line


@pytest.mark.timeout(60)
class TestSinkThatCannotOpen:
    def test_run_once_exits_3_naming_sink_path(self, tmp_path: Path) -> None:
        """A file sink in a missing directory: `run --once` exits 3 (not 1) with one line naming
        the key, the file and the directory, and no traceback."""
        write_access_log(tmp_path / "access.log", 0, 5)
        sink = tmp_path / "nodir" / "out.jsonl"
        cfg = make_config(tmp_path, paths=[str(tmp_path / "access.log")], sink_path=str(sink))
        proc = run_trackd("run", "--once", "-c", str(cfg))
        assert proc.returncode == 3, proc.stderr
        assert (
            f"trackd: sink.path: cannot open the sink file {sink}: the directory "
            f"{sink.parent} does not exist" in proc.stderr
        )
        assert "Traceback" not in proc.stderr

    def test_the_daemon_exits_3_before_ready(self, tmp_path: Path) -> None:
        """`run` (the daemon) with the same sink: exit 3 — systemd's RestartPreventExitStatus —
        without notifying READY=1."""
        sink = tmp_path / "nodir" / "out.jsonl"
        cfg = make_config(tmp_path, paths=[str(tmp_path / "access.log")], sink_path=str(sink))
        notify = NotifySocket(tmp_path)
        try:
            proc = subprocess.run(
                trackd_cmd("run", "-c", str(cfg)),
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
                env={**os.environ, "NOTIFY_SOCKET": notify.path},
            )
            assert proc.returncode == 3, proc.stderr
            assert "sink.path: cannot open the sink file" in proc.stderr
            # The process has exited: any datagram it sent is queued; none says READY=1.
            with pytest.raises(TimeoutError):
                notify.wait_for("READY=1", 0.2)
        finally:
            notify.close()


@pytest.mark.timeout(60)
class TestFirstStartAtEnd:
    def test_the_summary_says_what_was_left_unread_and_how_to_read_it(self, tmp_path: Path) -> None:
        """A first `run --once` with start_at: end reads 0 lines and says why: the bytes left
        in the file, start_at: beginning, trackd backfill."""
        log = tmp_path / "access.log"
        write_access_log(log, 0, 20)
        cfg = make_config(tmp_path, paths=[str(log)], extra={"start_at": "end"})
        proc = run_trackd("run", "--once", "-c", str(cfg))
        assert proc.returncode == 0, proc.stderr
        line = _summary(proc.stderr)
        assert line.startswith("trackd: read 0 lines from 1 file(s)")
        assert f"not read: the {log.stat().st_size:,} bytes already in 1 file(s)" in line
        assert HINT in line

    def test_a_later_run_says_nothing_about_history(self, tmp_path: Path) -> None:
        """The second run reads what was appended and has no history note."""
        log = tmp_path / "access.log"
        write_access_log(log, 0, 20)
        cfg = make_config(tmp_path, paths=[str(log)], extra={"start_at": "end"})
        assert run_trackd("run", "--once", "-c", str(cfg)).returncode == 0
        write_access_log(log, 20, 3)
        proc = run_trackd("run", "--once", "-c", str(cfg))
        line = _summary(proc.stderr)
        assert line.startswith("trackd: read 3 lines") and "not read" not in line

    def test_start_at_beginning_has_no_history_note(self, tmp_path: Path) -> None:
        """start_at: beginning reads everything: no note."""
        log = tmp_path / "access.log"
        write_access_log(log, 0, 20)
        proc = run_trackd("run", "--once", "-c", str(make_config(tmp_path, paths=[str(log)])))
        line = _summary(proc.stderr)
        assert line.startswith("trackd: read 20 lines") and "not read" not in line

    def test_the_daemon_logs_what_it_left_unread(self, tmp_path: Path) -> None:
        """`run` (the daemon) at its first start logs `history_not_read` with the files, bytes
        and the hint, once it has looked at the files."""
        log = tmp_path / "access.log"
        write_access_log(log, 0, 20)
        cfg = make_config(tmp_path, paths=[str(log)], extra={"start_at": "end"})
        notify = NotifySocket(tmp_path)
        with (tmp_path / "stderr").open("w+") as err:
            proc = subprocess.Popen(
                trackd_cmd("run", "-c", str(cfg)),
                stdout=subprocess.DEVNULL,
                stderr=err,
                env={**os.environ, "NOTIFY_SOCKET": notify.path},
            )
            try:
                notify.wait_for("READY=1", 20)
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=30) == 0
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                notify.close()
            err.seek(0)
            events = [orjson.loads(x) for x in err if x.startswith("{")]
        (note,) = [e for e in events if e["event"] == "history_not_read"]
        assert (note["files"], note["bytes"]) == (1, log.stat().st_size)
        assert "trackd backfill" in note["hint"]


@pytest.mark.timeout(60)
class TestJsonSummary:
    def test_json_puts_the_summary_on_stderr_as_one_object(self, tmp_path: Path) -> None:
        """`run --once --json`: the last stderr line is a JSON object with the counts; stdout
        (the `-` sink) carries only messages."""
        log = tmp_path / "access.log"
        write_access_log(log, 0, 7)
        cfg = make_config(tmp_path, paths=[str(log)], sink_path="-")
        proc = run_trackd("run", "--once", "--json", "-c", str(cfg))
        assert proc.returncode == 0, proc.stderr
        summary = orjson.loads(proc.stderr.splitlines()[-1])
        assert summary["lines"] == 7 and summary["messages_by_type"] == {"page": 7}
        assert summary["delivered"] == 7 and summary["pending"] == 0
        assert summary["history_not_read"] is None
        assert [orjson.loads(x)["type"] for x in proc.stdout.splitlines()] == ["page"] * 7
        assert not any(ln.startswith("trackd: read") for ln in proc.stderr.splitlines())

    def test_json_reports_history_left_unread(self, tmp_path: Path) -> None:
        """The first run at start_at: end: `history_not_read` gives files, bytes and the hint."""
        log = tmp_path / "access.log"
        write_access_log(log, 0, 5)
        cfg = make_config(tmp_path, paths=[str(log)], extra={"start_at": "end"})
        proc = run_trackd("run", "--once", "-c", str(cfg), "--json")
        summary = orjson.loads(proc.stderr.splitlines()[-1])
        assert summary["history_not_read"]["files"] == 1
        assert summary["history_not_read"]["bytes"] == log.stat().st_size
        assert HINT in summary["history_not_read"]["hint"]
        assert read_messages(tmp_path / "out.jsonl") == []
