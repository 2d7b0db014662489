"""The identity graph's data (SPEC §1.2): devices and their epochs, named identities, aliases.

A device `D` starts in epoch `D`; each new epoch is `D~1`, `D~2`, … An epoch is bound to at most one
named identity, once, at an event time; attribution looks the epoch up by the hit's own time (R6),
so late and backfilled hits resolve through the binding history.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Protocol


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

    def epoch_at(self, ts: float) -> Epoch:
        """The epoch in force at event time `ts` (the first one for times before it began)."""
        epochs = self.epochs
        if len(epochs) == 1 or ts >= epochs[-1].started:
            return epochs[-1]
        starts = [e.started for e in epochs]
        i = bisect.bisect_right(starts, ts) - 1
        return epochs[max(i, 0)]

    def new_epoch(self, ts: float, *, contested: bool = False) -> Epoch:
        epoch = Epoch(index=max(e.index for e in self.epochs) + 1, started=ts, contested=contested)
        self.epochs.append(epoch)
        self.epochs.sort(key=lambda e: (e.started, e.index))
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


class IdentityStore(Protocol):
    """Where the graph persists. Writes happen inside the pipeline's chunk transaction."""

    def load_device(self, device: str) -> Device | None: ...

    def load_named(self, named: str) -> Named | None: ...

    def load_devices(self, devices: list[str]) -> list[Device]:
        """Those of `devices` the store knows (one round trip for a batch)."""
        ...

    def load_named_many(self, named: list[str]) -> list[Named]:
        """Those of `named` the store knows (one round trip for a batch)."""
        ...

    def alias_sent(self, previous: str) -> str | None:
        """The userId an alias from `previous` was already sent to, if any."""
        ...

    def save(
        self, devices: list[Device], named: list[Named], aliases: list[tuple[str, str, float]]
    ) -> None:
        """Persist changed devices and named ids and newly sent aliases (caller's transaction)."""
        ...
