"""The Kissmetrics `_t` assignments (SPEC §4): which seconds are taken for a (person, event).

One row per assigned second, written by the pipeline inside the chunk transaction that writes the
outbox rows carrying them, so a restart never hands out a second that was already sent. Rows are
kept for one hour of event time (`expire`). The functions that write run inside the caller's
transaction (`agent.state.db.transaction`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

#: One assignment: (`_p`, clean(`_n`) lower-cased or `/s`, the second assigned as `_t`).
Assignment = tuple[str, str, int]


def load(conn: sqlite3.Connection, since: int) -> list[Assignment]:
    """Every assignment of a second >= `since`."""
    rows = conn.execute(
        "SELECT person, name, second FROM km_seconds WHERE second >= ?", (since,)
    ).fetchall()
    return [(str(p), str(n), int(s)) for p, n, s in rows]


def newest(conn: sqlite3.Connection) -> int | None:
    """The highest second assigned, or None when there is none."""
    row = conn.execute("SELECT MAX(second) FROM km_seconds").fetchone()
    return None if row is None or row[0] is None else int(row[0])


def save(conn: sqlite3.Connection, rows: Iterable[Assignment]) -> None:
    """Record assignments; one already recorded is left as it is."""
    conn.executemany(
        "INSERT OR IGNORE INTO km_seconds (person, name, second) VALUES (?, ?, ?)", rows
    )


def expire(conn: sqlite3.Connection, before: int) -> int:
    """Forget assignments of seconds < `before`; returns how many were forgotten."""
    return conn.execute("DELETE FROM km_seconds WHERE second < ?", (before,)).rowcount
