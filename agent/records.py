"""The record types that cross stage boundaries. Stages share these and nothing else.

They are NamedTuples: immutable, slotted, and cheap to build — a record is made per log line, and
at 250k lines/s a line has 4 µs in all (CONVENTIONS.md, "The hot path").
"""

from __future__ import annotations

from typing import Any, NamedTuple, TypeAlias

#: Unix time in seconds (UTC), possibly fractional.
EpochSeconds: TypeAlias = float


class AccessRecord(NamedTuple):
    """One parsed web-server access log line (SPEC §2: the fields every access record offers)."""

    ts: EpochSeconds
    #: Width of the time's precision interval: 1.0 for whole seconds, 0.001 for `$msec`.
    precision: float
    ip: str
    method: str
    #: The request target as logged: path plus `?query`, or an absolute URL.
    target: str
    protocol: str
    status: int
    bytes: int
    referrer: str
    user_agent: str
    #: The raw Cookie request header, or "" when the log has none.
    cookie_header: str
    #: Cookies the log format captured one by one (`$cookie_NAME`, `%{NAME}C`), or None.
    cookies: dict[str, str] | None
    host: str
    request_time: float | None
    forwarded_for: str
    #: Any other fields the format captured (nginx variables, Apache directives), or None.
    extra: dict[str, str] | None


class AppRecord(NamedTuple):
    """One parsed application log entry (SPEC §2: app records offer their own keys)."""

    ts: EpochSeconds
    #: Width of the time's precision interval (1.0 whole seconds, 0.001 milliseconds, ...).
    precision: float
    #: The entry's keys and values; nested JSON stays nested (rules reach in with dotted names).
    fields: dict[str, Any]


class Continuation:
    """Marks a line that continues the previous entry (a traceback line, an indented detail).

    Such lines belong to the entry before them: they produce no record and are not parse errors.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "CONTINUATION"


#: The one Continuation value parsers return.
CONTINUATION = Continuation()


class FileRef(NamedTuple):
    """A file as the pipeline knows it: its state row, source, and the ids its messages use."""

    file_id: int
    source: str
    #: The path where the file was first seen (SPEC §3.1 `context.source.file`).
    path: str
    #: hex(SHA-256 of the first line, at most 1 KiB) — the `fp` of messageIds (SPEC §3.4).
    line_fp: str


class OutboxRow(NamedTuple):
    """One outbox row (SPEC §5.2): what the sender reads and a sink sends. Field order is the
    table's, so rows are built straight from the query."""

    #: The row id: what acknowledges the message.
    id: int
    #: The message, compact JSON (SPEC §3.1), exactly as committed.
    body: bytes
    #: The sink-assigned field written with the row (Kissmetrics' `_t`), or None.
    stamp: int | None
    #: Delivery attempts made so far (0 on the first send).
    attempts: int
    #: Wall time of the first failed attempt (the start of `sink.retry.max_age`), or None.
    first_attempt: float | None = None
    #: Wall time the row was committed.
    enqueued: float = 0.0


class Chunk:
    """SPEC §5.2's unit: what one state transaction commits — the messages made since the last
    commit, how far each file's lines are done, and the R6 watermarks they moved. (The identity
    changes of the same transaction are the resolver's; the pipeline takes them at commit.)

    Stages append; the pipeline commits it whole and starts a new one. Nothing in it is applied
    to a file's in-memory position until the transaction committed."""

    __slots__ = ("advanced", "messages", "records", "watermarks")

    def __init__(self) -> None:
        #: Encoded messages (SPEC §3.1), in emission order.
        self.messages: list[bytes] = []
        #: file id -> (offset every line before which is done, up to 64 bytes just before it).
        self.advanced: dict[int, tuple[int, bytes]] = {}
        #: source -> newest event time read (only the sources this chunk moved).
        self.watermarks: dict[str, float] = {}
        #: Records resolved into this chunk (the commit cadence).
        self.records = 0

    def advance(self, file_id: int, end: int, before: bytes) -> None:
        """Every line of the file before `end` is done (emitted, or produced nothing)."""
        prev = self.advanced.get(file_id)
        if prev is None or end > prev[0]:
            self.advanced[file_id] = (end, before)

    def __bool__(self) -> bool:
        return bool(self.messages or self.advanced or self.watermarks)

    def __repr__(self) -> str:
        return (
            f"Chunk(messages={len(self.messages)}, files={len(self.advanced)}, "
            f"records={self.records})"
        )
