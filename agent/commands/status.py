"""`trackd status`: positions and lag, outbox, last delivery, dead letters, identities (SPEC §6).

Reads the state database read-only, so it works while `run` holds the lock.

Each saved file is shown as the generation it is — live, rotated (found by its inode under its
new name next to the path it was read at), or compressed — and its offset is compared with the
size of that same file only: a compressed generation's offset counts decompressed bytes, so it
shows its size on disk beside it, never an "offset of size" that mixes the two.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from typing import Any

import orjson

from agent.commands.readstate import close_store, identity_store, open_readonly
from agent.config import Config
from agent.errors import StartupError
from agent.sources.compressed import compression_of
from agent.sources.siblings import siblings_of
from agent.state import deadletters, jobs, meta, outbox, sinkfile
from agent.state.db import StateLock, StatePaths
from agent.state.files import FileRow, load_files


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


def _identity_counts(config: Config, conn: sqlite3.Connection) -> dict[str, int]:
    """Entries of the identity graph: the state database's, or the shared Redis one's."""
    store = identity_store(config, conn)
    try:
        return store.counts()
    finally:
        close_store(store)


def _collect(conn: sqlite3.Connection, paths: StatePaths, config: Config) -> dict[str, Any]:
    now = time.time()
    rows = sorted(load_files(conn), key=lambda r: (r.source, r.path, r.first_seen))
    files = [_file_entry(row, now) for row in rows]
    depth = outbox.depth(conn)
    delivery_raw = meta.get(conn, meta.DELIVERY)
    delivery = orjson.loads(delivery_raw) if delivery_raw else None
    dead = deadletters.by_reason(conn)
    counts = _identity_counts(config, conn)
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
        "backfill_jobs": _jobs(conn, now),
    }


def _jobs(conn: sqlite3.Connection, now: float) -> list[dict[str, Any]]:
    """The newest backfill jobs handed to the daemon (none in a state older than the table)."""
    try:
        recent = jobs.recent(conn, 5)
    except sqlite3.OperationalError:
        return []
    out = []
    for job in recent:
        result = job.result or {}
        out.append(
            {
                "id": job.id,
                "state": job.state,
                "files": len(job.args.get("files", [])),
                "queued_ago_s": round(now - job.created, 1),
                "progress": job.progress if job.state == jobs.RUNNING else None,
                "finished_ago_s": round(now - job.finished, 1) if job.finished else None,
                "lines": result.get("lines"),
                "messages": result.get("messages"),
                "exit": result.get("exit"),
            }
        )
    return out


def _job_line(j: dict[str, Any]) -> str:
    text = f"    job #{j['id']} ({j['files']} file(s)): {j['state']}"
    p = j["progress"]
    if p:
        eta = f", ETA {p['eta_s']}s" if p.get("eta_s") is not None else ""
        text += (
            f", {p['done_files']}/{p['files']} files, {p['done_bytes']:,} of {p['bytes']:,} "
            f"bytes, {p['lines']:,} lines, {p['lines_per_s']:,} lines/s{eta}"
        )
    elif j["state"] in (jobs.DONE, jobs.FAILED) and j["lines"] is not None:
        text += f" {j['finished_ago_s']}s ago: {j['lines']:,} lines, {j['messages']:,} messages" + (
            "" if j["exit"] == 0 else f" (exit {j['exit']})"
        )
    elif j["state"] == jobs.QUEUED:
        text += f" for {j['queued_ago_s']}s (the running trackd takes it up next)"
    return text


def _locate(row: FileRow) -> tuple[str, os.stat_result] | None:
    """Where the row's file (its device and inode) is now: at its last known path, or renamed
    next to it (`access.log.1`, `access.log-20261128.gz`). None when it is at neither."""
    known = row.cur_path or row.path
    for path in (known, *(s.path for s in siblings_of(known))):
        try:
            st = os.stat(path)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (row.dev, row.ino):
            return path, st
    return None


def _file_entry(row: FileRow, now: float) -> dict[str, Any]:
    """One file generation as what it is. `offset` counts bytes of the file's content —
    decompressed for a compressed generation, so it is compared with a size only for a plain
    file found where it is now; a compressed one shows its size on disk instead."""
    found = _locate(row)
    path = found[0] if found is not None else (row.cur_path or row.path)
    packed = compression_of(path) if found is not None else None
    if packed is None and _PACKED_NAME.search(path):
        packed = path.rsplit(".", 1)[1]
    reading = row.state in ("live", "rotated")
    if packed is not None:
        generation = "compressed"
    elif row.state == "live" and found is not None and found[0] == (row.cur_path or row.path):
        generation = "live"
    else:
        generation = "rotated"
    size = found[1].st_size if found is not None and packed is None else None
    return {
        "source": row.source,
        "path": path,
        "first_path": row.path,
        "generation": generation,
        "compression": packed,
        "state": row.state,
        "progress": "reading" if reading else row.state,
        "offset": row.offset,
        "size": size,
        "size_on_disk": found[1].st_size if found is not None else None,
        "lag_bytes": max(0, size - row.offset) if size is not None and reading else None,
        "found": found is not None,
        "updated_ago_s": round(now - row.updated, 1),
    }


def _file_line(f: dict[str, Any]) -> str:
    """`[web] /var/log/nginx/access.log.1 (rotated from …, reading): offset 21,925 of 24,090, …`"""
    what = [f["generation"] if f["compression"] is None else f"compressed {f['compression']}"]
    if f["path"] != f["first_path"]:
        what.append(f"first seen as {f['first_path']}")
    if not f["found"] and f["state"] in ("live", "rotated"):
        what.append("moved away: its new name is not known")
    if f["compression"] is not None and f["size_on_disk"] is not None:
        what.append(f"{f['size_on_disk']:,} bytes on disk")
    what.append(_PROGRESS.get(f["progress"], f["progress"]))
    head = f"    [{f['source']}] {f['path']} ({', '.join(what)}): "
    if f["progress"] == "skipped":
        return head + "not read"
    if f["compression"] is not None:
        return head + f"{f['offset']:,} bytes of its decompressed content read"
    if f["size"] is None:
        return head + f"offset {f['offset']:,}"
    lag = f", lag {f['lag_bytes']:,} bytes" if f["lag_bytes"] is not None else ""
    return head + f"offset {f['offset']:,} of {f['size']:,}{lag}"


_PACKED_NAME = re.compile(r"\.(gz|bz2|xz)$")
_PROGRESS = {
    "reading": "reading",
    "done": "done",
    "deleted": "deleted: its bytes are gone",
    "skipped": "skipped: there at the first start with start_at: end",
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
    out.extend(_file_line(f) for f in data["files"])
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
    if data["backfill_jobs"]:
        out.append("  backfill jobs (newest first):")
        out.extend(_job_line(j) for j in data["backfill_jobs"])
    return "\n".join(out)
