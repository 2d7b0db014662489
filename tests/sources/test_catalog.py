"""File identity across restarts (SCENARIOS.md §A 4, 8-11, 17, 18): which saved file a file on
disk is, where reading resumes, and what is read from 0."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

from tests.helpers import access_line, wait_until, write_access_log
from tests.sources.tailing import Agent, assert_exactly_once, file_rows, logrotate

#: 2 KiB of header lines (they do not parse: counted, not delivered), longer than the fingerprint.
BANNER = "".join(f"# banner line {i:03d} of a long shared header ........\n" for i in range(40))


def _age_rows(state: Path, column: str, seconds_ago: float) -> None:
    """Pretend time passed: move a timestamp column of every file row into the past."""
    conn = sqlite3.connect(state / "state.db")
    try:
        conn.execute(f"UPDATE files SET {column} = ?", (time.time() - seconds_ago,))  # noqa: S608
        conn.commit()
    finally:
        conn.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "directives",
    [("create",), ("create", "dateext"), ("create", "compress"), ("create", "dateext", "compress")],
    ids=["dot-N", "dateext", "gz", "dateext-gz"],
)
def test_rotation_while_stopped_finds_the_old_generation(
    tmp_path: Path, directives: tuple[str, ...]
) -> None:
    """S4: stopped, rotated (`access.log.1`, `access.log-YYYYMMDD`, compressed or not), written
    to: at start the rest of the old generation is read from its saved offset — `paths` names
    only the live file — and the new file from 0."""
    log = tmp_path / "access.log"
    write_access_log(log, 0, 300)
    agent = Agent(tmp_path, [str(log)]).start()
    try:
        agent.wait_seqs(300)
        assert agent.stop() == 0
        write_access_log(log, 300, 200)
        logrotate(tmp_path, log, *directives)
        write_access_log(log, 500, 100)
        agent.start()
        assert '"event":"file_found_rotated"' in agent.stderr()
        assert_exactly_once(agent.wait_seqs(600), range(600))
    finally:
        agent.close()


@pytest.mark.timeout(60)
def test_two_rotations_while_stopped_read_the_unseen_generation(tmp_path: Path) -> None:
    """S4: rotated twice while stopped: the saved generation (now `.2`) resumes at its offset,
    the generation trackd never saw (now `.1`) and the new file are read from 0."""
    log = tmp_path / "access.log"
    write_access_log(log, 0, 100)
    agent = Agent(tmp_path, [str(log)]).start()
    try:
        agent.wait_seqs(100)
        assert agent.stop() == 0
        write_access_log(log, 100, 50)
        logrotate(tmp_path, log, "create")
        write_access_log(log, 150, 50)
        logrotate(tmp_path, log, "create")
        write_access_log(log, 200, 50)
        agent.start()
        assert_exactly_once(agent.wait_seqs(250), range(250))
    finally:
        agent.close()


@pytest.mark.timeout(60)
def test_rewrite_in_place_with_the_same_first_line_is_read_from_zero(tmp_path: Path) -> None:
    """S8: the app truncates its log and writes the same header again, past the old offset in
    one go (no shrink is ever seen): the rewrite is caught by the bytes before the read position,
    the new content is read from 0 and the old reader is retired; nothing twice."""
    log = tmp_path / "app.log"
    header = "#Software: demo app v1 (restarted)\n"
    log.write_text(header)
    write_access_log(log, 0, 300)
    agent = Agent(tmp_path, [str(log)]).start()
    try:
        agent.wait_seqs(300)
        body = "".join(access_line(s) for s in range(300, 800))
        with log.open("r+") as fh:
            fh.truncate(0)
            fh.write(header + body)
        assert_exactly_once(agent.wait_seqs(800), range(800))
        assert '"event":"file_rewritten"' in agent.stderr()
        write_access_log(log, 800, 10)
        assert_exactly_once(agent.wait_seqs(810), range(810))
        states = [r["state"] for r in file_rows(agent.state)]
        assert states == ["deleted", "live"]
    finally:
        agent.close()


@pytest.mark.timeout(60)
def test_truncation_while_stopped_to_a_larger_size_is_caught_by_the_marker(tmp_path: Path) -> None:
    """S9: truncated and rewritten while stopped with the same first 2 KiB (so the fingerprint
    still matches), the new size at least the old offset: the offset marker (hash of the bytes
    before it) no longer matches, so the file is read from 0."""
    log = tmp_path / "app.log"
    log.write_text(BANNER)
    write_access_log(log, 0, 300)
    agent = Agent(tmp_path, [str(log)]).start()
    try:
        agent.wait_seqs(300)
        assert agent.stop() == 0
        size = log.stat().st_size
        log.write_text(BANNER + "".join(access_line(s) for s in range(300, 700)))
        assert log.stat().st_size >= size
        agent.start()
        assert '"event":"file_rewritten"' in agent.stderr()
        assert_exactly_once(agent.wait_seqs(700), range(700))
    finally:
        agent.close()


@pytest.mark.timeout(60)
def test_inode_reuse_is_a_new_file(tmp_path: Path) -> None:
    """S10: a fully read file is deleted while stopped and a new one gets its inode: the new one
    is read from 0 (its fingerprint differs), not resumed at the old offset."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    write_access_log(log, 0, 300)
    inode = log.stat().st_ino
    agent = Agent(tmp_path, [str(logs / "*.log")]).start()
    try:
        agent.wait_seqs(300)
        assert agent.stop() == 0
        log.unlink()
        for attempt in range(200):
            write_access_log(log, 300, 100)
            if log.stat().st_ino == inode:
                break
            os.replace(log, logs / f"spare{attempt}")
        else:
            pytest.skip("this filesystem did not hand the inode out again")
        for spare in logs.glob("spare*"):
            spare.unlink()
        agent.start()
        assert_exactly_once(agent.wait_seqs(400), range(400))
    finally:
        agent.close()


@pytest.mark.timeout(60)
def test_files_with_identical_first_kilobytes_are_tracked_apart(tmp_path: Path) -> None:
    """S11: two files whose first 2 KiB are the same banner lines are two files (device and
    inode tell them apart), across a restart too."""
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    for path, first in ((a, 0), (b, 1000)):
        path.write_text(BANNER)
        write_access_log(path, first, 100)
    agent = Agent(tmp_path, [str(tmp_path / "*.log")]).start()
    try:
        agent.wait_seqs(200)
        assert agent.stop() == 0
        write_access_log(a, 100, 50)
        write_access_log(b, 1100, 50)
        agent.start()
        expected = {*range(150), *range(1000, 1150)}
        assert_exactly_once(agent.wait_seqs(300), expected)
    finally:
        agent.close()


@pytest.mark.timeout(60)
def test_low_volume_file_resumes_after_days(tmp_path: Path) -> None:
    """S17: a file that got three lines, then nothing for ten days (its row untouched that long,
    older than forget_files_after) resumes at its offset: it never left, so it is not forgotten."""
    log = tmp_path / "quiet.log"
    write_access_log(log, 0, 3)
    agent = Agent(tmp_path, [str(log)], {"state": {"forget_files_after": "1d"}}).start()
    try:
        agent.wait_seqs(3)
        assert agent.stop() == 0
        _age_rows(agent.state, "updated", 10 * 86400)
        agent.start()
        write_access_log(log, 3, 2)
        assert_exactly_once(agent.wait_seqs(5), range(5))
    finally:
        agent.close()


@pytest.mark.timeout(60)
def test_file_gone_and_back_resumes_and_long_gone_rows_are_forgotten(tmp_path: Path) -> None:
    """S18: a file moved out of the glob is marked gone, and when it comes back it resumes at
    its offset (never a full re-read); a row gone for longer than forget_files_after is deleted
    at the next start."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log, away = logs / "app.log", tmp_path / "app.log.away"
    write_access_log(log, 0, 200)
    agent = Agent(tmp_path, [str(logs / "*.log")], {"state": {"forget_files_after": "1d"}})
    agent.start()
    try:
        agent.wait_seqs(200)
        os.replace(log, away)
        wait_until(lambda: file_rows(agent.state)[0]["gone_since"] is not None, 10, "gone")
        os.replace(away, log)
        write_access_log(log, 200, 50)
        assert_exactly_once(agent.wait_seqs(250), range(250))
        os.replace(log, away)
        wait_until(lambda: file_rows(agent.state)[0]["gone_since"] is not None, 10, "gone again")
        assert agent.stop() == 0
        _age_rows(agent.state, "gone_since", 2 * 86400)
        agent.start()
        assert file_rows(agent.state) == []
        assert '"event":"file_positions_forgotten"' in agent.stderr()
    finally:
        agent.close()
