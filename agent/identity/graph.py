"""The identity graph's data (SPEC §1.2): devices and their epochs, named identities, aliases.

A device `D` starts in epoch `D`; each new epoch is `D~1`, `D~2`, … An epoch is bound to at most one
named identity, once, at an event time; attribution looks the epoch up by the hit's own time (R6),
so late and backfilled hits resolve through the binding history.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol


def escape_device(value: str) -> str:
    """A `~` inside a device value is escaped first, so `D~k` always names an epoch."""
    return value.replace("~", "%7E") if "~" in value else value


@dataclass(slots=True)
class Epoch:
    index: int
    #: Event time the epoch began (the device's first hit for epoch 0).
    started: float
    named: str | None = None
    bound_at: float | None = None
    #: The epoch followed a conflict (R2): its messages say `contested: true`.
    contested: bool = False

    def epoch_id(self, device: str) -> str:
        return device if self.index == 0 else f"{device}~{self.index}"


@dataclass(slots=True)
class Device:
    device: str
    epochs: list[Epoch]
    #: Event time the device was marked shared (R4), or None.
    shared_since: float | None = None
    #: (time, named) of the logins of the last 24h, for the R4 breaker.
    recent_named: list[tuple[float, str]] = field(default_factory=list)
    last_seen: float = 0.0
    #: The last_seen value the store holds: it is written again once a day has passed (for the
    #: identity.forget_after collection), or on every hit of a shared device (R4's idle gaps).
    saved_seen: float = 0.0

    def epoch_at(self, ts: float) -> Epoch:
        """The epoch in force at event time `ts` (the first one for times before it began)."""
        epochs = self.epochs
        if len(epochs) == 1 or ts >= epochs[-1].started:
            return epochs[-1]
        starts = [e.started for e in epochs]
        i = bisect.bisect_right(starts, ts) - 1
        return epochs[max(i, 0)]

    def new_epoch(self, ts: float, *, contested: bool = False) -> Epoch:
        epochs = self.epochs
        epoch = Epoch(index=max(e.index for e in epochs) + 1, started=ts, contested=contested)
        # The list is kept sorted by (started, index): a new epoch usually goes last (a shared
        # device's every login makes one, so no sort of the whole list each time).
        if not epochs or ts >= epochs[-1].started:
            epochs.append(epoch)
        else:
            bisect.insort(epochs, epoch, key=lambda e: (e.started, e.index))
        return epoch


@dataclass(slots=True)
class Named:
    named: str
    first_seen: float
    #: Devices bound to this identity (capped by identity.max_devices_per_named).
    devices: list[str] = field(default_factory=list)
    #: R7: the identity this one was changed to, and when.
    changed_to: str | None = None
    changed_at: float | None = None


#: Where a login record sits: (source, hex first-line fp, offset, hex line hash). Messages produced
#: when a join completes later take the login record's ids (SPEC §3.4).
LoginRef = tuple[str, str, int, str]


@dataclass(slots=True)
class Session:
    """A session cookie's state: its mapping to a person, and the device last seen carrying it."""

    session: str
    #: The person the session maps to (R2), while `since - join_window <= t < until`.
    named: str | None = None
    since: float = 0.0
    until: float = 0.0
    #: The device the login bound (or a later hit joined), for R3's logout.
    device: str | None = None
    login_ref: LoginRef | None = None
    #: The device of the latest access record carrying the session, and its time.
    last_device: str | None = None
    last_device_ts: float = 0.0

    def mapped_at(self, ts: float, join_window: float) -> str | None:
        """The person the session names at `ts` (a hit up to join_window before the login joins)."""
        if self.named is not None and self.since - join_window <= ts < self.until:
            return self.named
        return None


class Changes(NamedTuple):
    """What the resolver changed since the last commit: saved in the chunk's transaction."""

    devices: list[Device]
    named: list[Named]
    sessions: list[Session]
    #: (previousId, userId, event time) of each alias claimed.
    aliases: list[tuple[str, str, float]]


class IdentityStore(Protocol):
    """Where the graph persists (SQLite today, Redis for a fleet; `memory_store` in tests).

    Cache contract: the resolver caches what it loads (LRU) and is the only writer through this
    store on its host. A store that other writers change too (Redis, shared by a fleet) must make
    `claim_alias` atomic across them — the one decision that must never be taken twice — and may
    serve the resolver stale devices and named ids otherwise: a binding another host made shows
    up once the entry is evicted or reloaded, and R2's conflict rule keeps a stale view from ever
    merging two people (the claim fails, no alias is sent).
    """

    #: Resolutions made from the local cache alone because the store was unreachable
    #: (`trackd_identity_degraded_total`; always 0 for a local store).
    degraded: int
    #: How long (seconds) the resolver may serve a cached entry before asking the store again:
    #: None for a store only this host writes, a few seconds for a store a fleet shares (so
    #: another host's bindings show up).
    cache_ttl: float | None

    def load_device(self, device: str) -> Device | None: ...

    def load_named(self, named: str) -> Named | None: ...

    def load_devices(self, devices: list[str]) -> list[Device]:
        """Those of `devices` the store knows (one round trip for a batch)."""
        ...

    def load_named_many(self, named: list[str]) -> list[Named]:
        """Those of `named` the store knows (one round trip for a batch)."""
        ...

    def load_sessions(self, sessions: list[str]) -> list[Session]:
        """Those of `sessions` the store knows."""
        ...

    def load_batch(self, devices: list[str], named: list[str], sessions: list[str]) -> Batch | None:
        """Those of each the store knows, in one round trip; None when the store is unreachable
        (the caller resolves from what it has cached, and the store counts `degraded`)."""
        ...

    def load_changes(self) -> dict[str, tuple[str, float]]:
        """Every R7 identity change: old id -> (new id, time). Few; kept in memory."""
        ...

    def claim_alias(self, previous: str, user: str, ts: float) -> bool | None:
        """Claim the one alias `previous` may ever have, before its message is emitted: True
        when this caller may send `alias(previous, user)`, False when an alias for `previous`
        was already sent (by this host or another), None when the claim could not be recorded
        (a shared store is unreachable: the caller may ask again later, with the same
        arguments). The claim is recorded by the next `save` (for SQLite, in the same
        transaction as the message); a shared store records it at once, with a value naming
        this host, so the same claim after a crash (the chunk rolled back) is granted again."""
        ...

    def aliases_touching(self, ids: list[str]) -> list[tuple[str, str, float]]:
        """Aliases sent whose previousId or userId is one of `ids`, oldest first."""
        ...

    def save(self, changes: Changes) -> None:
        """Persist what changed and the aliases claimed (inside the caller's transaction)."""
        ...

    def collect(self, newest: float, forget_after: float, session_ttl: float) -> tuple[int, int]:
        """Forget devices unseen for `forget_after` and sessions over for `session_ttl`, measured
        back from `newest` (the newest event time read). Returns (devices, sessions) removed."""
        ...

    def counts(self) -> dict[str, int]:
        """Entries per kind (`device`, `named`, `session`, `aliases`) for metrics and status."""
        ...

    def forget(self, person: Person, notice: Iterable[str] = ()) -> dict[str, int]:
        """Erase `person` (SPEC §8): its devices with their epochs and bindings, its named ids
        and R7 changes, the sessions mapped to it or last seen on its devices, and the aliases
        claimed for it. Returns what was removed, per kind. Inside the caller's transaction.
        `notice`: erasure tokens a shared store publishes to the other hosts (a local store
        ignores them)."""
        ...

    def sync(self) -> list[set[str]]:
        """Between chunks: write what is pending to a remote store, and return the erasures
        other hosts made since the last call (each a set of `erasure_token`s of the ids they
        removed; always empty for a local store)."""
        ...


class Batch(NamedTuple):
    """One prefetch's answer (`IdentityStore.load_batch`)."""

    devices: list[Device]
    named: list[Named]
    sessions: list[Session]


class Person(NamedTuple):
    """Everything `trackd forget ID` erases (found by `agent.identity.forget.find_person`)."""

    #: The person's named ids (the one given, and those R7 changes link to it).
    named: list[str]
    #: Devices bound to one of them at some epoch (or the device given).
    devices: list[str]
    #: Every epoch id of those devices (`D`, `D~1`, …): messages carry them as anonymousId.
    epochs: list[str]
    #: previousIds of the aliases claimed for this person (whose userId or previousId is theirs).
    aliases: list[str]

    def ids(self) -> set[str]:
        """Every identifier a message of this person may carry."""
        return {*self.named, *self.devices, *self.epochs}


class StoreUnavailable(Exception):
    """The shared identity store could not be reached for a step that must not be skipped."""

    def __init__(self, where: str) -> None:
        super().__init__(
            f"the identity store {where} is not reachable; nothing was erased from it — run "
            "`trackd forget` again once Redis answers (see `trackd status`)"
        )
