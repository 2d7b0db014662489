"""R6's per-source watermarks: the newest event time read from each source (SPEC §1.2), kept
across restarts so a garbage timestamp after a restart is still recognised as "future"."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping


def load(conn: sqlite3.Connection) -> dict[str, float]:
    return {str(s): float(t) for s, t in conn.execute("SELECT source, newest FROM watermarks")}


def save(conn: sqlite3.Connection, newest: Mapping[str, float]) -> None:
    """Inside the chunk's transaction."""
    conn.executemany(
        "INSERT INTO watermarks (source, newest) VALUES (?, ?) "
        "ON CONFLICT (source) DO UPDATE SET newest = excluded.newest",
        list(newest.items()),
    )
