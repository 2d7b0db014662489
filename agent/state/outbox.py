"""The outbox: messages committed with their positions, deleted once the sink acknowledged them."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence


def enqueue(conn: sqlite3.Connection, bodies: Sequence[bytes], now: float) -> None:
    """Append messages (inside the caller's transaction)."""
    conn.executemany(
        "INSERT INTO outbox (enqueued, body) VALUES (?, ?)", [(now, b) for b in bodies]
    )


def fetch(conn: sqlite3.Connection, after_id: int, limit: int) -> list[tuple[int, bytes]]:
    """The next messages in delivery order."""
    return conn.execute(
        "SELECT id, body FROM outbox WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
    ).fetchall()


def delete_through(conn: sqlite3.Connection, last_id: int) -> None:
    """Remove every message up to and including `last_id` (inside the caller's transaction)."""
    conn.execute("DELETE FROM outbox WHERE id <= ?", (last_id,))


def depth(conn: sqlite3.Connection) -> tuple[int, int, float | None]:
    """(messages, bytes, oldest enqueue time) — for status, metrics and backpressure."""
    count, size, oldest = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0), MIN(enqueued) FROM outbox"
    ).fetchone()
    return int(count), int(size), oldest
