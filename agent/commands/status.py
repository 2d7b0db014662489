"""`trackd status`: positions and lag, outbox, last delivery, dead letters, identities (SPEC §6).

Reads the state database read-only, so it works while `run` holds the lock.
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
from agent.identity.sqlite_store import SqliteIdentityStore
from agent.state import deadletters, meta, outbox, sinkfile
from agent.state.db import StateLock, StatePaths
from agent.state.files import load_files


def collect(config: Config) -> dict[str, Any]:
    paths = StatePaths(config.state_dir)
    if not os.path.exists(paths.db):
        raise StartupError(
            f"no state database at {paths.db} yet: trackd has not run with this state_dir"
        )
    conn = open_readonly(paths.db)
    try:
        return _collect(conn, paths, config)
    except sqlite3.DatabaseError as exc:
        raise StartupError(f"cannot read state database {paths.db}: {exc}") from None
    finally:
        conn.close()


def _collect(conn: sqlite3.Connection, paths: StatePaths, config: Config) -> dict[str, Any]:
    now = time.time()
    files = []
    rows = sorted(load_files(conn), key=lambda r: (r.source, r.path))
    for row in rows:
        size = None
        if row.cur_path:
            try:
                size = os.stat(row.cur_path).st_size
            except OSError:
                size = None
        files.append(
            {
                "source": row.source,
                "path": row.cur_path or row.path,
                "first_path": row.path,
                "offset": row.offset,
                "size": size,
                "lag_bytes": max(0, size - row.offset) if size is not None else None,
                "state": row.state,
                "updated_ago_s": round(now - row.updated, 1),
            }
        )
    depth = outbox.depth(conn)
    delivery_raw = meta.get(conn, meta.DELIVERY)
    delivery = orjson.loads(delivery_raw) if delivery_raw else None
    dead = deadletters.by_reason(conn)
    counts = SqliteIdentityStore(conn).counts()
    return {
        "state_dir": config.state_dir,
        "running": StateLock(paths).held_by_other(),
        "files": files,
        "outbox": {
            "messages": depth.messages,
            "bytes": depth.bytes,
            "oldest_age_s": round(now - depth.oldest, 1) if depth.oldest is not None else None,
        },
        "delivery": _delivery(delivery, now),
        "dead_letters": sum(dead.values()),
        "dead_letters_by_reason": dict(sorted(dead.items())),
        "identities": {k: counts[k] for k in ("device", "named", "aliases")},
        "sink": config.sink.type,
        "sink_files": [
            {"path": r.path, "committed_bytes": r.length} for r in sinkfile.load_all(conn)
        ],
    }


def _delivery(raw: dict[str, Any] | None, now: float) -> dict[str, Any] | None:
    """The sender's last report (written with each acknowledgement)."""
    if raw is None:
        return None
    last = raw.get("last_delivery")
    return {
        "sink": raw.get("sink"),
        "sent_since_start": raw.get("sent", 0),
        "last_delivery_ago_s": round(now - last, 1) if last else None,
        "held_because": raw.get("held"),
        "failing_for_s": round(raw["failing_for_s"], 1) if raw.get("failing_for_s") else None,
        "failures_since_start": raw.get("failures", {}),
        "reported_ago_s": round(now - raw.get("written", now), 1),
    }


def render_text(data: dict[str, Any]) -> str:
    out = [
        f"trackd status: {data['state_dir']} "
        f"({'a trackd is running' if data['running'] else 'no trackd running'})"
    ]
    out.append(f"  files ({len(data['files'])}):")
    for f in data["files"]:
        size = "gone" if f["size"] is None else f"{f['size']:,}"
        lag = "" if f["lag_bytes"] is None else f", lag {f['lag_bytes']:,} bytes"
        out.append(
            f"    [{f['source']}] {f['path']}: offset {f['offset']:,} of {size}{lag} ({f['state']})"
        )
    ob = data["outbox"]
    age = "" if ob["oldest_age_s"] is None else f", oldest {ob['oldest_age_s']}s old"
    out.append(f"  outbox: {ob['messages']:,} messages, {ob['bytes']:,} bytes{age}")
    d = data["delivery"]
    if d is not None:
        last = "never" if d["last_delivery_ago_s"] is None else f"{d['last_delivery_ago_s']}s ago"
        line = f"  delivery ({d['sink']}): last delivery {last}"
        if d["held_because"]:
            line += f"; held: {d['held_because']}"
        if d["failing_for_s"]:
            line += f"; failing for {d['failing_for_s']}s"
        fails = ", ".join(f"{n:,} {r}" for r, n in sorted(d["failures_since_start"].items()) if n)
        if fails:
            line += f"; failed attempts since start: {fails}"
        out.append(line + f" (reported {d['reported_ago_s']}s ago)")
    reasons = ", ".join(f"{n:,} {r}" for r, n in data["dead_letters_by_reason"].items())
    out.append(f"  dead letters: {data['dead_letters']:,}" + (f" ({reasons})" if reasons else ""))
    ids = data["identities"]
    out.append(
        f"  identities: {ids['device']:,} devices, {ids['named']:,} named, "
        f"{ids['aliases']:,} aliases sent"
    )
    out.extend(
        f"  sink file {sf['path']}: {sf['committed_bytes']:,} bytes committed"
        for sf in data["sink_files"]
    )
    return "\n".join(out)
