"""`trackd identity ID`: the person an identifier resolves to — its identifiers, epochs, bindings
over time, aliases sent and conflicts (SPEC §6). Reads the state read-only (works while `run` runs).
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any

import orjson

from agent.config import Config
from agent.errors import StartupError
from agent.state.db import StatePaths, connect


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts))
    return f"{stamp}.{round((ts % 1) * 1000):03d}Z"


def collect(config: Config, ident: str) -> dict[str, Any]:
    paths = StatePaths(config.state_dir)
    if not os.path.exists(paths.db):
        raise StartupError(f"no state database at {paths.db} yet: trackd has not run here")
    conn = connect(paths.db, readonly=True)
    try:
        return _collect(conn, ident)
    except sqlite3.DatabaseError as exc:
        raise StartupError(f"cannot read state database {paths.db}: {exc}") from None
    finally:
        conn.close()


def _device(conn: sqlite3.Connection, device: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT state, last_seen FROM id_devices WHERE device = ?", (device,)
    ).fetchone()
    if row is None:
        return None
    state = orjson.loads(row[0])
    epochs = []
    for index, started, named, bound_at, contested in sorted(state["e"], key=lambda e: e[1]):
        epochs.append(
            {
                "epoch": device if index == 0 else f"{device}~{index}",
                "started": _iso(started),
                "bound_to": named,
                "bound_at": _iso(bound_at),
                "contested": bool(contested),
            }
        )
    return {
        "device": device,
        "last_seen": _iso(row[1]),
        "shared_since": _iso(state.get("s")),
        "epochs": epochs,
        "conflicts": sum(1 for e in epochs if e["contested"]),
    }


def _collect(conn: sqlite3.Connection, ident: str) -> dict[str, Any]:
    device_key = ident.rsplit("~", 1)[0] if "~" in ident else ident
    devices: list[dict[str, Any]] = []
    named_ids: set[str] = set()
    found = _device(conn, device_key)
    if found is not None:
        devices.append(found)
        named_ids |= {e["bound_to"] for e in found["epochs"] if e["bound_to"]}
    row = conn.execute("SELECT state FROM id_named WHERE named = ?", (ident,)).fetchone()
    if row is not None:
        named_ids.add(ident)
    # The person: follow R7 changes forward from every named id found.
    changes = dict(
        (old, (new, ts))
        for old, new, ts in conn.execute("SELECT old_id, new_id, ts FROM id_changes")
    )
    people = []
    for named in sorted(named_ids):
        entry = conn.execute("SELECT state FROM id_named WHERE named = ?", (named,)).fetchone()
        state = orjson.loads(entry[0]) if entry else {}
        final, hops = named, 0
        while final in changes and hops < 16:
            final, hops = changes[final][0], hops + 1
        people.append(
            {
                "named": named,
                "resolves_to": final,
                "first_seen": _iso(state.get("f")),
                "devices": state.get("d", []),
                "changed_to": state.get("c"),
                "changed_at": _iso(state.get("ca")),
            }
        )
        if ident == named:
            more = (_device(conn, dev) for dev in state.get("d", []) if dev != device_key)
            devices.extend(d for d in more if d is not None)
    keys = {ident, device_key} | named_ids | {e["epoch"] for d in devices for e in d["epochs"]}
    marks = ",".join("?" * len(keys))
    aliases = [
        {"previousId": p, "userId": u, "at": _iso(ts)}
        for p, u, ts in conn.execute(
            f"SELECT previous, user_id, ts FROM id_aliases WHERE previous IN ({marks}) "  # noqa: S608 - placeholders only
            f"OR user_id IN ({marks}) ORDER BY ts",
            [*keys, *keys],
        )
    ]
    return {
        "id": ident,
        "known": bool(devices or people),
        "people": people,
        "devices": devices,
        "aliases_sent": aliases,
    }


def render_text(data: dict[str, Any]) -> str:
    if not data["known"]:
        return (
            f"{data['id']}: unknown to this trackd (never seen as a device or named identity; "
            "derived anon- ids are not stored)"
        )
    out = [f"identity {data['id']}"]
    for p in data["people"]:
        line = f"  person {p['named']}"
        if p["resolves_to"] != p["named"]:
            line += f" -> now {p['resolves_to']} (changed {p['changed_at']})"
        out.append(
            f"{line}; first seen {p['first_seen']}; devices: {', '.join(p['devices']) or 'none'}"
        )
    for d in data["devices"]:
        shared = f", shared since {d['shared_since']}" if d["shared_since"] else ""
        out.append(
            f"  device {d['device']}: last seen {d['last_seen']}{shared}, "
            f"{d['conflicts']} contested epoch(s)"
        )
        for e in d["epochs"]:
            bound = f"bound to {e['bound_to']} at {e['bound_at']}" if e["bound_to"] else "anonymous"
            flag = " (contested)" if e["contested"] else ""
            out.append(f"    epoch {e['epoch']} from {e['started']}: {bound}{flag}")
    if data["aliases_sent"]:
        out.append("  aliases sent:")
        out.extend(
            f"    {a['previousId']} -> {a['userId']} at {a['at']}" for a in data["aliases_sent"]
        )
    return "\n".join(out)
