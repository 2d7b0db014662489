"""Rotation while `trackd run` tails (SCENARIOS.md §A 1-7): real logrotate, a live writer, and
every sequence number delivered exactly once."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.helpers import wait_until, write_access_log
from tests.sources.tailing import (
    Agent,
    Writer,
    assert_copy_window_losses,
    assert_exactly_once,
    logrotate,
)


def _gap_counted(agent: Agent) -> int:
    """Lines the agent logged as lost to truncation (trackd_truncation_gap_lines_total)."""
    return sum(int(n) for n in re.findall(r'"lost_lines_estimate":(\d+)', agent.stderr()))


@pytest.mark.timeout(120)
def test_rename_rotation_under_load_delivers_every_generation_once(tmp_path: Path) -> None:
    """S1: three `create` rotations while a writer appends 1,500 lines/s: the old generation is
    read while it still grows, the new one from 0, each line exactly once."""
    log = tmp_path / "app.log"
    log.touch()
    agent = Agent(tmp_path, [str(log)]).start()
    try:
        writer = Writer(log, 1500).start()
        for _ in range(3):
            mark = writer.next
            wait_until(lambda m=mark: agent.delivered() > m + 500, 30, "lines read before rotating")
            logrotate(tmp_path, log, "create")
        mark = writer.next
        wait_until(lambda: writer.next > mark + 1000, 30, "lines written after the last rotation")
        total = writer.stop()
        assert_exactly_once(agent.wait_seqs(total), range(total))
        assert agent.stop() == 0
    finally:
        agent.close()


@pytest.mark.timeout(120)
def test_two_rotations_while_behind_lose_no_generation(tmp_path: Path) -> None:
    """S2: the tailer is behind (a 120k-line backlog) when the file is rotated twice (`.1` ->
    `.2`): all three generations are delivered, none missed, none twice."""
    log = tmp_path / "app.log"
    log.touch()
    agent = Agent(tmp_path, [str(log)]).start()
    try:
        write_access_log(log, 0, 120_000)
        logrotate(tmp_path, log, "create")
        write_access_log(log, 120_000, 120_000)
        logrotate(tmp_path, log, "create")
        behind = agent.delivered()
        write_access_log(log, 240_000, 10_000)
        assert behind < 240_000, "the tailer caught up before the second rotation"
        assert_exactly_once(agent.wait_seqs(250_000, timeout=90), range(250_000))
        assert (tmp_path / "app.log.2").exists()
    finally:
        agent.close()


@pytest.mark.timeout(120)
def test_kill_while_reading_a_rotated_file_resumes_it_by_identity(tmp_path: Path) -> None:
    """S3 (the HTTP sink's outage is out of reach here: the agent is killed instead): rotate while
    the agent is behind, SIGKILL it, restart — the rotated file resumes from its checkpoint,
    found by identity at its new name, and nothing is lost or duplicated."""
    log = tmp_path / "app.log"
    write_access_log(log, 0, 150_000)
    agent = Agent(tmp_path, [str(log)]).start()
    try:
        logrotate(tmp_path, log, "create")
        write_access_log(log, 150_000, 1000)
        wait_until(lambda: agent.delivered() > 20_000, 30, "part of the rotated file read")
        agent.kill()
        agent.start()
        assert '"event":"file_found_rotated"' in agent.stderr()
        assert_exactly_once(agent.wait_seqs(151_000, timeout=60), range(151_000))
    finally:
        agent.close()


@pytest.mark.timeout(90)
def test_rotated_files_matched_by_the_glob_are_not_reread(tmp_path: Path) -> None:
    """S5: with `paths: [app.log*]` the renamed `app.log.1` is the same file, never read again
    from 0 — neither while running nor after a restart."""
    log = tmp_path / "app.log"
    write_access_log(log, 0, 500)
    agent = Agent(tmp_path, [str(tmp_path / "app.log*")]).start()
    try:
        agent.wait_seqs(500)
        logrotate(tmp_path, log, "create")
        write_access_log(log, 500, 500)
        agent.wait_seqs(1000)
        logrotate(tmp_path, log, "create")
        write_access_log(log, 1000, 500)
        agent.wait_seqs(1500)
        assert agent.stop() == 0
        agent.start()
        write_access_log(log, 1500, 10)
        assert_exactly_once(agent.wait_seqs(1510), range(1510))
    finally:
        agent.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("directives", [("compress",), ("compress", "delaycompress")])
def test_compressed_generations_are_not_reingested(
    tmp_path: Path, directives: tuple[str, ...]
) -> None:
    """S6: with a glob that matches `app.log.N.gz`, a generation compressed after it was read
    (at once, or one rotation later with delaycompress) is not read again, across a restart too."""
    log = tmp_path / "app.log"
    write_access_log(log, 0, 300)
    agent = Agent(tmp_path, [str(tmp_path / "app.log*")]).start()
    try:
        total = 300
        for _ in range(3):
            agent.wait_seqs(total)
            logrotate(tmp_path, log, "create", *directives)
            write_access_log(log, total, 300)
            total += 300
        agent.wait_seqs(total)
        assert list(tmp_path.glob("app.log.*.gz"))
        assert agent.stop() == 0
        agent.start()
        write_access_log(log, total, 10)
        assert_exactly_once(agent.wait_seqs(total + 10), range(total + 10))
    finally:
        agent.close()


@pytest.mark.timeout(90)
def test_lines_written_before_compression_are_read_from_the_archive(tmp_path: Path) -> None:
    """S6: lines appended after the agent stopped and then compressed by the rotation (no
    delaycompress) are read from `app.log.1.gz` from the saved offset; `paths` names only the
    live file."""
    log = tmp_path / "app.log"
    write_access_log(log, 0, 300)
    agent = Agent(tmp_path, [str(log)]).start()
    try:
        agent.wait_seqs(300)
        assert agent.stop() == 0
        write_access_log(log, 300, 200)
        logrotate(tmp_path, log, "create", "compress")
        assert (tmp_path / "app.log.1.gz").exists() and not (tmp_path / "app.log.1").exists()
        write_access_log(log, 500, 100)
        agent.start()
        assert_exactly_once(agent.wait_seqs(600), range(600))
    finally:
        agent.close()


@pytest.mark.timeout(120)
def test_copytruncate_under_load_duplicates_nothing_and_counts_its_gap(tmp_path: Path) -> None:
    """S7: `copytruncate` rotations while a writer appends: no line twice; the unread tail is
    recovered from the copy; what the writer appends in the copy window (after the copy, before
    the truncation: trackd never sees it, so it cannot be counted) is at most one short run of
    lines per rotation."""
    log = tmp_path / "app.log"
    log.touch()
    agent = Agent(tmp_path, [str(log)]).start()
    rotations = 3
    try:
        writer = Writer(log, 1000, reopen=False).start()
        for _ in range(rotations):
            mark = writer.next
            wait_until(lambda m=mark: agent.delivered() > m + 500, 30, "lines before rotating")
            logrotate(tmp_path, log, "copytruncate")
        mark = writer.next
        wait_until(lambda: writer.next > mark + 500, 30, "lines after the last rotation")
        total = writer.stop()
        wait_until(lambda: max(agent.seqs(), default=-1) == total - 1, 30, "the last line")
        missing = assert_exactly_once(agent.seqs(), range(total), allow_missing=total)
        assert_copy_window_losses(missing, rotations)
        assert '"event":"file_truncated"' in agent.stderr()
    finally:
        agent.close()


@pytest.mark.timeout(60)
def test_copytruncate_recovers_the_unread_tail_from_the_copy(tmp_path: Path) -> None:
    """S7: the agent is stopped with lines unread; copytruncate moves them into `app.log.1` and
    empties the file; at start they are read from the copy (saved offset), then the file from 0."""
    log = tmp_path / "app.log"
    write_access_log(log, 0, 200)
    agent = Agent(tmp_path, [str(log)]).start()
    try:
        agent.wait_seqs(200)
        assert agent.stop() == 0
        write_access_log(log, 200, 300)
        logrotate(tmp_path, log, "copytruncate")
        assert os.path.getsize(log) == 0
        write_access_log(log, 500, 50)
        agent.start()
        assert_exactly_once(agent.wait_seqs(550), range(550))
        assert _gap_counted(agent) == 0
    finally:
        agent.close()


@pytest.mark.timeout(120)
def test_copytruncate_copies_matched_by_the_glob_are_not_read_again(tmp_path: Path) -> None:
    """S5+S7: with `paths: [app.log*]` the copies copytruncate makes (`app.log.1`, then `.2`...)
    are recognised as copies of lines already read — live under a writer, and for a rotation
    made while the agent was stopped — so no line is delivered twice."""
    log = tmp_path / "app.log"
    log.touch()
    agent = Agent(tmp_path, [str(tmp_path / "app.log*")]).start()
    try:
        writer = Writer(log, 1000, reopen=False).start()
        for _ in range(3):
            mark = writer.next
            wait_until(lambda m=mark: agent.delivered() > m + 500, 30, "lines before rotating")
            logrotate(tmp_path, log, "copytruncate")
        # Lines written in a copy window are lost (copytruncate's own race): keep writing past
        # the last rotation, so the final lines are surely in the live file.
        after = writer.next
        wait_until(lambda: writer.next >= after + 50, 10, "lines after the last rotation")
        total = writer.stop()
        wait_until(lambda: max(agent.seqs(), default=-1) == total - 1, 30, "the last line")
        assert agent.stop() == 0
        write_access_log(log, total, 300)
        logrotate(tmp_path, log, "copytruncate")
        write_access_log(log, total + 300, 10)
        agent.start()
        wait_until(lambda: max(agent.seqs(), default=-1) == total + 309, 30, "the last line")
        missing = assert_exactly_once(agent.seqs(), range(total + 310), allow_missing=total)
        assert_copy_window_losses(missing, 3)
    finally:
        agent.close()
