"""`trackd deadletters list | retry [ID…] | drop [ID…]` (SPEC §6).

`list` reads the state read-only. `retry` and `drop` change it: with no trackd running they take
the lock on state_dir and apply the change themselves; while `run` runs they leave a request row
that the daemon applies within a second or two (SPEC §5.1) and wait for its result.
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any

import orjson

from agent.commands.readstate import open_readonly
from agent.config import Config
from agent.errors import StartupError
from agent.state import deadletters, requests
from agent.state.db import StateLock, StatePaths, connect, open_state, transaction

#: How long `retry`/`drop` wait for a running daemon to apply their request.
WAIT = 15.0
_PREVIEW = 160


def _paths(config: Config) -> StatePaths:
    paths = StatePaths(config.state_dir)
    if not os.path.exists(paths.db):
        raise StartupError(
            f"no state database at {paths.db} yet: trackd has not run with this state_dir"
        )
    return paths


def listing(config: Config, limit: int | None = None) -> dict[str, Any]:
    paths = _paths(config)
    conn = open_readonly(paths.db)
    try:
        rows = deadletters.listing(conn, limit)
        reasons = deadletters.by_reason(conn)
    except sqlite3.DatabaseError as exc:
        raise StartupError(f"cannot read state database {paths.db}: {exc}") from None
    finally:
        conn.close()
    return {
        "total": sum(reasons.values()),
        "by_reason": dict(sorted(reasons.items())),
        "dead_letters": [_entry(d) for d in rows],
    }


def _entry(d: deadletters.DeadLetter) -> dict[str, Any]:
    try:
        message = orjson.loads(d.body)
        kind, event = message.get("type"), message.get("event") or message.get("name")
        when = message.get("timestamp")
    except orjson.JSONDecodeError:
        kind = event = when = None
    return {
        "id": d.id,
        "failed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(d.failed_at)),
        "sink": d.sink,
        "reason": d.reason,
        "detail": d.detail[:_PREVIEW],
        "messageId": d.message_id,
        "type": kind,
        "event": event,
        "timestamp": when,
        "attempts": d.attempts,
        "bytes": len(d.body),
    }


def act(config: Config, action: str, ids: list[int] | None) -> dict[str, Any]:
    """`retry` or `drop` the dead letters `ids` (None: all)."""
    paths = _paths(config)
    kind = requests.DEADLETTERS_RETRY if action == "retry" else requests.DEADLETTERS_DROP
    lock = StateLock(paths)
    if lock.try_acquire():
        try:
            conn = open_state(config.state_dir, on_corrupt=config.state.on_corrupt)
            try:
                with transaction(conn):
                    now = time.time()
                    req_id = requests.submit(conn, kind, {"ids": ids}, now)
                    req = requests.get(conn, req_id)
                    assert req is not None
                    result = requests.apply(conn, req, now)
            finally:
                conn.close()
        finally:
            lock.release()
        return {"applied": True, "by": "this command", **result}
    conn = connect(paths.db)
    try:
        with transaction(conn):
            req_id = requests.submit(conn, kind, {"ids": ids}, time.time())
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            req = requests.get(conn, req_id)
            if req is not None and req.done is not None:
                return {"applied": True, "by": "the running trackd", **(req.result or {})}
            time.sleep(0.1)  # another process: no event to wait on
    finally:
        conn.close()
    return {"applied": False, "request": req_id}


def render_list(data: dict[str, Any]) -> str:
    if not data["total"]:
        return "no dead letters"
    reasons = ", ".join(f"{n:,} {r}" for r, n in data["by_reason"].items())
    out = [f"{data['total']:,} dead letter(s): {reasons}"]
    for d in data["dead_letters"]:
        what = d["type"] + (f" {d['event']!r}" if d["event"] else "") if d["type"] else "?"
        detail = f": {d['detail']}" if d["detail"] else ""
        out.append(
            f"  #{d['id']} {d['failed_at']} {d['sink']} {d['reason']}{detail} — {what} "
            f"at {d['timestamp']} (messageId {d['messageId']}, {d['attempts']} attempt(s))"
        )
    out.append("retry with `trackd deadletters retry [ID…]`, drop with `trackd deadletters drop`")
    return "\n".join(out)


def render_act(action: str, data: dict[str, Any]) -> str:
    if not data["applied"]:
        return (
            f"request {data['request']} queued: the running trackd did not apply it within "
            f"{WAIT:.0f}s (is it stuck? see `trackd status`); it applies it when it can"
        )
    if "error" in data:
        return f"trackd deadletters {action}: {data['error']}"
    if action == "retry":
        return f"{data['retried']:,} message(s) back in the outbox (applied by {data['by']})"
    return f"{data['dropped']:,} dead letter(s) dropped (applied by {data['by']})"
