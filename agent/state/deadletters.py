"""Dead letters: messages an endpoint refused for good, kept with the reason until acted on.

`trackd deadletters list | retry | drop` read and change them (SPEC §6); a retried message goes
back to the outbox with its messageId and sink-assigned field unchanged.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

_IN_MAX = 500


class DeadLetter(NamedTuple):
    id: int
    failed_at: float
    sink: str
    reason: str
    detail: str
    message_id: str | None
    attempts: int
    body: bytes


def _where(ids: Sequence[int] | None) -> tuple[str, tuple[int, ...]]:
    if ids is None:
        return "", ()
    return f" WHERE id IN ({','.join('?' * len(ids))})", tuple(ids)


def listing(conn: sqlite3.Connection, limit: int | None = None) -> list[DeadLetter]:
    sql = (
        "SELECT id, failed_at, sink, reason, detail, message_id, attempts, body "
        "FROM deadletters ORDER BY id"
    )
    params: tuple[int, ...] = ()
    if limit is not None:
        sql += " LIMIT ?"
        params = (limit,)
    return [DeadLetter(*r) for r in conn.execute(sql, params)]


def by_reason(conn: sqlite3.Connection) -> Counter[str]:
    return Counter(
        dict(conn.execute("SELECT reason, COUNT(*) FROM deadletters GROUP BY reason").fetchall())
    )


def _parts(ids: Sequence[int] | None) -> list[Sequence[int] | None]:
    """`ids` in bounded IN lists; None (all) stays one part."""
    if ids is None:
        return [None]
    return [ids[i : i + _IN_MAX] for i in range(0, len(ids), _IN_MAX)]


def retry(conn: sqlite3.Connection, ids: Sequence[int] | None, now: float) -> tuple[int, int]:
    """Back into the outbox (attempts reset, so `retry.max_age` starts again); None: all.
    Returns (messages, bytes) moved."""
    moved = size = 0
    for part in _parts(ids):
        where, params = _where(part)
        size += int(
            conn.execute(
                f"SELECT COALESCE(SUM(LENGTH(body)), 0) FROM deadletters{where}",  # noqa: S608 (placeholders only)
                params,
            ).fetchone()[0]
        )
        moved += conn.execute(
            "INSERT INTO outbox (enqueued, body, message_id, stamp) "  # noqa: S608 (placeholders only)
            f"SELECT COALESCE(enqueued, ?), body, message_id, stamp FROM deadletters{where} "
            "ORDER BY id",
            (now, *params),
        ).rowcount
        conn.execute(f"DELETE FROM deadletters{where}", params)  # noqa: S608 (placeholders only)
    return moved, size


def drop(conn: sqlite3.Connection, ids: Sequence[int] | None) -> int:
    """Delete for good; None: all."""
    dropped = 0
    for part in _parts(ids):
        where, params = _where(part)
        dropped += conn.execute(f"DELETE FROM deadletters{where}", params).rowcount  # noqa: S608 (placeholders only)
    return dropped
