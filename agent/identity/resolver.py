"""The resolver: rules R1, R2, R4 (shared devices), R5, R6 and R7 of SPEC §1.2 over the graph.

Decisions use the record's own event time. The graph lives in an `IdentityStore`; the resolver
keeps a bounded LRU of devices and named ids in front of it, and the objects it changed since the
last `take_changes()` (those stay in memory until the pipeline commits them).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import NamedTuple

from agent.identity.graph import Device, Epoch, IdentityStore, Named, escape_device

_DAY = 86400.0


class Attribution(NamedTuple):
    """Who a record belongs to (SPEC §3.1): `anonymousId`, `userId`, and how it was decided."""

    anonymous_id: str | None
    user_id: str | None
    resolution: str  # named | device | derived
    contested: bool


class IdentityEvent(NamedTuple):
    """An `alias` to emit: `previous` (a device epoch, or R7's old id) -> `user`."""

    previous: str
    user: str
    slot: str


class Changes(NamedTuple):
    devices: list[Device]
    named: list[Named]
    aliases: list[tuple[str, str, float]]


class Resolver:
    """Resolve hits and logins to persons. Not thread-safe: the pipeline thread owns it."""

    def __init__(
        self,
        store: IdentityStore,
        *,
        max_named_per_device: int = 3,
        max_devices_per_named: int = 50,
        session_timeout: float = 1800.0,
        cache_size: int = 100_000,
    ) -> None:
        self._store = store
        self._max_named = max_named_per_device
        self._max_devices = max_devices_per_named
        self._session_timeout = session_timeout
        self._cache_size = cache_size
        self._devices: OrderedDict[str, Device] = OrderedDict()
        self._named: OrderedDict[str, Named] = OrderedDict()
        self._dirty_devices: dict[str, Device] = {}
        self._dirty_named: dict[str, Named] = {}
        self._new_aliases: list[tuple[str, str, float]] = []
        self._absent_devices: set[str] = set()
        self._absent_named: set[str] = set()
        #: conflicts, aliases, identity_cap, devices_new, named_new (for metrics and summaries).
        self.counts: Counter[str] = Counter()

    # -- hits ------------------------------------------------------------------------------

    def hit(
        self, ts: float, device: str | None, named: str | None, derived: Callable[[], str] | None
    ) -> tuple[Attribution, list[IdentityEvent]]:
        """Attribute one access hit (R1); a hit with a device and `km_ni` is also a login (R2).

        `device`/`named` are normalised values (None when absent or junk); `derived` builds the
        derived id when neither is usable (None when `cookieless: drop`).
        """
        if device is None:
            if named is not None:
                self._touch_named(named, ts)
                return Attribution(None, self._final(named, ts), "named", False), []
            if derived is None:
                return Attribution(None, None, "dropped", False), []
            return Attribution(derived(), None, "derived", False), []
        dev = self._device(escape_device(device), ts)
        events: list[IdentityEvent] = []
        if named is not None:
            events = self._login(dev, ts, named, via_cookie=True, explicit=False)
        elif dev.shared_since is not None and ts - dev.last_seen > self._session_timeout:
            dev.new_epoch(ts)  # R4: an idle gap on a shared device starts a new epoch
            self._mark(dev)
        if ts > dev.last_seen:
            dev.last_seen = ts
        epoch = dev.epoch_at(ts)
        eid = epoch.epoch_id(dev.device)
        shared = dev.shared_since is not None and ts >= dev.shared_since
        contested = epoch.contested or shared
        if named is not None:
            return Attribution(eid, self._final(named, ts), "named", contested), events
        if (
            epoch.named is not None
            and not shared
            and epoch.bound_at is not None
            and epoch.bound_at <= ts
        ):
            return Attribution(eid, self._final(epoch.named, ts), "named", contested), events
        return Attribution(eid, None, "device", contested), events

    # -- logins (R2) -----------------------------------------------------------------------

    def login(
        self, ts: float, named: str, device: str | None
    ) -> tuple[str | None, list[IdentityEvent]]:
        """An explicit login/signup (an `identify:` rule). Returns the epoch it binds and aliases."""
        self._touch_named(named, ts)
        if device is None:
            return None, []
        dev = self._device(escape_device(device), ts)
        events = self._login(dev, ts, named, via_cookie=False, explicit=True)
        if ts > dev.last_seen:
            dev.last_seen = ts
        epoch = dev.epoch_at(ts)
        return (epoch.epoch_id(dev.device) if epoch.named == named else None), events

    def _login(
        self, dev: Device, ts: float, named: str, *, via_cookie: bool, explicit: bool
    ) -> list[IdentityEvent]:
        self._touch_named(named, ts)
        self._note_named(dev, ts, named)
        epoch = dev.epoch_at(ts)
        shared = dev.shared_since is not None and ts >= dev.shared_since
        if shared and explicit and (epoch.named is not None or epoch.started < ts):
            # R4: on a shared device every login starts a new epoch.
            epoch = dev.new_epoch(ts, contested=True)
            self._mark(dev)
        if epoch.named is None:
            if not self._accept_device(named, dev.device):
                return []
            self._bind(dev, epoch, named, ts)
            if via_cookie:
                return []  # the browser library already sent it (R2: km_ni binds silently)
            return [self._alias(epoch.epoch_id(dev.device), named, ts)]
        if epoch.named == named:
            return []
        # R2 conflict (shared computer): never alias this epoch with a second person.
        self.counts["conflicts"] += 1
        if not self._accept_device(named, dev.device):
            return []
        fresh = dev.new_epoch(ts, contested=True)
        self._bind(dev, fresh, named, ts)
        return [self._alias(fresh.epoch_id(dev.device), named, ts)]

    def logout(self, ts: float, device: str) -> None:
        """R3: the device starts a new, unbound epoch at the logout's time."""
        dev = self._device(escape_device(device), ts)
        dev.new_epoch(ts)
        self._mark(dev)

    def _bind(self, dev: Device, epoch: Epoch, named: str, ts: float) -> None:
        epoch.named = named
        epoch.bound_at = ts
        self._mark(dev)

    def _alias(self, previous: str, user: str, ts: float) -> IdentityEvent:
        self._new_aliases.append((previous, user, ts))
        self.counts["aliases"] += 1
        return IdentityEvent(previous, user, f"alias:{previous}")

    def _note_named(self, dev: Device, ts: float, named: str) -> None:
        """R4: mark the device shared at the (max+1)-th distinct named id within 24h."""
        recent = dev.recent_named
        if recent and recent[-1][1] == named and ts >= recent[-1][0]:
            return
        recent.append((ts, named))
        recent[:] = [(t, n) for t, n in recent if ts - _DAY <= t <= ts + _DAY]
        if dev.shared_since is None and len({n for _, n in recent}) > self._max_named:
            dev.shared_since = ts
            self.counts["shared_devices"] += 1
        self._mark(dev)

    def _accept_device(self, named: str, device: str) -> bool:
        entry = self._named_entry(named)
        if entry is None or device in entry.devices:
            return True
        if len(entry.devices) >= self._max_devices:
            self.counts["identity_cap"] += 1
            return False
        entry.devices.append(device)
        self._dirty_named[named] = entry
        return True

    # -- R7 --------------------------------------------------------------------------------

    def identity_change(self, ts: float, old: str, new: str) -> list[IdentityEvent]:
        """R7: link two named identities explicitly; hits naming `old` then resolve to `new`."""
        if old == new:
            return []
        entry = self._touch_named(old, ts)
        self._touch_named(new, ts)
        entry.changed_to = new
        entry.changed_at = ts
        self._dirty_named[old] = entry
        self._new_aliases.append((old, new, ts))
        self.counts["aliases"] += 1
        return [IdentityEvent(old, new, "change")]

    def _final(self, named: str, ts: float) -> str:
        """Follow R7 changes in force at `ts` (bounded, so a cycle cannot hang the pipeline)."""
        current = named
        for _ in range(16):
            entry = self._named_entry(current)
            if (
                entry is None
                or entry.changed_to is None
                or entry.changed_at is None
                or entry.changed_at > ts
            ):
                return current
            current = entry.changed_to
        return current

    # -- cache and store -------------------------------------------------------------------

    def prefetch(self, devices: set[str], named: set[str]) -> None:
        """Load a batch's identities in one query each, so the hot loop never waits on a
        single-row lookup; ids the store does not know are remembered as absent for the batch."""
        want_d = [d for d in devices if d not in self._devices and d not in self._dirty_devices]
        if want_d:
            found = self._store.load_devices(want_d)
            for dev in found:
                self._cache_device(dev)
            self._absent_devices.update(set(want_d) - {d.device for d in found})
        want_n = [n for n in named if n not in self._named and n not in self._dirty_named]
        if want_n:
            found_n = self._store.load_named_many(want_n)
            for entry in found_n:
                self._cache_named(entry)
            self._absent_named.update(set(want_n) - {e.named for e in found_n})

    def end_batch(self) -> None:
        """Forget the batch's negative lookups (another writer may add them later)."""
        self._absent_devices.clear()
        self._absent_named.clear()

    def _cache_device(self, dev: Device) -> None:
        cache = self._devices
        cache[dev.device] = dev
        if len(cache) > self._cache_size:
            cache.popitem(last=False)

    def _cache_named(self, entry: Named) -> None:
        cache = self._named
        cache[entry.named] = entry
        if len(cache) > self._cache_size:
            cache.popitem(last=False)

    def _device(self, device: str, ts: float) -> Device:
        cache = self._devices
        dev = cache.get(device)
        if dev is not None:
            cache.move_to_end(device)
            return dev
        dev = self._dirty_devices.get(device)
        if dev is None and device not in self._absent_devices:
            dev = self._store.load_device(device)
        if dev is None:
            dev = Device(device, [Epoch(0, ts)], last_seen=ts)
            self.counts["devices_new"] += 1
            self._mark(dev)
        cache[device] = dev
        if len(cache) > self._cache_size:
            cache.popitem(last=False)
        return dev

    def _named_entry(self, named: str) -> Named | None:
        cache = self._named
        entry = cache.get(named)
        if entry is not None:
            cache.move_to_end(named)
            return entry
        entry = self._dirty_named.get(named)
        if entry is None and named not in self._absent_named:
            entry = self._store.load_named(named)
        if entry is not None:
            cache[named] = entry
            if len(cache) > self._cache_size:
                cache.popitem(last=False)
        return entry

    def _touch_named(self, named: str, ts: float) -> Named:
        entry = self._named_entry(named)
        if entry is None:
            entry = Named(named, first_seen=ts)
            self.counts["named_new"] += 1
            self._dirty_named[named] = entry
            self._named[named] = entry
            if len(self._named) > self._cache_size:
                self._named.popitem(last=False)
        return entry

    def _mark(self, dev: Device) -> None:
        self._dirty_devices[dev.device] = dev

    def take_changes(self) -> Changes:
        """What changed since the last call; the caller commits it with the chunk."""
        changes = Changes(
            list(self._dirty_devices.values()), list(self._dirty_named.values()), self._new_aliases
        )
        self._dirty_devices = {}
        self._dirty_named = {}
        self._new_aliases = []
        return changes

    def __repr__(self) -> str:
        return f"Resolver(devices_cached={len(self._devices)}, named_cached={len(self._named)})"
