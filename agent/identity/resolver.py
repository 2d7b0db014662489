"""The resolver: rules R1-R7 of SPEC §1.2 over the identity graph.

Every decision uses the record's own event time. The graph lives in an `IdentityStore`; the
resolver keeps a bounded LRU of devices, named ids and sessions in front of it, plus what it
changed since the last `take_changes()` (kept in memory until the pipeline commits it). A batch
of records is prefetched in one query per kind, so the hot loop never waits on a row lookup.

The one mistake it must never make is aliasing two real people: an epoch is bound once; a second
person on a bound epoch gets a new epoch (R2), a shared device is never attributed by binding
(R4), and only an explicit `identity_change` links two named ids (R7).
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import NamedTuple, TypeVar

import structlog

from agent.identity.graph import (
    Changes,
    Device,
    Epoch,
    IdentityStore,
    LoginRef,
    Named,
    Session,
    escape_device,
)
from agent.identity.lru import Lru

log = structlog.get_logger("trackd.identity")
_DAY = 86400.0
#: Deferred alias claims kept at most (a long outage with many logins: the rest are not sent).
_DEFERRED_MAX = 100_000
V = TypeVar("V")


class Attribution(NamedTuple):
    """Who a record belongs to (SPEC §3.1): `anonymousId`, `userId`, and how it was decided."""

    anonymous_id: str | None
    user_id: str | None
    resolution: str  # named | device | derived
    contested: bool


#: `Attribution(*fields)` without the generated `__new__`'s frame (one per hit).
_attribution = functools.partial(tuple.__new__, Attribution)


class IdentityEvent(NamedTuple):
    """An `alias` to emit: `previous` (a device epoch, or R7's old id) -> `user`.

    `ref` is set when the alias completes a join started by an earlier login record: the message
    then takes that record's ids (SPEC §3.4)."""

    previous: str
    user: str
    slot: str
    ref: LoginRef | None = None


class Resolver:
    """Resolve hits, logins, logouts and identity changes. The pipeline thread owns it."""

    def __init__(
        self,
        store: IdentityStore,
        *,
        max_named_per_device: int = 3,
        max_devices_per_named: int = 50,
        session_timeout: float = 1800.0,
        session_ttl: float = 86400.0,
        join_window: float = 30.0,
        cache_size: int = 20_000,
        fast_path: bool = True,
    ) -> None:
        self._store = store
        #: A cached, unshared device's repeat hit takes `_repeat_hit` (False: every hit takes
        #: the general path, the reference the tests hold the shortcut to).
        self._fast_path = fast_path
        self._max_named = max_named_per_device
        self._max_devices = max_devices_per_named
        self._session_timeout = session_timeout
        self._session_ttl = session_ttl
        self._join_window = join_window
        self._devices: Lru[str, Device] = Lru(cache_size)
        self._named: Lru[str, Named] = Lru(cache_size)
        self._sessions: Lru[str, Session] = Lru(cache_size)
        self._dirty_devices: dict[str, Device] = {}
        self._dirty_named: dict[str, Named] = {}
        self._dirty_sessions: dict[str, Session] = {}
        self._new_aliases: list[tuple[str, str, float]] = []
        self._absent: set[tuple[str, str]] = set()
        #: Alias claims a shared store could not record, by device (retried on its next hit).
        self._deferred: dict[str, list[tuple[str, str, float, LoginRef | None]]] = {}
        #: A shared store's cache lifetime, and the keys loaded in the current lifetime window.
        self._ttl = store.cache_ttl
        self._fresh_until = 0.0
        self._fresh: dict[str, set[str]] = {"d": set(), "n": set(), "s": set()}
        #: R7: old named id -> (new named id, event time of the change).
        self._changes = store.load_changes()
        #: conflicts, aliases, identity_cap, shared_devices, devices_new, named_new, sessions_new.
        self.counts: Counter[str] = Counter()

    # -- access hits (R1, and R2 for hits carrying km_ni or a mapped session) --------------

    def hit(
        self, ts: float, device: str | None, named: str | None, session: str | None = None
    ) -> tuple[Attribution, list[IdentityEvent]]:
        """Attribute an access hit. `device`/`named`/`session` are normalised values (None when
        absent or junk). With neither a device nor a person, the caller derives an id."""
        if session is None and device is not None and self._fast_path and not self._deferred:
            dev = self._devices.get(device)
            if dev is not None and dev.shared_since is None and "~" not in device:
                fast = self._repeat_hit(dev, ts, named)
                if fast is not None:
                    return fast, []
        sess = self._session(session) if session is not None else None
        mapped = sess.mapped_at(ts, self._join_window) if sess is not None else None
        if device is None:
            return self._deviceless(ts, named if named is not None else mapped), []
        dev = self._device(escape_device(device), ts)
        self._sighting(dev, sess, ts)
        events: list[IdentityEvent] = []
        person: str | None = None
        if named is not None:
            person = named
            events = self._km_ni(dev, ts, named)
        elif mapped is not None and sess is not None:
            person = mapped
            events = self._session_login(dev, sess, ts, mapped)
        if ts > dev.last_seen:
            dev.last_seen = ts
            if dev.shared_since is not None or ts - dev.saved_seen > _DAY:
                self._mark(dev)
        if self._deferred and dev.device in self._deferred:
            events = events + self._retry_deferred(dev)
        return self._attribute(dev, ts, person), events

    def _repeat_hit(self, dev: Device, ts: float, named: str | None) -> Attribution | None:
        """The hot path of `hit`: a cached, unshared device without a session (nothing
        deferred), anonymous or carrying the km_ni its epoch is already bound to. Exactly the
        general path's decisions (R1, R2's silent repeat, the once-a-day last_seen write),
        without its calls; None when the hit needs the general path (a login to decide)."""
        epochs = dev.epochs
        epoch = epochs[-1]
        if ts < epoch.started and len(epochs) > 1:
            epoch = dev.epoch_at(ts)
        bound = epoch.named
        if named is not None:
            recent = dev.recent_named
            if not (
                bound == named
                and recent
                and recent[-1][1] == named
                and abs(ts - recent[-1][0]) <= _DAY
            ):
                return None  # a login to decide (R2)
        device = dev.device
        self._devices.move_to_end(device)
        if ts > dev.last_seen:
            dev.last_seen = ts
            if ts - dev.saved_seen > _DAY:
                self._dirty_devices[device] = dev
        index = epoch.index
        eid = device if index == 0 else f"{device}~{index}"
        if named is not None:
            person = self._final(named, ts) if self._changes else named
            return _attribution((eid, person, "named", epoch.contested))
        if bound is not None and epoch.bound_at is not None and epoch.bound_at <= ts:
            person = self._final(bound, ts) if self._changes else bound
            return _attribution((eid, person, "named", epoch.contested))
        return _attribution((eid, None, "device", epoch.contested))

    def _deviceless(self, ts: float, who: str | None) -> Attribution:
        """R1 without a device: the named id (or the session's person), else nothing."""
        if who is None:
            return Attribution(None, None, "none", False)
        self._touch_named(who, ts)
        return Attribution(None, self._final(who, ts), "named", False)

    def _sighting(self, dev: Device, sess: Session | None, ts: float) -> None:
        """The device was seen (with `sess`): R3's last device of the session, and R4's idle gap
        on a shared device (a new epoch)."""
        if sess is not None and ts >= sess.last_device_ts:
            sess.last_device, sess.last_device_ts = dev.device, ts
            self._dirty_sessions[sess.session] = sess
        if dev.shared_since is not None and ts - dev.last_seen > self._session_timeout:
            dev.new_epoch(ts)
            self._mark(dev)

    def _km_ni(self, dev: Device, ts: float, named: str) -> list[IdentityEvent]:
        """R2 by cookie: a hit carrying km_ni logs its device in (silently: no alias)."""
        recent = dev.recent_named
        if (
            dev.shared_since is None
            and recent
            and recent[-1][1] == named
            and abs(ts - recent[-1][0]) <= _DAY
            and dev.epoch_at(ts).named == named
        ):
            # The same person's km_ni again: exactly what _login would conclude (nothing to
            # note, nothing to bind), without its work — the hot path of named visitors.
            return []
        return self._login(dev, ts, named, via_cookie=True, explicit=False)

    def _session_login(
        self, dev: Device, sess: Session, ts: float, mapped: str
    ) -> list[IdentityEvent]:
        """R2 by session: a hit carrying a mapped session is itself a login for its device; the
        alias completes the login record's join and takes its ids."""
        events = self._login(dev, ts, mapped, via_cookie=False, explicit=False, ref=sess.login_ref)
        if sess.device is None:
            sess.device = dev.device
            self._dirty_sessions[sess.session] = sess
        return events

    def _attribute(self, dev: Device, ts: float, person: str | None) -> Attribution:
        """R1 (and R4): the epoch in force at `ts`, and the person the hit belongs to."""
        epoch = dev.epoch_at(ts)
        eid = epoch.epoch_id(dev.device)
        shared = dev.shared_since is not None and ts >= dev.shared_since
        contested = epoch.contested or shared
        if person is not None:
            # Never pair an epoch with a person it is not bound to (a capped or late binding).
            anon = eid if epoch.named == person else None
            return Attribution(anon, self._final(person, ts), "named", contested)
        if (
            epoch.named is not None
            and not shared
            and epoch.bound_at is not None
            and epoch.bound_at <= ts
        ):
            return Attribution(eid, self._final(epoch.named, ts), "named", contested)
        return Attribution(eid, None, "device", contested)

    # -- logins (R2), logouts (R3), identity changes (R7) ------------------------------------

    def login(
        self,
        ts: float,
        named: str,
        device: str | None,
        session: str | None,
        ref: LoginRef | None = None,
    ) -> tuple[str | None, list[IdentityEvent]]:
        """An `identify:` rule (login or signup). Returns the epoch now bound to `named` (the
        `identify` message's anonymousId; None when no device is known yet) and the aliases.

        The device is the rule's, else the device last seen carrying the session within
        `join_window` of the login; a later hit carrying the session completes the join."""
        self._touch_named(named, ts)
        dev_id = escape_device(device) if device is not None else None
        if session is not None:
            sess = self._session(session)
            if (
                dev_id is None
                and sess.last_device is not None
                and abs(ts - sess.last_device_ts) <= self._join_window
            ):
                dev_id = sess.last_device
            sess.named, sess.since, sess.until = named, ts, ts + self._session_ttl
            sess.device, sess.login_ref = dev_id, ref
            self._dirty_sessions[sess.session] = sess
        if dev_id is None:
            return None, []
        dev = self._device(dev_id, ts)
        events = self._login(dev, ts, named, via_cookie=False, explicit=True, ref=ref)
        if ts > dev.last_seen:
            dev.last_seen = ts
        epoch = dev.epoch_at(ts)
        return (epoch.epoch_id(dev.device) if epoch.named == named else None), events

    def logout(self, ts: float, session: str | None, device: str | None) -> bool:
        """R3: end the session's mapping and start a new, unbound epoch on its device. False when
        the logout found neither a mapped session nor a device (then nothing changed)."""
        dev_id = escape_device(device) if device is not None else None
        found = False
        if session is not None:
            sess = self._session(session)
            if sess.named is not None and sess.since <= ts < sess.until:
                sess.until = ts
                found = True
                self._dirty_sessions[sess.session] = sess
            dev_id = dev_id or sess.device or sess.last_device
        if dev_id is None:
            return found
        dev = self._device(dev_id, ts)
        dev.new_epoch(ts)
        self._mark(dev)
        return True

    def identity_change(self, ts: float, old: str, new: str) -> list[IdentityEvent]:
        """R7: link two named identities explicitly; hits naming `old` then resolve to `new`."""
        if old == new or self._final(new, ts) == old:
            return []  # nothing to do, or a cycle: never link an id back to itself
        entry = self._touch_named(old, ts)
        self._touch_named(new, ts)
        entry.changed_to, entry.changed_at = new, ts
        self._dirty_named[old] = entry
        self._changes[old] = (new, ts)
        if not self._store.claim_alias(old, new, ts):
            self.counts["alias_claims_lost"] += 1
            return []
        self._new_aliases.append((old, new, ts))
        self.counts["aliases"] += 1
        return [IdentityEvent(old, new, "change")]

    def session_person(self, ts: float, session: str) -> str | None:
        """The person a session names at `ts` (for app records that carry only a session)."""
        mapped = self._session(session).mapped_at(ts, self._join_window)
        return None if mapped is None else self._final(mapped, ts)

    def final(self, named: str, ts: float) -> str:
        """The identity `named` resolves to at `ts`, following R7 changes."""
        return self._final(named, ts)

    # -- the R2 branches -------------------------------------------------------------------

    def _login(
        self,
        dev: Device,
        ts: float,
        named: str,
        *,
        via_cookie: bool,
        explicit: bool,
        ref: LoginRef | None = None,
    ) -> list[IdentityEvent]:
        self._touch_named(named, ts)
        self._note_named(dev, ts, named)
        epoch = dev.epoch_at(ts)
        shared = dev.shared_since is not None and ts >= dev.shared_since
        if shared and (explicit or (epoch.named is not None and epoch.named != named)):
            # R4: on a shared device every login starts a new epoch; never alias the old one.
            if not self._accept_device(named, dev.device):
                return []
            fresh = dev.new_epoch(ts, contested=True)
            self._bind(dev, fresh, named, ts)
            return [] if via_cookie else self._alias(fresh.epoch_id(dev.device), named, ts, ref)
        if epoch.named is None:
            if not self._accept_device(named, dev.device):
                return []
            self._bind(dev, epoch, named, ts)
            if via_cookie:
                return []  # the browser library already sent it (R2: km_ni binds silently)
            return self._alias(epoch.epoch_id(dev.device), named, ts, ref)
        if epoch.named == named:
            return []
        # R2 conflict (shared computer): never alias this epoch with a second person.
        self.counts["conflicts"] += 1
        if not self._accept_device(named, dev.device):
            return []
        fresh = dev.new_epoch(ts, contested=True)
        self._bind(dev, fresh, named, ts)
        return self._alias(fresh.epoch_id(dev.device), named, ts, ref)

    def _bind(self, dev: Device, epoch: Epoch, named: str, ts: float) -> None:
        epoch.named = named
        epoch.bound_at = ts
        self._mark(dev)

    def _alias(
        self, previous: str, user: str, ts: float, ref: LoginRef | None
    ) -> list[IdentityEvent]:
        """The alias to emit, once the store granted the claim (never twice for one epoch).
        A claim the store could not record (a shared store unreachable) is deferred: asked
        again with the device's next hit, and then sent with the login record's ids."""
        granted = self._store.claim_alias(previous, user, ts)
        if granted is None:
            device = previous.rsplit("~", 1)[0] if "~" in previous else previous
            if sum(map(len, self._deferred.values())) < _DEFERRED_MAX:
                self._deferred.setdefault(device, []).append((previous, user, ts, ref))
                self.counts["alias_claims_deferred"] += 1
            return []
        if not granted:
            self.counts["alias_claims_lost"] += 1
            return []
        self._new_aliases.append((previous, user, ts))
        self.counts["aliases"] += 1
        return [IdentityEvent(previous, user, f"alias:{previous}", ref)]

    def _retry_deferred(self, dev: Device) -> list[IdentityEvent]:
        """Claims deferred for `dev`'s epochs, asked again: granted ones are emitted now (the
        epoch still bound to that person), refused ones dropped, unrecordable ones kept."""
        pending = self._deferred.pop(dev.device)
        events: list[IdentityEvent] = []
        keep = []
        epochs = {e.epoch_id(dev.device): e for e in dev.epochs}
        for previous, user, ts, ref in pending:
            epoch = epochs.get(previous)
            if epoch is None or epoch.named != user:
                continue
            granted = self._store.claim_alias(previous, user, ts)
            if granted is None:
                keep.append((previous, user, ts, ref))
            elif granted:
                self._new_aliases.append((previous, user, ts))
                self.counts["aliases"] += 1
                events.append(IdentityEvent(previous, user, f"alias:{previous}", ref))
            else:
                self.counts["alias_claims_lost"] += 1
        if keep:
            self._deferred[dev.device] = keep
        return events

    def _note_named(self, dev: Device, ts: float, named: str) -> None:
        """R4: mark the device shared at the (max+1)-th distinct named id within 24h."""
        recent = dev.recent_named
        if any(n == named and abs(t - ts) <= _DAY for t, n in recent[-4:]):
            return
        recent.append((ts, named))
        recent[:] = [(t, n) for t, n in recent if ts - _DAY <= t <= ts + _DAY]
        if len({n for _, n in recent}) > self._max_named:
            if dev.shared_since is None:
                dev.shared_since = ts
                self.counts["shared_devices"] += 1
            elif ts < dev.shared_since:
                # A late (backfilled) login trips the breaker earlier in event time (R6): the
                # device was shared from then on, so its late hits are decided as shared too.
                dev.shared_since = ts
        self._mark(dev)

    def _accept_device(self, named: str, device: str) -> bool:
        """R4: a named identity takes at most max_devices_per_named devices."""
        entry = self._touch_named(named, 0.0)
        if device in entry.devices:
            return True
        if len(entry.devices) >= self._max_devices:
            self.counts["identity_cap"] += 1
            if self.counts["identity_cap"] <= 10 or self.counts["identity_cap"] % 1000 == 0:
                log.warning(
                    "identity_cap_exceeded",
                    named_sha256=hashlib.sha256(named.encode()).hexdigest()[:16],
                    devices=len(entry.devices),
                    cap=self._max_devices,
                    total=self.counts["identity_cap"],
                    hint="a shared login (or a bot) on many browsers; new devices stay anonymous",
                )
            return False
        entry.devices.append(device)
        self._dirty_named[named] = entry
        return True

    def _final(self, named: str, ts: float) -> str:
        """Follow R7 changes in force at `ts` (bounded: a cycle cannot hang the pipeline)."""
        current = named
        changes = self._changes
        for _ in range(16):
            step = changes.get(current)
            if step is None or step[1] > ts:
                return current
            current = step[0]
        return current

    # -- cache and store -------------------------------------------------------------------

    def prefetch(self, devices: set[str], named: set[str], sessions: set[str]) -> None:
        """Load a batch's identities in one store call (one round trip for a remote store); ids
        the store does not know are remembered as absent until `end_batch`.

        With a shared store (`cache_ttl` set) a cached entry is asked for again once per
        `cache_ttl`, so another host's bindings and erasures show up; entries changed here
        and not yet committed are never replaced. When the store is unreachable the cache
        is all there is (the store counts `degraded`)."""
        ttl = self._ttl
        if ttl is not None:
            now = time.monotonic()
            if now >= self._fresh_until:
                self._fresh_until = now + ttl
                for fresh in self._fresh.values():
                    fresh.clear()
        # escape_device only where a `~` occurs (a device value almost never holds one).
        keys = map(escape_device, devices) if "~" in "".join(devices) else devices
        want_d = self._wanted("d", keys, self._devices, self._dirty_devices)
        want_n = self._wanted("n", named, self._named, self._dirty_named)
        want_s = self._wanted("s", sessions, self._sessions, self._dirty_sessions)
        if not (want_d or want_n or want_s):
            return
        found = self._store.load_batch(want_d, want_n, want_s)
        if found is None:
            # Unreachable: what is cached stays; the rest starts fresh (degraded resolution).
            absent = self._absent
            absent.update(("d", k) for k in want_d if k not in self._devices)
            absent.update(("n", k) for k in want_n if k not in self._named)
            absent.update(("s", k) for k in want_s if k not in self._sessions)
            return
        self._take("d", want_d, found.devices, self._devices, lambda d: d.device)
        self._take("n", want_n, found.named, self._named, lambda e: e.named)
        self._take("s", want_s, found.sessions, self._sessions, lambda x: x.session)

    def _wanted(
        self, kind: str, keys: Iterable[str], cache: Lru[str, V], dirty: dict[str, V]
    ) -> list[str]:
        if self._ttl is None:
            return [k for k in keys if k not in cache and k not in dirty]
        fresh = self._fresh[kind]
        return [k for k in keys if k not in fresh and k not in dirty]

    def _take(
        self,
        kind: str,
        want: list[str],
        found: list[V],
        cache: Lru[str, V],
        key_of: Callable[[V], str],
    ) -> None:
        for item in found:
            cache.put(key_of(item), item)
        missing = set(want) - {key_of(i) for i in found}
        if self._ttl is not None:
            self._fresh[kind].update(want)
            for k in missing:
                # Gone from the shared store (erased, or expired by forget_after): start fresh.
                cache.pop(k, None)
        self._absent.update((kind, k) for k in missing)

    def end_batch(self) -> None:
        self._absent.clear()

    def _device(self, device: str, ts: float) -> Device:
        dev = self._devices.get(device)
        if dev is not None:
            self._devices.move_to_end(device)
            return dev
        dev = self._dirty_devices.get(device)
        if dev is None and ("d", device) not in self._absent:
            dev = self._store.load_device(device)
        if dev is None:
            dev = Device(device, [Epoch(0, ts)], last_seen=ts)
            self.counts["devices_new"] += 1
            self._mark(dev)
        self._devices.put(device, dev)
        return dev

    def _named_entry(self, named: str) -> Named | None:
        entry = self._named.get(named)
        if entry is not None:
            self._named.move_to_end(named)
            return entry
        entry = self._dirty_named.get(named)
        if entry is None and ("n", named) not in self._absent:
            entry = self._store.load_named(named)
        if entry is not None:
            self._named.put(named, entry)
        return entry

    def _touch_named(self, named: str, ts: float) -> Named:
        entry = self._named_entry(named)
        if entry is None:
            entry = Named(named, first_seen=ts)
            self.counts["named_new"] += 1
            self._dirty_named[named] = entry
            self._named.put(named, entry)
        return entry

    def _session(self, session: str) -> Session:
        sess = self._sessions.get(session)
        if sess is not None:
            self._sessions.move_to_end(session)
            return sess
        sess = self._dirty_sessions.get(session)
        if sess is None and ("s", session) not in self._absent:
            found = self._store.load_sessions([session])
            sess = found[0] if found else None
        if sess is None:
            sess = Session(session)
            self.counts["sessions_new"] += 1
        self._sessions.put(session, sess)
        return sess

    def _mark(self, dev: Device) -> None:
        self._dirty_devices[dev.device] = dev

    def forget_cached(self) -> None:
        """Drop every cached identity (after the store collected or erased some): the next
        batch loads what it needs again, R7 changes included."""
        self._devices.clear()
        self._named.clear()
        self._sessions.clear()
        for fresh in self._fresh.values():
            fresh.clear()
        self._changes = self._store.load_changes()

    def requeue(self, changes: Changes) -> None:
        """A commit failed: what `take_changes` handed out is pending again (newer wins)."""
        for dev in changes.devices:
            self._dirty_devices.setdefault(dev.device, dev)
        for entry in changes.named:
            self._dirty_named.setdefault(entry.named, entry)
        for sess in changes.sessions:
            self._dirty_sessions.setdefault(sess.session, sess)
        self._new_aliases[:0] = changes.aliases

    def take_changes(self) -> Changes:
        """What changed since the last call; the caller commits it with the chunk."""
        changes = Changes(
            list(self._dirty_devices.values()),
            list(self._dirty_named.values()),
            list(self._dirty_sessions.values()),
            self._new_aliases,
        )
        self._dirty_devices = {}
        self._dirty_named = {}
        self._dirty_sessions = {}
        self._new_aliases = []
        return changes

    def __repr__(self) -> str:
        return (
            f"Resolver(devices_cached={len(self._devices)}, named_cached={len(self._named)}, "
            f"sessions_cached={len(self._sessions)})"
        )
