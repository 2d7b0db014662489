"""`trackd forget ID` (SPEC §8): erase an identifier's person — devices, epochs, bindings,
sessions, named ids and the aliases claimed for them — from the identity graph (the state
database's, or the Redis a fleet shares), and their undelivered messages from the outbox.

With no trackd running it takes the lock on state_dir and erases itself; while `run` runs it
leaves a request row that the daemon applies between two chunks (SPEC §5.1), dropping its
resolver cache too, and waits for the result. With Redis, the other hosts learn of the erasure
from the store and drop their own undelivered messages of the person.
"""

from __future__ import annotations

import os
from typing import Any

from agent.commands.readstate import close_store
from agent.config import Config
from agent.errors import StartupError
from agent.events.messages import NamedOut
from agent.identity import forget
from agent.identity.derived import load_or_create_secret
from agent.identity.graph import StoreUnavailable
from agent.identity.normalize import Normalizer
from agent.state import requests
from agent.state.db import StateLock, StatePaths, open_state

#: How long to wait for a running daemon to apply the request.
WAIT = 30.0


def run(config: Config, ident: str) -> dict[str, Any]:
    """Erase `ident`'s person; the result says what was removed, and by whom."""
    from agent.runtime import default_store

    paths = StatePaths(config.state_dir)
    if not os.path.exists(paths.db):
        raise StartupError(
            f"no state database at {paths.db} yet: trackd has not run with this state_dir"
        )
    lock = StateLock(paths)
    if lock.try_acquire():
        try:
            conn = open_state(config.state_dir, on_corrupt=config.state.on_corrupt)
            store = default_store(config, conn)
            try:
                secret = load_or_create_secret(config.identity.secret_file)
                ident_cfg = config.identity
                normalizer = Normalizer(
                    lowercase_emails=ident_cfg.lowercase_emails, blocklist=ident_cfg.blocklist
                )
                hashed = config.privacy.hash_named == "sha256"
                named_out = NamedOut(secret if hashed else None)
                try:
                    result = forget.forget(conn, store, ident, normalizer, secret, named_out)
                except StoreUnavailable as exc:
                    return {"applied": False, "id": ident, "error": str(exc)}
                store.sync()
            finally:
                close_store(store)
                conn.close()
        finally:
            lock.release()
        return {"applied": True, "by": "this command", **result}
    req_id, req = requests.ask(paths.db, requests.FORGET, {"id": ident}, WAIT)
    if req is None:
        return {"applied": False, "id": ident, "request": req_id}
    result = req.result or {}
    if "error" in result:
        return {"applied": False, **result}
    return {"applied": True, "by": "the running trackd", **result}


_KINDS = (
    ("devices", "device(s)"),
    ("epochs", "epoch(s)"),
    ("named", "named id(s)"),
    ("sessions", "session(s)"),
    ("aliases", "alias record(s)"),
    ("outbox_messages", "undelivered message(s)"),
    ("dead_letters", "dead letter(s)"),
)


def render(data: dict[str, Any]) -> str:
    if "error" in data:
        return f"trackd forget: {data['error']}"
    if not data["applied"]:
        return (
            f"request {data['request']} queued: the running trackd did not apply it within "
            f"{WAIT:.0f}s (is it stuck? see `trackd status`); it applies it when it can"
        )
    removed = data["removed"]
    what = ", ".join(f"{removed[k]:,} {label}" for k, label in _KINDS if removed.get(k))
    if not data["known"] and not what:
        return (
            f"{data['id']}: unknown to this trackd (not in the identity graph, no undelivered "
            f"messages); nothing to remove (applied by {data['by']})"
        )
    who = ", ".join(data["named"]) or "an anonymous person"
    devices = f" with {len(data['devices'])} device(s)" if data["devices"] else ""
    return (
        f"forgot {data['id']}: {who}{devices} — removed {what or 'nothing else'} "
        f"(applied by {data['by']}); their later hits start as a new person"
    )
