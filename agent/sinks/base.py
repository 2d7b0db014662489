"""The sink seam: the two kinds of destination, and what delivering a message can end in.

Two kinds, told apart by type, never by a flag:

- A `DirectSink` is its own outbox (SPEC §4, the file sink): the pipeline hands it each chunk's
  messages inside the chunk's commit, and no sender runs.
- An `HttpSink` is fed by the `Sender` from the outbox table: the sender batches rows, keeps
  `sink.concurrency` requests in flight, and applies one `Outcome` per message.

Retry decisions are data (CONVENTIONS.md): every message of a request ends in exactly one of

    Delivered           the endpoint acknowledged it: its row leaves the outbox
    Retry(reason)       transient (connect, timeout, reset, 408, 429, 460, 5xx but 501/505): sent
                        again after a capped, jittered backoff, until `sink.retry.max_age`
    Pause(reason)       the sink itself is refused (401/403/404, other 3xx, TLS): every request
                        of the sink waits and is retried with backoff; nothing is dead-lettered
    Reject(reason)      refused for good (other 4xx, too large, an identity too long): the
                        message goes to the dead-letter table with the reason

A `Retry` or `Pause` with `after` (a `Retry-After`) holds every request of the sink until then.
The `reason` of Retry and Pause is a `trackd_send_failures_total` label (SPEC §7).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias

from agent.records import OutboxRow

if TYPE_CHECKING:
    from agent.state.sinkfile import SinkFileRecord

#: `trackd_send_failures_total{reason}` values (SPEC §7).
FailureReason: TypeAlias = Literal[
    "connect", "timeout", "reset", "tls", "http_3xx", "http_429", "http_4xx", "http_5xx"
]
FAILURE_REASONS: tuple[FailureReason, ...] = (
    "connect",
    "timeout",
    "reset",
    "tls",
    "http_3xx",
    "http_429",
    "http_4xx",
    "http_5xx",
)


@dataclass(frozen=True, slots=True)
class Delivered:
    """The endpoint acknowledged the message."""


@dataclass(frozen=True, slots=True)
class Retry:
    """Send the message again later. `after`: the endpoint's `Retry-After`, in seconds (it holds
    every request of the sink, not only this one)."""

    reason: FailureReason
    detail: str = ""
    after: float | None = None


@dataclass(frozen=True, slots=True)
class Pause:
    """The sink is refused as a whole (a wrong key, a wrong URL, TLS): wait and retry with
    backoff; never dead-letter (a wrong key must not empty the outbox into dead letters)."""

    reason: FailureReason
    detail: str = ""
    after: float | None = None


@dataclass(frozen=True, slots=True)
class Reject:
    """Refused for good: the message goes to the dead letters with `reason` (e.g. `http_400`,
    `too_large`, `too_long`, `expired`) and `detail` (the endpoint's words, never a secret)."""

    reason: str
    detail: str = ""


Outcome: TypeAlias = Delivered | Retry | Pause | Reject

DELIVERED = Delivered()


#: One outbox row as the sender hands it to an `HttpSink` (id, body, stamp, attempts, …).
OutboxMessage: TypeAlias = OutboxRow


class HttpSink(Protocol):
    """A remote endpoint fed from the outbox by the `Sender`.

    `send` carries one request's messages and returns one outcome per message, in order; it never
    raises for anything the endpoint or the network does (those are outcomes). It holds no
    database connection: the sender owns the outbox."""

    #: The `sink` label of metrics (`kissmetrics`, `segment`).
    name: str
    #: Most messages one request may carry (Kissmetrics: 1; Segment: `batch.max_events`).
    max_request_messages: int
    #: Most bytes of message bodies one request may carry (None: no limit).
    max_request_bytes: int | None

    def describe(self) -> str:
        """Where messages go, for summaries and `check` (never a secret)."""
        ...

    async def send(self, batch: Sequence[OutboxMessage], retry: int) -> Sequence[Outcome]:
        """Deliver `batch` in one request (or, for a sink that sends one request per message,
        in `len(batch)` requests); `retry` is the highest attempt count in it (`X-Retry-Count`)."""
        ...

    async def aclose(self) -> None: ...


class Stamper(Protocol):
    """Assigns a sink's own field to each message when its outbox row is written (Kissmetrics'
    `_t`, SPEC §4), so a re-sent message carries the same value. Runs on the pipeline thread:
    `stamp` before the chunk's transaction (tentatively), `save` inside it (its SQL lives in
    `agent/state/`), then `committed` or `rolled_back`."""

    def load(self, conn: sqlite3.Connection) -> None:
        """Read the assignments still in force (at start, before the first chunk)."""
        ...

    def stamp(self, bodies: Sequence[bytes]) -> list[int | None]: ...

    def save(self, conn: sqlite3.Connection) -> None:
        """Write the tentative assignments (inside the chunk's transaction)."""
        ...

    def committed(self) -> None: ...

    def rolled_back(self) -> None: ...


class DirectSink(Protocol):
    """A destination that is its own outbox (SPEC §4, the file sink). The pipeline `write`s a
    chunk's messages before the chunk's transaction, saves `pending_record()` inside it, then
    calls `committed()`; if the transaction fails, `abort()` takes the bytes back."""

    name: str

    def describe(self) -> str: ...

    def open(self, recorded: SinkFileRecord | None) -> SinkFileRecord | None:
        """Open, cutting bytes past the `recorded` length; the record to save (None: nothing)."""
        ...

    def write(self, bodies: list[bytes]) -> None: ...

    def pending_record(self) -> SinkFileRecord | None: ...

    def committed(self) -> None: ...

    def abort(self) -> None: ...

    def close(self) -> None: ...


#: What `sink:` builds: one of the two kinds.
AnySink: TypeAlias = DirectSink | HttpSink
