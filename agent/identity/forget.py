"""Erasure (SPEC §8 `trackd forget ID`): which person an identifier names, whatever the store.

`find_person` reads the graph through the `IdentityStore` seam only, so SQLite, memory and Redis
erase the same things; each store then deletes them its own way (`IdentityStore.forget`). The
person is the named identity the id is (or whose device it is), every named id an R7 change links
to it, every device bound to one of those at some epoch, and the aliases claimed for them. Another
person's alias claims stay: an epoch once aliased to someone must never be aliased to a third.
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
from collections.abc import Callable
from typing import Any

from agent.identity.graph import IdentityStore, Person, escape_device
from agent.identity.normalize import Normalizer
from agent.state.db import transaction
from agent.state.erase import Erased, erase

#: R7 chains are short; a cycle (never written, but) cannot hang the walk.
_MAX_LINKS = 64


def lookup_keys(ident: str, normalizer: Normalizer) -> tuple[list[str], list[str]]:
    """The device keys and named ids `ident` may be stored as: as typed, and normalised the way
    intake normalises (an email is lower-cased, a `%XX` decoded, a `~` in a device escaped),
    so `ALICE@EXAMPLE.COM` finds `alice@example.com`."""
    named = [ident]
    as_named = normalizer.check("named", ident)
    if as_named is not None and as_named not in named:
        named.append(as_named)
    devices: list[str] = []
    raw_device = ident.rsplit("~", 1)[0] if _is_epoch(ident) else ident
    for candidate in (raw_device, normalizer.check("device", raw_device)):
        if candidate is None:
            continue
        for key in (candidate, escape_device(candidate)):
            if key not in devices:
                devices.append(key)
    return devices, named


def _is_epoch(ident: str) -> bool:
    head, sep, tail = ident.rpartition("~")
    return bool(sep and head and tail.isdigit())


def find_person(store: IdentityStore, ident: str, normalizer: Normalizer) -> Person:
    """The person `ident` (a device, an epoch `D~k`, or a named id) belongs to; empty lists when
    the store does not know it."""
    device_keys, named_keys = lookup_keys(ident, normalizer)
    named: set[str] = set()
    devices: set[str] = set()
    for dev in store.load_devices(device_keys):
        devices.add(dev.device)
        named |= {e.named for e in dev.epochs if e.named}
    named |= {n.named for n in store.load_named_many(named_keys)}
    changes = store.load_changes()
    backwards: dict[str, set[str]] = {}
    for old, (new, _ts) in changes.items():
        backwards.setdefault(new, set()).add(old)
    todo = list(named)
    while todo and len(named) < _MAX_LINKS:
        current = todo.pop()
        linked = set(backwards.get(current, ()))
        if current in changes:
            linked.add(changes[current][0])
        for other in linked - named:
            named.add(other)
            todo.append(other)
    for entry in store.load_named_many(sorted(named)):
        devices.update(entry.devices)
    loaded = store.load_devices(sorted(devices))
    epochs = sorted({e.epoch_id(d.device) for d in loaded for e in d.epochs})
    aliases = sorted(
        previous
        for previous, user, _ts in store.aliases_touching(sorted(named | set(epochs)))
        if user in named or previous in named
    )
    return Person(sorted(named), sorted(d.device for d in loaded), epochs, aliases)


def erasure_token(secret: bytes, ident: str) -> str:
    """What a fleet's erasure notice carries instead of the identifier itself (SPEC §8: the
    store must not keep the very ids it was asked to forget): an HMAC with the site's shared
    secret (SPEC §1.3), which every host of the site can compute for the ids it holds."""
    digest = hmac.new(secret, ident.encode("utf-8", "surrogateescape"), hashlib.sha256)
    return digest.hexdigest()[:32]


def message_ids(person: Person, named_out: Callable[[str], str]) -> set[str]:
    """The values a message of `person` carries as userId/anonymousId/previousId: their ids,
    and their named ids as sent (`privacy.hash_named`)."""
    return person.ids() | {named_out(n) for n in person.named}


def forget(
    conn: sqlite3.Connection,
    store: IdentityStore,
    ident: str,
    normalizer: Normalizer,
    secret: bytes,
    named_out: Callable[[str], str],
) -> dict[str, Any]:
    """Erase `ident`'s person: from the graph (and, for a shared store, a notice to the other
    hosts) and its undelivered messages from the outbox (SPEC §8). The lock holder runs it
    between two chunks; what it returns is printed by `trackd forget`."""
    person = find_person(store, ident, normalizer)
    ids = message_ids(person, named_out)
    if not ids:
        # Unknown to the graph (collected, say): its messages may still wait in the outbox.
        devices, named = lookup_keys(ident, normalizer)
        ids = {*devices, *named} | {named_out(n) for n in named}
    tokens = {erasure_token(secret, i) for i in ids}
    # A shared store first sends what is waiting in its journal (a load does): a change of this
    # person sent after the erasure would bring them back.
    store.load_batch([], [], [])
    with transaction(conn):
        removed = store.forget(person, tokens)
        erased = erase(conn, ids.__contains__, ids)
    return {
        "id": ident,
        "known": bool(person.named or person.devices),
        "named": person.named,
        "devices": person.devices,
        "removed": {
            **removed,
            "epochs": len(person.epochs),
            "outbox_messages": erased.messages,
            "outbox_bytes": erased.bytes,
            "dead_letters": erased.dead_letters,
        },
    }


def forget_remote(conn: sqlite3.Connection, tokens: set[str], secret: bytes) -> Erased:
    """Another host erased someone: drop this host's undelivered messages of theirs (the notice
    names them by `erasure_token` only)."""
    with transaction(conn):
        return erase(conn, lambda v: erasure_token(secret, v) in tokens)
