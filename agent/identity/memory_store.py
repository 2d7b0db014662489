"""An identity store in memory: the `IdentityStore` contract without a database, for resolver
tests and property tests (SCENARIOS 40), and as the reference the other stores must agree with.

Entries are copied in and out, as a real store serialises them: a test that mutates what it
loaded cannot change what is stored, just as with SQLite or Redis.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

from agent.identity.graph import Batch, Changes, Device, Named, Person, Session


class MemoryIdentityStore:
    __slots__ = ("aliases", "changes", "degraded", "devices", "named", "saves", "sessions")

    #: Only this process writes it: cached entries never go stale.
    cache_ttl: float | None = None

    def __init__(self) -> None:
        self.degraded = 0
        self.devices: dict[str, Device] = {}
        self.named: dict[str, Named] = {}
        self.sessions: dict[str, Session] = {}
        self.changes: dict[str, tuple[str, float]] = {}
        #: previousId -> (userId, event time): claimed (and, after `save`, stored).
        self.aliases: dict[str, tuple[str, float]] = {}
        self.saves = 0

    def load_device(self, device: str) -> Device | None:
        found = self.devices.get(device)
        return copy.deepcopy(found) if found is not None else None

    def load_named(self, named: str) -> Named | None:
        found = self.named.get(named)
        return copy.deepcopy(found) if found is not None else None

    def load_devices(self, devices: list[str]) -> list[Device]:
        return [copy.deepcopy(self.devices[d]) for d in devices if d in self.devices]

    def load_named_many(self, named: list[str]) -> list[Named]:
        return [copy.deepcopy(self.named[n]) for n in named if n in self.named]

    def load_sessions(self, sessions: list[str]) -> list[Session]:
        return [copy.deepcopy(self.sessions[s]) for s in sessions if s in self.sessions]

    def load_batch(self, devices: list[str], named: list[str], sessions: list[str]) -> Batch:
        return Batch(
            self.load_devices(devices), self.load_named_many(named), self.load_sessions(sessions)
        )

    def load_changes(self) -> dict[str, tuple[str, float]]:
        return dict(self.changes)

    def claim_alias(self, previous: str, user: str, ts: float) -> bool:
        if previous in self.aliases:
            return False
        self.aliases[previous] = (user, ts)
        return True

    def aliases_touching(self, ids: list[str]) -> list[tuple[str, str, float]]:
        wanted = set(ids)
        found = [(p, u, t) for p, (u, t) in self.aliases.items() if p in wanted or u in wanted]
        return sorted(found, key=lambda a: a[2])

    def save(self, changes: Changes) -> None:
        self.saves += 1
        for dev in changes.devices:
            self.devices[dev.device] = copy.deepcopy(dev)
            dev.saved_seen = dev.last_seen
        for entry in changes.named:
            self.named[entry.named] = copy.deepcopy(entry)
            if entry.changed_to is not None and entry.changed_at is not None:
                self.changes[entry.named] = (entry.changed_to, entry.changed_at)
        for sess in changes.sessions:
            self.sessions[sess.session] = copy.deepcopy(sess)
        for previous, user, ts in changes.aliases:
            self.aliases.setdefault(previous, (user, ts))

    def collect(self, newest: float, forget_after: float, session_ttl: float) -> tuple[int, int]:
        old_devices = [d for d, v in self.devices.items() if v.last_seen < newest - forget_after]
        old_sessions = [
            s
            for s, v in self.sessions.items()
            if max(v.until, v.last_device_ts) < newest - session_ttl
        ]
        for d in old_devices:
            del self.devices[d]
        for s in old_sessions:
            del self.sessions[s]
        return len(old_devices), len(old_sessions)

    def forget(self, person: Person, notice: Iterable[str] = ()) -> dict[str, int]:
        named, devices = set(person.named), set(person.devices)
        sessions = [
            s
            for s, v in self.sessions.items()
            if v.named in named or v.device in devices or v.last_device in devices
        ]
        changes = [old for old, (new, _ts) in self.changes.items() if old in named or new in named]
        removed = {
            "devices": sum(self.devices.pop(d, None) is not None for d in devices),
            "named": sum(self.named.pop(n, None) is not None for n in named),
            "sessions": sum(self.sessions.pop(s, None) is not None for s in sessions),
            "aliases": sum(self.aliases.pop(a, None) is not None for a in person.aliases),
        }
        for old in changes:
            del self.changes[old]
        return removed

    def sync(self) -> list[set[str]]:
        return []

    def counts(self) -> dict[str, int]:
        return {
            "device": len(self.devices),
            "named": len(self.named),
            "session": len(self.sessions),
            "aliases": len(self.aliases),
        }

    def __repr__(self) -> str:
        return f"MemoryIdentityStore({self.counts()})"
