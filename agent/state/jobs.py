"""Backfill jobs handed to the running daemon (SPEC §5.1, §6): `trackd backfill` writes a row in
a short transaction while `run` holds the lock; the daemon reads the job between its live chunks,
writes its progress back about once a second, and its result when done. The requester follows
the row; Ctrl-C only stops following.

A job in state `running` when the daemon stopped is taken up again at its next start: its files
resume at their committed positions, so nothing is read twice.
"""

from __future__ import annotations

import sqlite3
from typing import Any, NamedTuple

import orjson

BACKFILL = "backfill"
QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
#: States a job is still to be (or being) carried out in.
ACTIVE = (QUEUED, RUNNING)


class Job(NamedTuple):
    id: int
    created: float
    kind: str
    args: dict[str, Any]
    state: str
    started: float | None
    updated: float | None
    finished: float | None
    progress: dict[str, Any] | None
    result: dict[str, Any] | None


_SELECT = (
    "SELECT id, created, kind, args, state, started, updated, finished, progress, result FROM jobs"
)


def _job(r: tuple[Any, ...]) -> Job:
    return Job(
        int(r[0]),
        float(r[1]),
        str(r[2]),
        orjson.loads(r[3]),
        str(r[4]),
        r[5],
        r[6],
        r[7],
        orjson.loads(r[8]) if r[8] else None,
        orjson.loads(r[9]) if r[9] else None,
    )


def submit(conn: sqlite3.Connection, args: dict[str, Any], now: float) -> int:
    cur = conn.execute(
        "INSERT INTO jobs (created, kind, args, state) VALUES (?, ?, ?, ?)",
        (now, BACKFILL, orjson.dumps(args).decode(), QUEUED),
    )
    return int(cur.lastrowid or 0)


def get(conn: sqlite3.Connection, job_id: int) -> Job | None:
    row = conn.execute(_SELECT + " WHERE id = ?", (job_id,)).fetchone()
    return None if row is None else _job(row)


def active(conn: sqlite3.Connection) -> list[Job]:
    """Jobs queued or running, oldest first (the daemon carries them out in that order)."""
    rows = conn.execute(_SELECT + " WHERE state IN (?, ?) ORDER BY id", ACTIVE).fetchall()
    return [_job(r) for r in rows]


def same_active(conn: sqlite3.Connection, args: dict[str, Any]) -> Job | None:
    """A queued or running job with exactly these arguments (a second `backfill` of the same
    files follows it instead of queueing another)."""
    for job in active(conn):
        if job.args == args:
            return job
    return None


def recent(conn: sqlite3.Connection, limit: int = 5) -> list[Job]:
    """The newest jobs, newest first (for `trackd status`)."""
    rows = conn.execute(_SELECT + " ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
    return [_job(r) for r in rows]


def start(conn: sqlite3.Connection, job_id: int, now: float) -> None:
    conn.execute(
        "UPDATE jobs SET state = ?, started = COALESCE(started, ?), updated = ? WHERE id = ?",
        (RUNNING, now, now, job_id),
    )


def note_progress(
    conn: sqlite3.Connection, job_id: int, progress: dict[str, Any], now: float
) -> None:
    conn.execute(
        "UPDATE jobs SET progress = ?, updated = ? WHERE id = ?",
        (orjson.dumps(progress).decode(), now, job_id),
    )


def finish(
    conn: sqlite3.Connection, job_id: int, state: str, result: dict[str, Any], now: float
) -> None:
    conn.execute(
        "UPDATE jobs SET state = ?, result = ?, finished = ?, updated = ? WHERE id = ?",
        (state, orjson.dumps(result).decode(), now, now, job_id),
    )
