"""`trackd run --once` end to end: a real subprocess on real files into the file sink."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson

from agent.state.db import StateLock, StatePaths
from tests.helpers import (
    make_config,
    page_seqs,
    read_messages,
    run_trackd,
    write_access_log,
)

ROOT = Path(__file__).resolve().parents[1]


class TestDemo:
    def test_demo_config_prints_resolved_page_messages(self, tmp_path: Path) -> None:
        """The bundled demo prints page messages whose anonymousId is the km_ai cookie or a
        derived anon- id, and named hits carry the km_ni person."""
        shutil.copytree(ROOT / "config", tmp_path / "config")
        proc = run_trackd("run", "--once", "-c", str(tmp_path / "config" / "demo.yaml"))
        assert proc.returncode == 0, proc.stderr
        messages = [orjson.loads(line) for line in proc.stdout.splitlines()]
        pages = [m for m in messages if m["type"] == "page"]
        anon = {m["anonymousId"] for m in pages}
        assert "qFq2LweZugFNE4o49hLhmRPBW34" in anon
        assert any(a.startswith("anon-") for a in anon)
        assert {m.get("userId") for m in pages} >= {
            "alice@example.com",
            "bob@example.org",
            "carol@example.net",
        }
        # An anonymous visitor logs in; a second person uses the same browser after a logout.
        assert [(m["previousId"], m["userId"]) for m in messages if m["type"] == "alias"] == [
            ("qFq2LweZugFNE4o49hLhmRPBW34", "alice@example.com"),
            ("Zp8xR2vKq9LmN3tY7wQe1uIo5aS", "bob@example.org"),
            ("qFq2LweZugFNE4o49hLhmRPBW34~1", "carol@example.net"),
        ]
        assert "s3cr3t" not in proc.stdout  # the token query parameter is redacted
        assert "trackd: read 34 lines from 2 file(s)" in proc.stderr


class TestExactlyOnce:
    def test_two_fresh_runs_are_byte_identical(self, tmp_path: Path) -> None:
        """The same input into fresh state gives the same bytes (ids, order, keys)."""
        log = tmp_path / "access.log"
        write_access_log(log, 0, 500)
        write_access_log(log, 500, 100, cookie="-")
        outputs = []
        for run in ("a", "b"):
            work = tmp_path / run
            work.mkdir()
            cfg = make_config(work, paths=[str(log)])
            proc = run_trackd("run", "--once", "-c", str(cfg))
            assert proc.returncode == 0, proc.stderr
            outputs.append((work / "out.jsonl").read_bytes())
        assert outputs[0] == outputs[1]
        assert len(outputs[0].splitlines()) == 600

    def test_restart_resumes_where_the_last_run_stopped(self, tmp_path: Path) -> None:
        """A second run reads only what was appended since the first."""
        log = tmp_path / "access.log"
        write_access_log(log, 0, 100)
        cfg = make_config(tmp_path, paths=[str(log)])
        assert run_trackd("run", "--once", "-c", str(cfg)).returncode == 0
        write_access_log(log, 100, 50)
        assert run_trackd("run", "--once", "-c", str(cfg)).returncode == 0
        assert page_seqs(read_messages(tmp_path / "out.jsonl")) == list(range(150))

    def test_partial_last_line_waits_for_its_newline(self, tmp_path: Path) -> None:
        """A final line without a newline is left for the next run, then read whole."""
        log = tmp_path / "access.log"
        write_access_log(log, 0, 3)
        line = (tmp_path / "access.log").read_text().splitlines()[0].replace("/p/0 ", "/p/3 ")
        with log.open("a") as fh:
            fh.write(line[:40])
        cfg = make_config(tmp_path, paths=[str(log)])
        assert run_trackd("run", "--once", "-c", str(cfg)).returncode == 0
        assert page_seqs(read_messages(tmp_path / "out.jsonl")) == [0, 1, 2]
        with log.open("a") as fh:
            fh.write(line[40:] + "\n")
        assert run_trackd("run", "--once", "-c", str(cfg)).returncode == 0
        assert page_seqs(read_messages(tmp_path / "out.jsonl")) == [0, 1, 2, 3]

    def test_start_at_end_skips_what_was_there_at_the_first_start(self, tmp_path: Path) -> None:
        """With start_at: end a fresh state reads nothing the first time, then what is new."""
        log = tmp_path / "access.log"
        write_access_log(log, 0, 20)
        cfg = make_config(tmp_path, paths=[str(log)], extra={"start_at": "end"})
        assert run_trackd("run", "--once", "-c", str(cfg)).returncode == 0
        assert read_messages(tmp_path / "out.jsonl") == []
        write_access_log(log, 20, 5)
        assert run_trackd("run", "--once", "-c", str(cfg)).returncode == 0
        assert page_seqs(read_messages(tmp_path / "out.jsonl")) == [20, 21, 22, 23, 24]


class TestOutputAndErrors:
    def test_stdout_sink_carries_only_messages(self, tmp_path: Path) -> None:
        """With `path: -` stdout holds JSON lines only; logs and the summary go to stderr."""
        log = tmp_path / "access.log"
        write_access_log(log, 0, 10)
        cfg = make_config(tmp_path, paths=[str(log)], sink_path="-")
        proc = run_trackd("run", "--once", "-c", str(cfg))
        assert proc.returncode == 0, proc.stderr
        assert [orjson.loads(x)["type"] for x in proc.stdout.splitlines()] == ["page"] * 10
        assert "trackd: read 10 lines" in proc.stderr

    def test_bad_lines_are_counted_not_fatal(self, tmp_path: Path) -> None:
        """Unparseable and over-long lines are skipped and counted; the rest is delivered."""
        log = tmp_path / "access.log"
        write_access_log(log, 0, 5)
        with log.open("ab") as fh:
            fh.write(b"garbage \xff\xfe\x00 line\n" + b"x" * 70_000 + b"\n")
        write_access_log(log, 5, 5)
        cfg = make_config(tmp_path, paths=[str(log)])
        proc = run_trackd("run", "--once", "-c", str(cfg))
        assert proc.returncode == 0, proc.stderr
        assert page_seqs(read_messages(tmp_path / "out.jsonl")) == list(range(10))
        assert "12 lines from 1 file(s), 2 skipped" in proc.stderr
        assert '"reason":"too_long"' in proc.stderr and '"reason":"parse_error"' in proc.stderr

    def test_locked_state_exits_3(self, tmp_path: Path) -> None:
        """When another process holds the state lock, run --once exits 3 and says so."""
        log = tmp_path / "access.log"
        write_access_log(log, 0, 1)
        cfg = make_config(tmp_path, paths=[str(log)])
        (tmp_path / "state").mkdir()
        lock = StateLock(StatePaths(str(tmp_path / "state")))
        lock.acquire()
        try:
            proc = run_trackd("run", "--once", "-c", str(cfg))
        finally:
            lock.release()
        assert proc.returncode == 3
        assert "is in use by another trackd" in proc.stderr


class TestAppSources:
    def test_app_log_lines_are_read_counted_and_tracebacks_are_not_errors(
        self, tmp_path: Path
    ) -> None:
        """An app json source is read and positioned; traceback lines are not skipped as errors;
        a line whose bytes are not UTF-8 is skipped as `encoding`."""
        app = tmp_path / "app.log"
        app.write_bytes(
            b'{"ts": "2026-11-28T10:00:00Z", "event": "login", "email": "a@x.com"}\n'
            b"Traceback (most recent call last):\n"
            b'  File "app.py", line 1, in <module>\n'
            b"KeyError: 'x'\n"
            b'{"ts": "2026-11-28T10:00:01Z", "event": "\xff\xfe"}\n'
            b'{"ts": "2026-11-28T10:00:02Z", "event": "logout"}\n'
        )
        cfg = make_config(tmp_path, paths=[str(tmp_path / "none.log")])
        text = cfg.read_text().replace(
            "sources:\n",
            f"sources:\n- name: app\n  kind: app\n  paths: ['{app}']\n  format: json\n  time_field: ts\n",
        )
        cfg.write_text(text)
        proc = run_trackd("run", "--once", "-c", str(cfg))
        assert proc.returncode == 0, proc.stderr
        assert "read 6 lines from 1 file(s), 1 skipped" in proc.stderr
        assert '"reason":"encoding"' in proc.stderr
        again = run_trackd("run", "--once", "-c", str(cfg))
        assert "read 0 lines" in again.stderr  # the position moved past every line


class TestMergeOrder:
    def test_resumed_files_still_merge_in_event_time_order(self, tmp_path: Path) -> None:
        """Two files read halfway by a first run, then appended to: the second run starts each
        file at the first record past its position (its floor), so the rest of both comes out
        in event-time order, not one file after the other."""

        def ts(seq: int) -> str:
            minute, sec = divmod(10 * seq, 60)
            hour, minute = divmod(minute, 60)
            return f"28/Nov/2026:{10 + hour:02d}:{minute:02d}:{sec:02d} +0000"

        a, b = tmp_path / "a.log", tmp_path / "b.log"
        for lo, hi in ((0, 300), (300, 600)):
            for seq in range(lo, hi):
                write_access_log(a if seq % 2 == 0 else b, seq, 1, ts=ts(seq))
            cfg = make_config(tmp_path, paths=[str(a), str(b)])
            proc = run_trackd("run", "--once", "-c", str(cfg))
            assert proc.returncode == 0, proc.stderr
        assert page_seqs(read_messages(tmp_path / "out.jsonl")) == list(range(600))


class TestMoreFilesThanDescriptors:
    def test_files_that_cannot_be_opened_fail_the_run_and_are_read_by_the_next(
        self, tmp_path: Path
    ) -> None:
        """200 matched files under a limit of 64 descriptors: the files that cannot be opened
        are not silently left out: the summary says how many and why, the exit is 1; the same
        run with a normal limit reads exactly those, so every line is delivered once."""
        import resource
        import subprocess

        from tests.helpers import trackd_cmd

        logs = tmp_path / "logs"
        logs.mkdir()
        for n in range(200):
            write_access_log(logs / f"vhost{n:03d}.log", n, 1)
        cfg = make_config(tmp_path, paths=[str(logs / "*.log")])

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

        proc = subprocess.run(
            trackd_cmd("run", "--once", "-c", str(cfg)),
            capture_output=True,
            text=True,
            timeout=60,
            preexec_fn=limit,
            check=False,
        )
        assert proc.returncode == 1, proc.stderr
        assert "matched file(s) could not be opened (Too many open files)" in proc.stderr
        assert "raise the descriptor limit" in proc.stderr
        first = page_seqs(read_messages(tmp_path / "out.jsonl"))
        assert 0 < len(first) < 200
        again = run_trackd("run", "--once", "-c", str(cfg))
        assert again.returncode == 0, again.stderr
        assert "could not be opened" not in again.stderr
        assert sorted(page_seqs(read_messages(tmp_path / "out.jsonl"))) == list(range(200))
