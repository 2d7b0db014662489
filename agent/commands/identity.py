"""`trackd identity ID`: the person an identifier resolves to — its identifiers, epochs, bindings
over time, aliases sent and conflicts (SPEC §6). Reads the state read-only (works while `run` runs),
or the shared Redis graph with `identity.store: redis://…`. ID is looked up as typed and as intake
normalises it (`ALICE@EXAMPLE.COM` finds `alice@example.com`).
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any

from agent.commands.readstate import close_store, identity_store, open_readonly, store_problem
from agent.config import Config
from agent.errors import StartupError
from agent.identity.forget import lookup_keys
from agent.identity.graph import Device, IdentityStore
from agent.identity.normalize import Normalizer
from agent.state.db import StatePaths


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts))
    return f"{stamp}.{round((ts % 1) * 1000):03d}Z"


def collect(config: Config, ident: str) -> dict[str, Any]:
    paths = StatePaths(config.state_dir)
    if not os.path.exists(paths.db):
        raise StartupError(f"no state database at {paths.db} yet: trackd has not run here")
    conn = open_readonly(paths.db)
    normalizer = Normalizer(
        lowercase_emails=config.identity.lowercase_emails, blocklist=config.identity.blocklist
    )
    store = identity_store(config, conn)
    try:
        data = _collect(store, ident, normalizer)
        problem = store_problem(store)
        if problem is not None:
            raise StartupError(problem)
        return data
    except sqlite3.DatabaseError as exc:
        raise StartupError(f"cannot read state database {paths.db}: {exc}") from None
    finally:
        close_store(store)
        conn.close()


def _device(dev: Device) -> dict[str, Any]:
    epochs = [
        {
            "epoch": e.epoch_id(dev.device),
            "started": _iso(e.started),
            "bound_to": e.named,
            "bound_at": _iso(e.bound_at),
            "contested": e.contested,
        }
        for e in sorted(dev.epochs, key=lambda e: e.started)
    ]
    return {
        "device": dev.device,
        "last_seen": _iso(dev.last_seen),
        "shared_since": _iso(dev.shared_since),
        "epochs": epochs,
        "conflicts": sum(1 for e in epochs if e["contested"]),
    }


def _collect(store: IdentityStore, ident: str, normalizer: Normalizer) -> dict[str, Any]:
    device_keys, named_keys = lookup_keys(ident, normalizer)
    devices: list[dict[str, Any]] = []
    named_ids: set[str] = set()
    found_devices = store.load_devices(device_keys)
    device_key = found_devices[0].device if found_devices else device_keys[0]
    for found in found_devices[:1]:
        devices.append(_device(found))
        named_ids |= {e.named for e in found.epochs if e.named}
    asked = {n.named for n in store.load_named_many(named_keys)}
    named_ids |= asked
    changes = store.load_changes()
    people = []
    for named in sorted(named_ids):
        entry = store.load_named(named)
        # The person: follow R7 changes forward from every named id found.
        final, hops = named, 0
        while final in changes and hops < 16:
            final, hops = changes[final][0], hops + 1
        people.append(
            {
                "named": named,
                "resolves_to": final,
                "first_seen": _iso(entry.first_seen) if entry else None,
                "devices": list(entry.devices) if entry else [],
                "changed_to": entry.changed_to if entry else None,
                "changed_at": _iso(entry.changed_at) if entry else None,
            }
        )
        if named in asked and entry is not None:
            others = [d for d in entry.devices if d != device_key]
            loaded = {d.device: d for d in store.load_devices(others)}
            devices.extend(_device(loaded[d]) for d in others if d in loaded)
    keys = {ident, device_key} | named_ids | {e["epoch"] for d in devices for e in d["epochs"]}
    aliases = [
        {"previousId": p, "userId": u, "at": _iso(ts)}
        for p, u, ts in store.aliases_touching(sorted(keys))
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
