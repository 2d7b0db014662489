"""The file sink: exactly-once into a file through its committed length (SPEC §4)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from agent.sinks.file import FileSink
from agent.state import sinkfile
from tests.sinks.support import deliver, opened


def first_chunk(conn: sqlite3.Connection, tmp_path: Path) -> tuple[Path, FileSink]:
    """A sink opened on `out.jsonl` in `tmp_path` that delivered one chunk, `{"n":1}`."""
    out = tmp_path / "out.jsonl"
    sink = opened(conn, out)
    deliver(conn, sink, b'{"n":1}')
    return out, sink


def test_a_chunk_is_appended_and_its_length_committed(
    tmp_path: Path, conn: sqlite3.Connection
) -> None:
    """A delivered chunk is appended as JSON lines and its new length is what the state holds."""
    out = tmp_path / "out.jsonl"
    sink = opened(conn, out)
    deliver(conn, sink, b'{"n":1}', b'{"n":2}')
    assert out.read_bytes() == b'{"n":1}\n{"n":2}\n'
    record = sinkfile.load(conn, str(out))
    assert record is not None and record.length == len(b'{"n":1}\n{"n":2}\n')


def test_uncommitted_tail_is_cut_on_open(tmp_path: Path, conn: sqlite3.Connection) -> None:
    """Bytes written after the last committed length (a crash between write and commit) are
    truncated away on the next open, so the re-sent messages appear once."""
    out, first = first_chunk(conn, tmp_path)
    first.write([b'{"n":2}'])  # written, then a crash before the transaction
    first.close()
    again = opened(conn, out)
    assert out.read_bytes() == b'{"n":1}\n'
    deliver(conn, again, b'{"n":2}')
    assert out.read_bytes() == b'{"n":1}\n{"n":2}\n'


def test_abort_takes_the_chunk_back(tmp_path: Path, conn: sqlite3.Connection) -> None:
    """A chunk whose transaction failed is cut off the file, so its retry appends it once."""
    out, sink = first_chunk(conn, tmp_path)
    sink.write([b'{"n":2}'])
    sink.abort()
    deliver(conn, sink, b'{"n":2}')
    assert out.read_bytes() == b'{"n":1}\n{"n":2}\n'


def test_replaced_file_is_left_alone(tmp_path: Path, conn: sqlite3.Connection) -> None:
    """A sink file replaced by another (rotated away) is not truncated: it is recorded afresh."""
    out, sink = first_chunk(conn, tmp_path)
    sink.close()
    out.rename(tmp_path / "out.jsonl.1")
    out.write_bytes(b"someone else's data that is longer than ours\n")
    opened(conn, out).close()
    assert out.read_bytes() == b"someone else's data that is longer than ours\n"
    record = sinkfile.load(conn, str(out))
    assert record is not None and record.length == out.stat().st_size
