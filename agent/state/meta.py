"""Small facts about the state itself (the `meta` table)."""

from __future__ import annotations

import sqlite3

FIRST_START_DONE = "first_start_done"
#: The sender's last word on delivery (JSON), for `trackd status` in another process.
DELIVERY = "delivery"


def get(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def put(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )
