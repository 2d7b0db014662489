"""The sink seam: what every sink implements, and what a delivery attempt can end in.

Retry decisions are data (CONVENTIONS.md): a delivery ends `Delivered`, `Retry(reason)` (the
sender backs off and tries the same batch again) or `Reject(reason)` (dead letters).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Delivered:
    """The endpoint acknowledged the whole batch."""


@dataclass(frozen=True, slots=True)
class Retry:
    """Try the same batch again later (`after` seconds at the earliest, when the endpoint said)."""

    reason: str
    after: float | None = None


@dataclass(frozen=True, slots=True)
class Reject:
    """The endpoint refused these messages for good: they go to the dead-letter table."""

    reason: str


Outcome = Delivered | Retry | Reject


class Sink(Protocol):
    """A destination. `deliver` runs on the sender's thread; `committed` inside the transaction
    that removes the delivered batch from the outbox (the file sink records its length there)."""

    #: The `sink` label of metrics (`file`, `kissmetrics`, `segment`).
    name: str
    #: Largest batch the sender should hand over at once.
    max_batch: int
    #: The destination is its own outbox (SPEC §4, file sink): the pipeline delivers each chunk
    #: in its commit, and no sender runs.
    direct: bool

    def open(self, conn: sqlite3.Connection) -> None: ...

    def deliver(self, bodies: list[bytes]) -> Outcome: ...

    def committed(self, conn: sqlite3.Connection) -> None: ...

    def abort(self) -> None:
        """The transaction after `deliver` failed: undo what can be undone (a direct sink)."""
        ...

    def close(self) -> None: ...

    def describe(self) -> str:
        """Where messages go, for summaries and `check` (never a secret)."""
        ...
