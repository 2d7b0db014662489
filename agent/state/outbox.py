"""The outbox: messages committed with their positions, deleted once the sink acknowledged them.

Rows are written by the pipeline inside a chunk's transaction (`enqueue`) and read, acknowledged,
retried and dead-lettered by the sender on its own connection. Every function here runs inside
the caller's transaction (`agent.state.db.transaction`) except the read-only ones.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from agent.records import OutboxRow

_IN_MAX = 500
_ID_KEY = b'"messageId":"'


#: An outbox row as the sender reads it.
Row = OutboxRow


class Depth(NamedTuple):
    messages: int
    bytes: int
    #: Wall-clock enqueue time of the oldest row, or None when empty.
    oldest: float | None


def message_id(body: bytes) -> str | None:
    """The messageId of an encoded message (SPEC §3.1 puts it second, so this is a short scan)."""
    at = body.find(_ID_KEY, 0, 64)
    if at < 0:
        return None
    start = at + len(_ID_KEY)
    end = body.find(b'"', start, start + 64)
    return body[start:end].decode() if end > 0 else None


def enqueue(
    conn: sqlite3.Connection,
    bodies: Sequence[bytes],
    stamps: Sequence[int | None] | None,
    now: float,
) -> None:
    """Append messages, with the sink-assigned field of each when the sink stamps them."""
    if stamps is None:
        conn.executemany(
            "INSERT INTO outbox (enqueued, body, message_id) VALUES (?, ?, ?)",
            [(now, b, message_id(b)) for b in bodies],
        )
    else:
        conn.executemany(
            "INSERT INTO outbox (enqueued, body, message_id, stamp) VALUES (?, ?, ?, ?)",
            [(now, b, message_id(b), s) for b, s in zip(bodies, stamps, strict=True)],
        )


def fetch(conn: sqlite3.Connection, after_id: int, limit: int) -> list[Row]:
    """The next rows after `after_id`, in delivery (commit) order."""
    return list(
        map(
            OutboxRow._make,
            conn.execute(
                "SELECT id, body, stamp, attempts, first_attempt, enqueued FROM outbox "
                "WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ),
        )
    )


def _chunks(ids: Sequence[int]) -> Iterable[Sequence[int]]:
    for i in range(0, len(ids), _IN_MAX):
        yield ids[i : i + _IN_MAX]


def delete(conn: sqlite3.Connection, ids: Sequence[int]) -> None:
    """Acknowledged: remove these rows."""
    for part in _chunks(ids):
        conn.execute(f"DELETE FROM outbox WHERE id IN ({','.join('?' * len(part))})", part)  # noqa: S608 (placeholders only)


def note_attempts(conn: sqlite3.Connection, ids: Sequence[int], now: float) -> None:
    """A failed attempt for each of these rows: count it; the first one starts `retry.max_age`."""
    for part in _chunks(ids):
        conn.execute(
            "UPDATE outbox SET attempts = attempts + 1, first_attempt = COALESCE(first_attempt, ?) "  # noqa: S608 (placeholders only)
            f"WHERE id IN ({','.join('?' * len(part))})",
            (now, *part),
        )


def dead_letter(
    conn: sqlite3.Connection, sink: str, items: Sequence[tuple[int, str, str]], now: float
) -> int:
    """Move rows to the dead letters: (row id, reason, detail) each. Returns rows moved."""
    moved = 0
    for row_id, reason, detail in items:
        cur = conn.execute(
            "INSERT INTO deadletters (failed_at, sink, reason, detail, body, message_id, stamp, "
            "attempts, enqueued) SELECT ?, ?, ?, ?, body, message_id, stamp, attempts, enqueued "
            "FROM outbox WHERE id = ?",
            (now, sink, reason, detail, row_id),
        )
        moved += cur.rowcount
    delete(conn, [row_id for row_id, _, _ in items])
    return moved


def depth(conn: sqlite3.Connection) -> Depth:
    """Messages, bytes and the oldest enqueue time — for status, metrics and backpressure."""
    count, size, oldest = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0), MIN(enqueued) FROM outbox"
    ).fetchone()
    return Depth(int(count), int(size), oldest)


def oldest(conn: sqlite3.Connection) -> float | None:
    """Enqueue time of the oldest row (ids grow with time: one index step, not a scan)."""
    row = conn.execute("SELECT enqueued FROM outbox ORDER BY id LIMIT 1").fetchone()
    return None if row is None else float(row[0])


class Level:
    """How full the outbox is, kept in memory: the pipeline adds what each chunk committed, the
    sender takes away what it acknowledged or dead-lettered. Read by backpressure (SPEC §5.4),
    the gauges and `/healthz` without a COUNT over millions of rows. Thread-safe."""

    __slots__ = ("_room", "bytes", "max_bytes", "max_messages", "messages")

    def __init__(self, start: Depth, max_messages: int, max_bytes: int) -> None:
        self._room = threading.Condition()
        self.messages = start.messages
        self.bytes = start.bytes
        self.max_messages = max_messages
        self.max_bytes = max_bytes

    @property
    def full(self) -> bool:
        """At `sink.outbox.max_events` or `max_bytes`: reading pauses (SPEC §5.4)."""
        return self.messages >= self.max_messages or self.bytes >= self.max_bytes

    def add(self, messages: int, size: int) -> None:
        with self._room:
            self.messages += messages
            self.bytes += size

    def remove(self, messages: int, size: int) -> None:
        with self._room:
            self.messages = max(0, self.messages - messages)
            self.bytes = max(0, self.bytes - size)
            if not self.full:
                self._room.notify_all()

    def wait_room(self, timeout: float) -> bool:
        """Block until the outbox is below its limits (True) or `timeout` passed (False)."""
        with self._room:
            return self._room.wait_for(lambda: not self.full, timeout)

    def __repr__(self) -> str:
        return f"Level(messages={self.messages}, bytes={self.bytes}, full={self.full})"
