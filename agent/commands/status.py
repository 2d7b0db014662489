"""`trackd status`: positions and lag, outbox, last delivery, dead letters, identities (SPEC §6).

Reads the state database read-only, so it works while `run` holds the lock.
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any

from agent.config import Config
from agent.errors import StartupError
from agent.state.db import StateLock, StatePaths, connect


def collect(config: Config) -> dict[str, Any]:
    paths = StatePaths(config.state_dir)
    if not os.path.exists(paths.db):
        raise StartupError(
            f"no state database at {paths.db} yet: trackd has not run with this state_dir"
        )
    conn = connect(paths.db, readonly=True)
    try:
        return _collect(conn, paths, config)
    except sqlite3.DatabaseError as exc:
        raise StartupError(f"cannot read state database {paths.db}: {exc}") from None
    finally:
        conn.close()


def _collect(conn: sqlite3.Connection, paths: StatePaths, config: Config) -> dict[str, Any]:
    now = time.time()
    files = []
    for source, path, cur_path, offset, state, updated in conn.execute(
        "SELECT source, path, cur_path, offset, state, updated FROM files ORDER BY source, path"
    ):
        size = None
        if cur_path:
            try:
                size = os.stat(cur_path).st_size
            except OSError:
                size = None
        files.append(
            {
                "source": source,
                "path": cur_path or path,
                "first_path": path,
                "offset": offset,
                "size": size,
                "lag_bytes": max(0, size - offset) if size is not None else None,
                "state": state,
                "updated_ago_s": round(now - updated, 1),
            }
        )
    count, size, oldest = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0), MIN(enqueued) FROM outbox"
    ).fetchone()
    dead = conn.execute("SELECT COUNT(*) FROM deadletters").fetchone()[0]
    identities = {
        "device": conn.execute("SELECT COUNT(*) FROM id_devices").fetchone()[0],
        "named": conn.execute("SELECT COUNT(*) FROM id_named").fetchone()[0],
        "aliases": conn.execute("SELECT COUNT(*) FROM id_aliases").fetchone()[0],
    }
    sink_row = conn.execute("SELECT path, length FROM sink_file").fetchall()
    return {
        "state_dir": config.state_dir,
        "running": StateLock(paths).held_by_other(),
        "files": files,
        "outbox": {
            "messages": count,
            "bytes": size,
            "oldest_age_s": round(now - oldest, 1) if oldest is not None else None,
        },
        "dead_letters": dead,
        "identities": identities,
        "sink": config.sink.type,
        "sink_files": [{"path": p, "committed_bytes": n} for p, n in sink_row],
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
    out.append(f"  dead letters: {data['dead_letters']:,}")
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
