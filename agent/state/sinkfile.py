"""The file sink's committed length (SPEC §4): which file (device, inode) and how many of its
bytes are known delivered. Written in the chunk's transaction, so the file and the positions that
produced its lines never disagree."""

from __future__ import annotations

import sqlite3
from typing import NamedTuple


class SinkFileRecord(NamedTuple):
    path: str
    dev: int
    ino: int
    length: int


def load(conn: sqlite3.Connection, path: str) -> SinkFileRecord | None:
    row = conn.execute(
        "SELECT path, dev, ino, length FROM sink_file WHERE path = ?", (path,)
    ).fetchone()
    return None if row is None else SinkFileRecord(*row)


def load_all(conn: sqlite3.Connection) -> list[SinkFileRecord]:
    return [
        SinkFileRecord(*r) for r in conn.execute("SELECT path, dev, ino, length FROM sink_file")
    ]


def save(conn: sqlite3.Connection, rec: SinkFileRecord) -> None:
    conn.execute(
        "INSERT INTO sink_file (path, dev, ino, length) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (path) DO UPDATE SET dev = excluded.dev, ino = excluded.ino, "
        "length = excluded.length",
        tuple(rec),
    )
