"""The live tailer inside `trackd run` (SCENARIOS.md §A 12, 25-28): tiny files, partial lines,
hostile bytes, over-long lines, torn writes, deleted files, bursts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.sources.catalog import Catalog
from agent.sources.tailer import Tailer
from tests.conftest import scaled
from tests.helpers import (
    access_line,
    free_port,
    make_config,
    metric,
    wait_for_metric,
    wait_until,
    write_access_log,
)
from tests.sources.tailing import (
    TOO_LONG,
    Agent,
    assert_exactly_once,
    file_rows,
    overlong_agent,
    write_overlong,
)


def _offsets(agent: Agent) -> dict[str, int]:
    return {Path(r["path"]).name: r["offset"] for r in file_rows(agent.state)}


@pytest.mark.timeout(60)
def test_tiny_files_and_partial_lines_wait_for_newline_or_rotation(tmp_path: Path) -> None:
    """S12: files under 64 B are read promptly; a line without its newline is held (its bytes
    not committed) until the newline comes, or until the file is rotated away and idle, when it
    is flushed as a line of its own."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "tiny.log").write_bytes(b"x\n")
    (logs / "partial.log").write_bytes(b"abc")
    agent = Agent(tmp_path, [str(logs / "*.log")]).start()
    try:
        wait_until(lambda: _offsets(agent).get("tiny.log") == 2, 10, "tiny.log read")
        assert _offsets(agent)["partial.log"] == 0
        with (logs / "partial.log").open("ab") as fh:
            fh.write(b"def\nghi")
        wait_until(lambda: _offsets(agent)["partial.log"] == 7, 10, "the completed line")
        os.replace(logs / "partial.log", tmp_path / "partial.old")
        wait_until(lambda: _offsets(agent)["partial.log"] == 10, 10, "the flushed partial line")
        line = access_line(0)
        (logs / "access.log").write_text(line[:50])
        wait_until(lambda: "access.log" in _offsets(agent), 10, "access.log discovered")
        with (logs / "access.log").open("a") as fh:
            fh.write(line[50:])
        assert agent.wait_seqs(1) == [0]
    finally:
        agent.close()


@pytest.mark.timeout(120)
def test_overlong_lines_are_skipped_counted_and_tailing_goes_on(tmp_path: Path) -> None:
    """S26: a 1 MiB line and a line of many MiB that has no newline for a while are skipped and
    counted (too_long); the lines around them are delivered. (Peak memory while skipping:
    `bench/memory.py overlong`.)"""
    agent, log, port = overlong_agent(tmp_path)
    agent.start()
    try:
        agent.wait_seqs(10)
        write_overlong(log, scaled(20, 100))  # MiB of one line, no newline yet
        wait_for_metric(port, TOO_LONG, 30)  # the 1 MiB line counted
        with log.open("ab") as fh:
            fh.write(b"\n")  # ends the endless line: it is skipped, what follows is read
        write_access_log(log, 10, 5)
        assert_exactly_once(agent.wait_seqs(15, timeout=60), range(15))
        assert metric(port, TOO_LONG) == 2
    finally:
        agent.close()


@pytest.mark.timeout(60)
def test_invalid_utf8_nul_crlf_and_lone_cr_never_drop_the_event(tmp_path: Path) -> None:
    """S27: invalid UTF-8 and NUL bytes inside a field become U+FFFD, CRLF lines lose the CR,
    a lone CR stays data: every one of these lines is delivered."""
    log = tmp_path / "app.log"
    lines = [
        access_line(0).replace("Mozilla", "Moz\xffilla").encode("latin-1"),
        access_line(1).replace("Mozilla", "Moz\x00illa").encode(),
        access_line(2).encode()[:-1] + b"\r\n",
        access_line(3).replace("Mozilla", "Moz\rilla").encode(),
    ]
    log.write_bytes(b"".join(lines))
    agent = Agent(tmp_path, [str(log)]).start()
    try:
        assert_exactly_once(agent.wait_seqs(4), range(4))
        from tests.helpers import read_messages

        uas = [m["context"]["userAgent"] for m in read_messages(agent.out)]
        assert uas[0].startswith("Moz\ufffdilla")
        assert "\x00" in uas[1] or "\ufffd" in uas[1]
        assert not uas[2].endswith("\r")
        assert uas[3].startswith("Moz\rilla")
    finally:
        agent.close()


@pytest.mark.timeout(60)
def test_torn_write_emits_no_fragment(tmp_path: Path) -> None:
    """S28: a line written with two write() calls split at a 4 KiB boundary, the agent reading
    in between: it is delivered once, whole, never as a fragment."""
    log = tmp_path / "app.log"
    write_access_log(log, 0, 1)
    agent = Agent(tmp_path, [str(log)]).start()
    try:
        agent.wait_seqs(1)
        pad = 4096 - log.stat().st_size % 4096
        line = access_line(1, ua="torn/" + "u" * 6000).encode()
        fd = os.open(log, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, access_line(2).encode() + line[: pad + 100])
            agent.wait_seqs(2)  # the agent has read past the first half
            os.write(fd, line[pad + 100 :])
        finally:
            os.close(fd)
        assert_exactly_once(agent.wait_seqs(3), range(3))
    finally:
        agent.close()


@pytest.mark.timeout(60)
def test_file_deleted_while_open_is_read_to_its_end_then_closed(tmp_path: Path) -> None:
    """A file deleted with unread lines is read to its end through the open descriptor, then
    closed (its disk space released: no descriptor left on it)."""
    log = tmp_path / "app.log"
    write_access_log(log, 0, 10)
    agent = Agent(tmp_path, [str(log)]).start()
    try:
        agent.wait_seqs(10)
        write_access_log(log, 10, 50_000)
        log.unlink()
        assert_exactly_once(agent.wait_seqs(50_010), range(50_010))

        def released() -> bool:
            fds = Path(f"/proc/{agent.pid}/fd")
            return not any("app.log" in os.readlink(fds / fd) for fd in os.listdir(fds))

        wait_until(released, 10, "the deleted file closed")
        assert file_rows(agent.state)[0]["state"] == "deleted"
    finally:
        agent.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_burst_into_one_file_loses_nothing_and_counts_every_line(tmp_path: Path) -> None:
    """S25 (scaled: as fast as Python writes, 400k lines in CI): the agent lags, then delivers
    every line once, and its counters agree. (Peak memory under the burst: `bench/memory.py
    burst`.)"""
    log = tmp_path / "app.log"
    log.touch()
    port = free_port()
    agent = Agent(tmp_path, [str(log)], {"metrics": {"listen": f"127.0.0.1:{port}"}}).start()
    try:
        total = scaled(400_000, 2_000_000)
        for first in range(0, total, 100_000):
            write_access_log(log, first, 100_000)
        assert_exactly_once(agent.wait_seqs(total, timeout=240), range(total))
        assert metric(port, 'trackd_lines_total{source="web"}') == total
        assert metric(port, 'trackd_messages_total{type="page"}') == total
        skipped = 'trackd_lines_skipped_total{reason="too_long",source="web"}'
        assert metric(port, skipped) == 0
    finally:
        agent.close()


# -- the Tailer in-process, on an injected clock -------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Rows:
    """An in-memory PositionStore."""

    def __init__(self) -> None:
        self.rows: dict[int, object] = {}

    def insert(self, row: object) -> int:
        self.rows[len(self.rows) + 1] = row
        return len(self.rows)

    def update(self, row: object) -> None:
        pass

    def delete(self, ids: list[int]) -> None:
        for i in ids:
            self.rows.pop(i, None)


def _tailer(
    tmp_path: Path, paths: list[str], max_open: int = 64, **extra: object
) -> tuple[Tailer, _Clock]:
    from agent.config import load_config

    cfg = load_config(str(make_config(tmp_path, paths=paths, extra=dict(extra))))
    clock = _Clock()
    catalog = Catalog(
        [], _Rows(), first_start=False, start_at="beginning", max_line_bytes=65536, clock=clock
    )
    return Tailer(cfg, catalog, clock=clock, max_open=max_open), clock


def _lines(tailer: Tailer, sweep: bool = True) -> list[bytes]:
    """Poll, committing each split's position as the pipeline's transaction would."""
    out = []
    for tf, split in tailer.poll(sweep):
        out += split.lines
        tf.row.offset = split.end
    tailer.settle()
    return out


def test_rotated_file_is_read_while_it_grows_then_closed_after_rotate_wait(tmp_path: Path) -> None:
    """A renamed file keeps being read through its descriptor (no glob matches its new name)
    while it grows; idle for rotate_wait, its final partial line is flushed and it is closed."""
    log = tmp_path / "app.log"
    log.write_bytes(b"one\n")
    tailer, clock = _tailer(tmp_path, [str(log)], rotate_wait="10s")
    tailer.discover()
    assert _lines(tailer) == [b"one"]
    os.replace(log, tmp_path / "app.log.1")
    assert _lines(tailer) == []
    with (tmp_path / "app.log.1").open("ab") as fh:
        fh.write(b"two\nthr")
    clock.now += 5
    assert _lines(tailer, sweep=False) == [b"two"]
    clock.now += 9
    assert _lines(tailer, sweep=False) == [] and len(tailer.files) == 1
    clock.now += 2
    assert _lines(tailer, sweep=False) == [b"thr"]
    assert tailer.files == {}


def test_rotated_file_held_past_max_rotated_hold_drops_and_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rotated file still behind after max_rotated_hold (trackd cannot keep up) is closed; the
    unread lines are dropped and counted (trackd_dropped_total{reason="rotated_hold"})."""
    import agent.sources.tailer as tailer_module

    log = tmp_path / "app.log"
    log.write_bytes(b"a\n")
    tailer, clock = _tailer(tmp_path, [str(log)], max_rotated_hold="60s")
    tailer.discover()
    _lines(tailer)
    os.replace(log, tmp_path / "app.log.1")
    _lines(tailer)
    with (tmp_path / "app.log.1").open("ab") as fh:
        fh.write(b"b\nc\nd")
    clock.now += 61
    monkeypatch.setattr(tailer_module, "READ_BUDGET", 2)  # behind: reads only "b\n" this time
    assert _lines(tailer) == [b"b"]
    assert tailer.dropped_hold == 2 and tailer.files == {}


def test_rotated_file_still_growing_after_max_rotated_hold_is_read_then_closed(
    tmp_path: Path,
) -> None:
    """A rotated file whose writer never lets go is read to its end and closed once
    max_rotated_hold has passed, nothing dropped."""
    log = tmp_path / "app.log"
    log.write_bytes(b"a\n")
    tailer, clock = _tailer(tmp_path, [str(log)], max_rotated_hold="60s", rotate_wait="10s")
    tailer.discover()
    _lines(tailer)
    os.replace(log, tmp_path / "app.log.1")
    _lines(tailer)
    for _ in range(7):  # 7 x 9 s: past the hold at the last one
        assert tailer.files != {}
        clock.now += 9
        with (tmp_path / "app.log.1").open("ab") as fh:
            fh.write(b"more\n")
        assert _lines(tailer) == [b"more"]
    assert tailer.files == {} and tailer.dropped_hold == 0


def test_descriptor_cap_parks_idle_files_and_reopens_them_by_identity(tmp_path: Path) -> None:
    """Beyond the cap, idle fully read files are closed (parked); one that grows is reopened
    and read from where it stopped; one rotated while parked is followed among its siblings."""
    logs = tmp_path / "logs"
    logs.mkdir()
    for i in range(40):
        (logs / f"f{i:02d}.log").write_bytes(b"x%d\n" % i)
    tailer, clock = _tailer(tmp_path, [str(logs / "*.log")], max_open=16)
    seen: list[bytes] = []
    for _ in range(10):
        tailer.discover()
        seen += _lines(tailer)
        clock.now += 1
    assert sorted(seen) == sorted(b"x%d" % i for i in range(40))
    assert sum(1 for tf in tailer.files.values() if tf.fd >= 0) <= 16
    parked = next(tf for tf in tailer.files.values() if tf.fd < 0)
    with open(parked.path, "ab") as fh:
        fh.write(b"more\n")
    assert _lines(tailer) == [b"more"]
    other = next(tf for tf in tailer.files.values() if tf.fd < 0 and tf is not parked)
    os.replace(other.path, other.path + ".1")
    with open(other.path + ".1", "ab") as fh:
        fh.write(b"after-rotation\n")
    _lines(tailer)  # the sweep finds it gone from its path and follows it
    assert _lines(tailer) == [b"after-rotation"]


def test_truncation_while_behind_counts_the_unread_bytes_as_a_gap(tmp_path: Path) -> None:
    """An in-place truncation of lines trackd saw but had not read yet (no copy holds them) is
    counted in the truncation gap (lines estimated from the average line length)."""
    log = tmp_path / "app.log"
    log.write_bytes(b"l1\nl2\n")
    tailer, _clock = _tailer(tmp_path, [str(log)])
    tailer.discover()
    assert _lines(tailer) == [b"l1", b"l2"]
    tf = next(iter(tailer.files.values()))
    with log.open("ab") as fh:
        fh.write(b"l3\nl4\n")
    tf.size = log.stat().st_size  # seen by a look, not read yet
    log.write_bytes(b"n1\n")
    assert _lines(tailer) == [b"n1"]
    assert tailer.catalog.gaps == {"web": 2}


@pytest.mark.timeout(60)
def test_each_appended_line_is_delivered_before_the_next_is_written(tmp_path: Path) -> None:
    """A line appended to a tailed file reaches the sink's file with no later write to push it,
    in order. (Its latency against SPEC §5.3's 100 ms is measured by `bench/tailing.py
    latency`.)"""
    log = tmp_path / "app.log"
    log.touch()
    agent = Agent(tmp_path, [str(log)]).start()
    try:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND)
        try:
            for seq in range(20):
                os.write(fd, access_line(seq).encode())
                wait_until(lambda s=seq: agent.delivered() > s, 5, f"line {seq}", every=0.005)
        finally:
            os.close(fd)
        assert agent.seqs() == list(range(20))
    finally:
        agent.close()
