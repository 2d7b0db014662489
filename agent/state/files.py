"""Saved file positions (the `files` table): identity, committed offset, offset marker.

A row's `state`: `live` (at a path its source's globs match), `rotated` (moved away from that
path, still read while it grows), `done` (read to its end and closed), `deleted` (its bytes are
gone from its inode: unlinked, or truncated; never matched by inode again, only by content for a
compressed copy), `skipped` (a compressed file present at the very first start with
`start_at: end`: never read).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass


@dataclass(slots=True)
class FileRow:
    id: int
    source: str
    path: str
    cur_path: str | None
    dev: int
    ino: int
    fp_len: int
    fp_hash: bytes
    line_fp: str | None
    offset: int
    marker_len: int
    marker: bytes | None
    size: int
    first_seen: float
    updated: float
    gone_since: float | None
    state: str


_COLUMNS = (
    "id, source, path, cur_path, dev, ino, fp_len, fp_hash, line_fp, offset, marker_len, marker, "
    "size, first_seen, updated, gone_since, state"
)


def load_files(conn: sqlite3.Connection) -> list[FileRow]:
    query = f"SELECT {_COLUMNS} FROM files ORDER BY id"  # noqa: S608 - a constant column list
    return [FileRow(*row) for row in conn.execute(query)]


def insert_file(conn: sqlite3.Connection, row: FileRow) -> int:
    """Insert a newly seen file (inside the caller's transaction); returns its id."""
    cur = conn.execute(
        "INSERT INTO files (source, path, cur_path, dev, ino, fp_len, fp_hash, line_fp, offset, "
        "marker_len, marker, size, first_seen, updated, gone_since, state) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            row.source,
            row.path,
            row.cur_path,
            row.dev,
            row.ino,
            row.fp_len,
            row.fp_hash,
            row.line_fp,
            row.offset,
            row.marker_len,
            row.marker,
            row.size,
            row.first_seen,
            row.updated,
            row.gone_since,
            row.state,
        ),
    )
    assert cur.lastrowid is not None
    return cur.lastrowid


def update_file(conn: sqlite3.Connection, row: FileRow) -> None:
    """Write every mutable column of a file row (inside the caller's transaction)."""
    conn.execute(
        "UPDATE files SET cur_path = ?, dev = ?, ino = ?, fp_len = ?, fp_hash = ?, line_fp = ?, "
        "offset = ?, marker_len = ?, marker = ?, size = ?, updated = ?, gone_since = ?, state = ? "
        "WHERE id = ?",
        (
            row.cur_path,
            row.dev,
            row.ino,
            row.fp_len,
            row.fp_hash,
            row.line_fp,
            row.offset,
            row.marker_len,
            row.marker,
            row.size,
            row.updated,
            row.gone_since,
            row.state,
            row.id,
        ),
    )


def delete_files(conn: sqlite3.Connection, ids: list[int]) -> None:
    """Forget rows (files gone for `state.forget_files_after`)."""
    conn.executemany("DELETE FROM files WHERE id = ?", [(i,) for i in ids])


def update_positions(
    conn: sqlite3.Connection, positions: list[tuple[int, int, bytes | None, int, float, int]]
) -> None:
    """`(offset, marker_len, marker, size, updated, file_id)` for each file a chunk advanced."""
    conn.executemany(
        "UPDATE files SET offset = ?, marker_len = ?, marker = ?, size = MAX(size, ?), updated = ? "
        "WHERE id = ?",
        positions,
    )


class SqlitePositions:
    """The PositionStore of `sources/`: file rows in the state database (autocommit writes).

    Inserting a row for a new file, or rewriting one after a rename, never needs to be atomic with
    messages: such a row only says where reading starts; positions that produced messages are
    written by the pipeline's chunk transaction.
    """

    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def insert(self, row: FileRow) -> int:
        return insert_file(self._conn, row)

    def update(self, row: FileRow) -> None:
        update_file(self._conn, row)

    def delete(self, ids: list[int]) -> None:
        delete_files(self._conn, ids)
