"""Requests other processes leave for the lock holder (SPEC §5.1): `deadletters retry|drop`,
`forget` (and later backfill hand-offs) write a row in a short transaction; the running trackd
applies it between two chunks and writes the result back; the requester waits for that."""

from __future__ import annotations

import sqlite3
import time
from typing import Any, NamedTuple

import orjson


class Request(NamedTuple):
    id: int
    kind: str
    args: dict[str, Any]
    done: float | None
    result: dict[str, Any] | None


def submit(conn: sqlite3.Connection, kind: str, args: dict[str, Any], now: float) -> int:
    cur = conn.execute(
        "INSERT INTO requests (created, kind, args) VALUES (?, ?, ?)",
        (now, kind, orjson.dumps(args).decode()),
    )
    return int(cur.lastrowid or 0)


def _row(r: tuple[Any, ...]) -> Request:
    return Request(
        int(r[0]), str(r[1]), orjson.loads(r[2]), r[3], orjson.loads(r[4]) if r[4] else None
    )


def pending(conn: sqlite3.Connection, limit: int = 20) -> list[Request]:
    rows = conn.execute(
        "SELECT id, kind, args, done, result FROM requests WHERE done IS NULL ORDER BY id LIMIT ?",
        (limit,),
    ).fetchall()
    return [_row(r) for r in rows]


def get(conn: sqlite3.Connection, request_id: int) -> Request | None:
    row = conn.execute(
        "SELECT id, kind, args, done, result FROM requests WHERE id = ?", (request_id,)
    ).fetchone()
    return None if row is None else _row(row)


def finish(conn: sqlite3.Connection, request_id: int, result: dict[str, Any], now: float) -> None:
    conn.execute(
        "UPDATE requests SET done = ?, result = ? WHERE id = ?",
        (now, orjson.dumps(result).decode(), request_id),
    )


#: Kinds of request the lock holder knows how to apply.
DEADLETTERS_RETRY = "deadletters_retry"
DEADLETTERS_DROP = "deadletters_drop"
#: `trackd forget ID` (args: {"id": ID}): needs the identity store and the resolver, so the
#: runtime applies it (`Runtime.apply_requests`), not `apply`.
FORGET = "forget"


def ask(db: str, kind: str, args: dict[str, Any], timeout: float) -> tuple[int, Request | None]:
    """Leave a request for the running lock holder (on a connection of our own) and wait up to
    `timeout` seconds for it to be applied: (its id, the applied request or None)."""
    from agent.state.db import connect, transaction

    conn = connect(db)
    try:
        with transaction(conn):
            req_id = submit(conn, kind, args, time.time())
        return req_id, wait(conn, req_id, timeout)
    finally:
        conn.close()


def wait(conn: sqlite3.Connection, request_id: int, timeout: float) -> Request | None:
    """The request once the lock holder applied it, or None after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        req = get(conn, request_id)
        if req is not None and req.done is not None:
            return req
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)  # another process applies it: no event to wait on


def apply(conn: sqlite3.Connection, req: Request, now: float) -> dict[str, Any]:
    """Carry out one request (inside the caller's transaction) and record its result."""
    from agent.state import deadletters

    ids = req.args.get("ids")
    if req.kind == DEADLETTERS_RETRY:
        moved, size = deadletters.retry(conn, ids, now)
        result: dict[str, Any] = {"retried": moved, "bytes": size}
    elif req.kind == DEADLETTERS_DROP:
        result = {"dropped": deadletters.drop(conn, ids)}
    else:
        result = {"error": f"unknown request kind {req.kind!r} (written by a newer trackd?)"}
    finish(conn, req.id, result, now)
    return result
