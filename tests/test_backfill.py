"""`trackd backfill` end to end: a real subprocess over real rotated, compressed histories."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import random
import re
import resource
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import scaled
from tests.helpers import (
    access_line,
    make_config,
    page_seqs,
    read_messages,
    run_trackd,
    trackd_cmd,
)

T0 = datetime(2026, 11, 1, tzinfo=UTC)
#: logrotate's names, newest first, and how each generation is stored.
GENERATIONS = (
    "access.log",
    "access.log.1",
    "access.log.2.gz",
    "access.log.3.bz2",
    "access.log.4.xz",
)


def clf(seq: int) -> str:
    """The CLF time of line `seq`: one line every 7 seconds."""
    return (T0 + timedelta(seconds=7 * seq)).strftime("%d/%b/%Y:%H:%M:%S +0000")


def history(first: int, count: int) -> bytes:
    """Lines `first`..: several visitors, some named by km_ni, some cookieless."""
    out = []
    for seq in range(first, first + count):
        if seq % 11 == 0:
            cookie = "-"
        elif seq % 5 == 0:
            cookie = f"km_ai=visitor{seq % 13:05d}x; km_ni=user{seq % 7}@example.com"
        else:
            cookie = f"km_ai=visitor{seq % 13:05d}x"
        out.append(access_line(seq, ts=clf(seq), cookie=cookie, ip=f"198.51.100.{seq % 5}"))
    return "".join(out).encode()


def pack(name: str, data: bytes) -> bytes:
    if name.endswith(".gz"):
        return gzip.compress(data)
    if name.endswith(".bz2"):
        return bz2.compress(data)
    if name.endswith(".xz"):
        return lzma.compress(data)
    return data


def write_rotated(directory: Path, per_file: int) -> int:
    """The same history split logrotate-style (`.4.xz` oldest, `access.log` newest); returns the
    number of lines."""
    directory.mkdir(parents=True, exist_ok=True)
    for age, name in enumerate(reversed(GENERATIONS)):
        (directory / name).write_bytes(pack(name, history(age * per_file, per_file)))
    return per_file * len(GENERATIONS)


def backfill(
    cfg: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_trackd("backfill", "-c", str(cfg), *args, timeout=120, env=env)


def essence(messages: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What must be equal whichever files held the lines (messageIds name the file and offset)."""
    return sorted(
        (
            m["type"],
            m["timestamp"],
            m.get("userId"),
            m.get("anonymousId"),
            (m.get("properties") or {}).get("path"),
        )
        for m in messages
    )


def state_snapshot(state: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.name: (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(state.iterdir())
        if p.is_file()
    }


class TestRotatedHistory:
    def test_split_history_backfills_to_the_messages_of_one_file(self, tmp_path: Path) -> None:
        """.log, .1, .2.gz, .3.bz2, .4.xz give the messages of the same lines as one file."""
        logs = tmp_path / "logs"
        total = write_rotated(logs, 400)
        a = tmp_path / "a"
        a.mkdir()
        cfg = make_config(a, paths=[str(logs / "access.log")])
        proc = backfill(cfg, str(logs / "access.log*"))
        assert proc.returncode == 0, proc.stderr
        split = read_messages(a / "out.jsonl")

        whole = tmp_path / "whole" / "all.log"
        whole.parent.mkdir()
        whole.write_bytes(history(0, total))
        b = tmp_path / "b"
        b.mkdir()
        cfg_b = make_config(b, paths=[str(tmp_path / "elsewhere.log")])
        proc = backfill(cfg_b, "--source", "web", str(whole))
        assert proc.returncode == 0, proc.stderr
        one = read_messages(b / "out.jsonl")

        assert len(split) == len(one) > total
        assert essence(split) == essence(one)
        assert len({m["messageId"] for m in split}) == len(split)
        # Oldest first, merged by event time: the page views come out in time order.
        assert page_seqs(split) == list(range(total))

    def test_second_backfill_adds_nothing(self, tmp_path: Path) -> None:
        """Re-running the same backfill recognises every file as read (compressed ones too)."""
        logs = tmp_path / "logs"
        write_rotated(logs, 100)
        cfg = make_config(tmp_path, paths=[str(logs / "access.log")])
        assert backfill(cfg, str(logs / "access.log*")).returncode == 0
        before = (tmp_path / "out.jsonl").read_bytes()
        proc = backfill(cfg, str(logs / "access.log*"))
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "out.jsonl").read_bytes() == before
        assert proc.stderr.count(": already read") == len(GENERATIONS)

    def test_decompressed_copy_elsewhere_is_recognised(self, tmp_path: Path) -> None:
        """A file read once, then found again as a .gz under another name, adds nothing."""
        logs = tmp_path / "logs"
        logs.mkdir()
        (logs / "access.log.1").write_bytes(history(0, 200))
        cfg = make_config(tmp_path, paths=[str(logs / "access.log")])
        assert backfill(cfg, str(logs / "access.log.1")).returncode == 0
        (tmp_path / "copy.gz").write_bytes(gzip.compress(history(0, 200)))
        proc = backfill(cfg, "--source", "web", str(tmp_path / "copy.gz"))
        assert proc.returncode == 0, proc.stderr
        assert page_seqs(read_messages(tmp_path / "out.jsonl")) == list(range(200))


def backfill_limited(
    cfg: Path, pattern: Path, descriptors: int
) -> subprocess.CompletedProcess[str]:
    """`trackd backfill` with its soft and hard descriptor limits at `descriptors`."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (descriptors, descriptors))

    return subprocess.run(
        trackd_cmd("backfill", "-c", str(cfg), str(pattern)),
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit,
        check=False,
    )


def one_file_messages(tmp_path: Path, lines: int) -> list[dict[str, Any]]:
    """The messages of `history(0, lines)` backfilled from one plain file (fresh state)."""
    whole = tmp_path / "whole" / "all.log"
    whole.parent.mkdir()
    whole.write_bytes(history(0, lines))
    b = tmp_path / "b"
    b.mkdir()
    proc = backfill(make_config(b, paths=[str(tmp_path / "x.log")]), "--source", "web", str(whole))
    assert proc.returncode == 0, proc.stderr
    return read_messages(b / "out.jsonl")


class TestManyFiles:
    def test_hundreds_of_hourly_archives_read_under_a_small_descriptor_limit(
        self, tmp_path: Path
    ) -> None:
        """300 hourly .gz generations backfill whole with at most 64 descriptors (hard limit):
        the merge opens a file only when its hour comes, so none fails with 'Too many open
        files' and every line becomes the same messages as one file of the same lines."""
        logs = tmp_path / "logs"
        logs.mkdir()
        per_file, files = 4, 300
        for n in range(files):
            (logs / f"access.log-{n:06d}.gz").write_bytes(
                gzip.compress(history(n * per_file, per_file))
            )
        (tmp_path / "a").mkdir()
        cfg = make_config(tmp_path / "a", paths=[str(logs / "access.log")])
        proc = backfill_limited(cfg, logs / "access.log-*.gz", 64)
        assert proc.returncode == 0, proc.stderr
        assert "Too many open files" not in proc.stderr
        assert f"read {files * per_file} lines from {files} file(s)" in proc.stderr
        got = read_messages(tmp_path / "a" / "out.jsonl")
        assert essence(got) == essence(one_file_messages(tmp_path, files * per_file))

    def test_files_that_cannot_be_opened_are_named_and_read_by_the_next_run(
        self, tmp_path: Path
    ) -> None:
        """80 archives of the same hours must all be open at once (each is more than the first
        64 KiB block, so none is read whole at its first look): under a limit of 48 descriptors
        some cannot be opened. They are not taken for damaged and not marked read: the summary
        names them, the exit is 1, and the same backfill run again (a normal limit) reads
        exactly what was missing."""
        logs = tmp_path / "logs"
        logs.mkdir()
        per_file, files = 300, 80
        for n in range(files):
            lines = b"".join(history(i * files + n, 1) for i in range(per_file))
            (logs / f"access.log-{n:06d}.gz").write_bytes(gzip.compress(lines))
        (tmp_path / "a").mkdir()
        cfg = make_config(tmp_path / "a", paths=[str(logs / "access.log")])
        proc = backfill_limited(cfg, logs / "access.log-*.gz", 48)
        assert proc.returncode == 1, proc.stderr
        assert "could not be read to their end" in proc.stderr
        assert "Too many open files" in proc.stderr
        assert "damaged files" not in proc.stderr
        read = re.search(r"read (\d+) lines from", proc.stderr)
        assert read is not None and 0 < int(read.group(1)) < files * per_file, proc.stderr

        again = backfill(cfg, str(logs / "access.log-*.gz"))
        assert again.returncode == 0, again.stderr
        both = read_messages(tmp_path / "a" / "out.jsonl")
        assert len({m["messageId"] for m in both}) == len(both)  # nothing twice

        # Every line became its page exactly once. (The aliases may differ from one pass: the
        # second run resolves the missed lines after later ones.)
        def pages(messages: list[dict[str, Any]]) -> list[str]:
            return sorted(m["properties"]["path"] for m in messages if m["type"] == "page")

        assert pages(both) == pages(one_file_messages(tmp_path, files * per_file))


class TestIdempotentWithRun:
    def test_run_once_then_backfill_emits_nothing_twice(self, tmp_path: Path) -> None:
        """`run --once` reads access.log; it grows, is rotated and compressed, a new one starts;
        backfill of everything emits only the lines `run` did not read, each once."""
        logs = tmp_path / "logs"
        logs.mkdir()
        live = logs / "access.log"
        live.write_bytes(history(0, 300))
        cfg = make_config(tmp_path, paths=[str(live)])
        assert run_trackd("run", "--once", "-c", str(cfg)).returncode == 0
        with live.open("ab") as fh:
            fh.write(history(300, 100))  # written after `run` looked: unread
        live.rename(logs / "access.log.1")
        (logs / "access.log.1.gz").write_bytes(gzip.compress((logs / "access.log.1").read_bytes()))
        (logs / "access.log.1").unlink()
        live.write_bytes(history(400, 50))
        proc = backfill(cfg, str(logs / "access.log*"))
        assert proc.returncode == 0, proc.stderr
        assert page_seqs(read_messages(tmp_path / "out.jsonl")) == list(range(450))
        # And `run` afterwards: nothing new either.
        assert run_trackd("run", "--once", "-c", str(cfg)).returncode == 0
        assert page_seqs(read_messages(tmp_path / "out.jsonl")) == list(range(450))

    def test_history_read_after_newer_lines_sends_no_more_aliases(self, tmp_path: Path) -> None:
        """The usual order on a new install: `run` reads today's file, then backfill reads
        last week's. Devices that R4 found shared in today's lines (7 people on each) are shared
        in their history too: the late logins start epochs without an alias each (R4, R6)."""
        logs = tmp_path / "logs"
        total = write_rotated(logs, 400)
        late = tmp_path / "late"
        late.mkdir()
        cfg = make_config(late, paths=[str(logs / "access.log")])
        assert run_trackd("run", "--once", "-c", str(cfg)).returncode == 0
        today = len(read_messages(late / "out.jsonl"))
        proc = backfill(cfg, str(logs / "access.log.*"))
        assert proc.returncode == 0, proc.stderr
        late_msgs = read_messages(late / "out.jsonl")[today:]

        ordered = tmp_path / "ordered"
        ordered.mkdir()
        cfg_o = make_config(ordered, paths=[str(logs / "access.log")])
        assert backfill(cfg_o, str(logs / "access.log*")).returncode == 0
        ordered_msgs = read_messages(ordered / "out.jsonl")

        def aliases(msgs: list[dict[str, Any]]) -> int:
            return sum(1 for m in msgs if m["type"] == "alias")

        assert len(page_seqs(late_msgs)) == total - 400
        assert len(page_seqs(ordered_msgs)) == total
        # Each of the 13 devices sends at most one alias per person until its 4th person trips
        # the breaker (max_named_per_device + 1), in either order; before the fix, the late
        # history sent one per login (~300 here).
        bound = 13 * 4
        assert 0 < aliases(ordered_msgs) <= bound
        assert aliases(late_msgs) <= bound


class TestWindow:
    def test_since_and_until_bound_the_output(self, tmp_path: Path) -> None:
        """Only records in [since, until) are emitted; the others are counted as skipped."""
        logs = tmp_path / "logs"
        write_rotated(logs, 100)
        cfg = make_config(tmp_path, paths=[str(logs / "access.log")])
        since = (T0 + timedelta(seconds=7 * 120)).isoformat()
        until = (T0 + timedelta(seconds=7 * 380)).strftime("%Y-%m-%dT%H:%M:%S+00:00")
        proc = backfill(cfg, "--since", since, "--until", until, str(logs / "access.log*"))
        assert proc.returncode == 0, proc.stderr
        assert page_seqs(read_messages(tmp_path / "out.jsonl")) == list(range(120, 380))
        assert "before_since 120" in proc.stderr and "after_until 120" in proc.stderr

    def test_offsets_in_times_are_honoured(self, tmp_path: Path) -> None:
        """A time with an offset means that instant (01:00+01:00 is 00:00 UTC)."""
        logs = tmp_path / "logs"
        logs.mkdir()
        (logs / "access.log").write_bytes(history(0, 100))
        cfg = make_config(tmp_path, paths=[str(logs / "access.log")])
        at = T0 + timedelta(seconds=7 * 50)
        shifted = (at + timedelta(hours=1)).replace(tzinfo=None).isoformat() + "+01:00"
        proc = backfill(cfg, "--since", shifted, str(logs / "access.log"))
        assert proc.returncode == 0, proc.stderr
        assert page_seqs(read_messages(tmp_path / "out.jsonl")) == list(range(50, 100))

    def test_a_bad_time_is_a_usage_error(self, tmp_path: Path) -> None:
        """--since yesterday: exit 2 saying what is wrong, nothing read."""
        logs = tmp_path / "logs"
        logs.mkdir()
        (logs / "access.log").write_bytes(history(0, 10))
        cfg = make_config(tmp_path, paths=[str(logs / "access.log")])
        proc = backfill(cfg, "--since", "yesterday", str(logs / "access.log"))
        assert proc.returncode == 2
        assert "--since 'yesterday': not an ISO 8601 time" in proc.stderr
        assert not (tmp_path / "state").exists()


class TestDryRun:
    def test_dry_run_leaves_the_state_untouched(self, tmp_path: Path) -> None:
        """--dry-run prints a summary and sample messages; the state directory and the sink
        stay byte for byte (and mtime) the same."""
        logs = tmp_path / "logs"
        write_rotated(logs, 100)
        cfg = make_config(tmp_path, paths=[str(logs / "access.log")])
        assert backfill(cfg, str(logs / "access.log.4.xz")).returncode == 0
        state = tmp_path / "state"
        before = state_snapshot(state)
        sink_before = (tmp_path / "out.jsonl").read_bytes()
        proc = backfill(cfg, "--dry-run", str(logs / "access.log*"))
        assert proc.returncode == 0, proc.stderr
        assert state_snapshot(state) == before
        assert (tmp_path / "out.jsonl").read_bytes() == sink_before
        assert "trackd backfill: read 400 lines from 4 file(s)" in proc.stdout
        assert "access.log.4.xz: already read" in proc.stdout
        assert "sample (5 of" in proc.stdout and '"type":"page"' in proc.stdout
        assert "dry run: no state changed, nothing sent" in proc.stdout

    def test_dry_run_without_state_creates_none(self, tmp_path: Path) -> None:
        """A dry run on a host never started leaves no state directory behind."""
        logs = tmp_path / "logs"
        write_rotated(logs, 20)
        cfg = make_config(tmp_path, paths=[str(logs / "access.log")])
        proc = backfill(cfg, "--dry-run", str(logs / "access.log*"))
        assert proc.returncode == 0, proc.stderr
        assert not (tmp_path / "state").exists()
        assert not (tmp_path / "out.jsonl").exists()


class TestDamage:
    def test_truncated_gz_yields_its_readable_lines_and_is_named(self, tmp_path: Path) -> None:
        """A .gz cut short gives every complete line before the cut; it is reported by name and
        the other files are read; exit 0."""
        logs = tmp_path / "logs"
        logs.mkdir()
        data = gzip.compress(history(0, 2000))
        (logs / "access.log.2.gz").write_bytes(data[: len(data) // 2])
        (logs / "access.log.1").write_bytes(history(2000, 100))
        cfg = make_config(tmp_path, paths=[str(logs / "access.log")])
        proc = backfill(cfg, str(logs / "access.log.*"))
        assert proc.returncode == 0, proc.stderr
        seqs = page_seqs(read_messages(tmp_path / "out.jsonl"))
        cut = seqs.index(2000)
        assert seqs[:cut] == list(range(cut)) and cut > 500
        assert seqs[cut:] == list(range(2000, 2100))
        assert f"{logs / 'access.log.2.gz'}: truncated" in proc.stderr
        assert "damaged files (1)" in proc.stderr

    def test_json_summary_names_the_damage(self, tmp_path: Path) -> None:
        """`--json`: the summary is one JSON object on stderr (stdout stays the `-` sink's),
        with the counts, and the damaged file with the lines read before the damage."""
        logs = tmp_path / "logs"
        logs.mkdir()
        whole = gzip.compress(history(0, 2_000))
        (logs / "access.log.2.gz").write_bytes(whole[: len(whole) // 2])
        (logs / "access.log.1").write_bytes(history(2_000, 100))
        cfg = make_config(tmp_path, paths=[str(logs / "access.log")])
        proc = backfill(cfg, "--json", str(logs / "access.log.*"))
        assert proc.returncode == 0, proc.stderr
        data = json.loads(proc.stderr.strip().splitlines()[-1])
        (bad,) = data["damaged_files"]
        assert bad["path"] == str(logs / "access.log.2.gz")
        assert data["lines"] == bad["lines_read"] + 100
        assert data["messages"] == data["delivered"] > 0

    def test_nothing_readable_exits_1(self, tmp_path: Path) -> None:
        """Only a corrupt archive: nothing at all could be read, exit 1 naming it."""
        bad = tmp_path / "access.log.1.gz"
        bad.write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(200))
        cfg = make_config(tmp_path, paths=[str(tmp_path / "access.log")])
        proc = backfill(cfg, str(bad))
        assert proc.returncode == 1, proc.stderr
        assert str(bad) in proc.stderr


class TestArguments:
    def test_a_file_matching_no_source_needs_source(self, tmp_path: Path) -> None:
        """Without --source, a file no source's paths match is a usage error naming it."""
        other = tmp_path / "other.log"
        other.write_bytes(history(0, 5))
        cfg = make_config(tmp_path, paths=[str(tmp_path / "access.log")])
        proc = backfill(cfg, str(other))
        assert proc.returncode == 2
        assert f"{other}: matches no source's paths" in proc.stderr
        assert "--source" in proc.stderr

    def test_a_missing_file_is_a_usage_error(self, tmp_path: Path) -> None:
        """A path or glob matching nothing: exit 2 naming it."""
        cfg = make_config(tmp_path, paths=[str(tmp_path / "access.log")])
        proc = backfill(cfg, str(tmp_path / "nope-*.log"))
        assert proc.returncode == 2
        assert "no such file" in proc.stderr and "nope-*.log" in proc.stderr


@pytest.mark.slow
class TestKill9:
    def test_kill_9_then_rerun_loses_and_duplicates_nothing(self, tmp_path: Path) -> None:
        """kill -9 at a random point of a backfill, re-run: every line exactly once."""
        logs = tmp_path / "logs"
        total = write_rotated(logs, 20_000)
        rng = random.Random(10)
        for i in range(scaled(2, 12)):
            work = tmp_path / f"w{i}"
            work.mkdir()
            cfg = make_config(work, paths=[str(logs / "access.log")])
            env = {**os.environ, "TRACKD_WORKERS": rng.choice(["0", "2"])}
            proc = subprocess.Popen(
                trackd_cmd("backfill", "-c", str(cfg), str(logs / "access.log*")),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
            )
            time.sleep(rng.uniform(0.3, 2.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            done = backfill(cfg, str(logs / "access.log*"), env=env)
            assert done.returncode == 0, done.stderr
            seqs = page_seqs(read_messages(work / "out.jsonl"))
            assert seqs == list(range(total)), f"run {i}: {len(seqs)} of {total}"
