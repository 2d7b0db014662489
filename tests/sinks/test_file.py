"""The file sink: exactly-once into a file through its committed length (SPEC §4)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent.sinks.file import FileSink
from agent.sinks.sender import Sender
from agent.state import outbox
from agent.state.db import open_state


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    (tmp_path / "state").mkdir()
    return open_state(str(tmp_path / "state"))


def enqueue(conn: sqlite3.Connection, *bodies: bytes) -> None:
    conn.execute("BEGIN")
    outbox.enqueue(conn, list(bodies), 0.0)
    conn.execute("COMMIT")


def test_delivered_rows_leave_the_outbox(tmp_path: Path, conn: sqlite3.Connection) -> None:
    """A delivered batch is appended to the file and removed from the outbox."""
    enqueue(conn, b'{"n":1}', b'{"n":2}')
    sender = Sender(FileSink(str(tmp_path / "out.jsonl")), conn)
    sender.open()
    assert sender.step() == 2
    assert (tmp_path / "out.jsonl").read_bytes() == b'{"n":1}\n{"n":2}\n'
    assert sender.pending() == 0


def test_uncommitted_tail_is_cut_on_open(tmp_path: Path, conn: sqlite3.Connection) -> None:
    """Bytes written after the last committed length (a crash between write and commit) are
    truncated away on the next open, so the re-sent rows appear once."""
    out = tmp_path / "out.jsonl"
    enqueue(conn, b'{"n":1}')
    first = Sender(FileSink(str(out)), conn)
    first.open()
    first.step()
    first.close()
    enqueue(conn, b'{"n":2}')
    with out.open("ab") as fh:  # what a crash after write(), before COMMIT, leaves behind
        fh.write(b'{"n":2}\n')
    again = Sender(FileSink(str(out)), conn)
    again.open()
    assert out.read_bytes() == b'{"n":1}\n'
    again.step()
    assert out.read_bytes() == b'{"n":1}\n{"n":2}\n'


def test_replaced_file_is_left_alone(tmp_path: Path, conn: sqlite3.Connection) -> None:
    """A sink file replaced by another (rotated away) is not truncated: it is recorded afresh."""
    out = tmp_path / "out.jsonl"
    enqueue(conn, b'{"n":1}')
    sender = Sender(FileSink(str(out)), conn)
    sender.open()
    sender.step()
    sender.close()
    out.rename(tmp_path / "out.jsonl.1")
    out.write_bytes(b"someone else's data that is longer than ours\n")
    Sender(FileSink(str(out)), conn).open()
    assert out.read_bytes() == b"someone else's data that is longer than ours\n"
