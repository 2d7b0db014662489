"""The Segment batch wire format (SPEC §4 `segment`): pure functions, no network, no database.

The contract:

- A request body is exactly
  `{"batch":[m1,m2,…],"sentAt":"…","context":{"library":{"name":"trackd","version":"…"}}}`
  with `,"writeKey":"…"` last when a write key travels in the body (bearer auth with a
  `write_key` too). The messages are the outbox's compact JSON bytes, joined with `,` and never
  parsed or re-encoded: a message is byte-identical in every request that carries it. Only the
  envelope's own pieces go through orjson.
- `sentAt` is fixed-width (`SENT_AT_LENGTH` characters, ISO 8601 UTC with milliseconds), so
  `SegmentEnvelope.overhead()` is a constant and a request's size is known before it is built:
  `overhead + sum(len(m)) + (n - 1)` commas. `split_requests` keeps every request within
  `MAX_REQUEST_BYTES` and `MAX_REQUEST_MESSAGES`; `oversized` names the messages over
  `MAX_MESSAGE_BYTES`, which the caller dead-letters `too_large` before splitting. The limits are
  on the uncompressed body, whatever `gzip` says.
- A 400 with `{"errors":[{"index":…,"messageId":…,"reason":…}]}` is read by `parse_errors`
  (None for anything else: a plain 400) and mapped onto the batch by `match_errors`; a 413 or a
  plain 400 is `bisect`ed and each half re-sent, until the single message that still fails is
  dead-lettered alone.

Nothing here raises on what an endpoint sends back; `ValueError` is only for a caller's mistake
(an unknown `auth`, a missing key, a `sentAt` of the wrong width).
"""

from __future__ import annotations

import base64
import math
import time
import zlib
from collections.abc import Sequence
from typing import Final, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import orjson

#: Most bytes of one message's compact JSON (larger: dead-lettered `too_large`).
MAX_MESSAGE_BYTES: Final = 32_000
#: Most bytes of one uncompressed request body, envelope included.
MAX_REQUEST_BYTES: Final = 500_000
#: Most messages in one request (`sink.batch.max_events` above it is a config error).
MAX_REQUEST_MESSAGES: Final = 2_500
#: Characters of a `sentAt` value, e.g. `2026-11-27T08:00:47.120Z`.
SENT_AT_LENGTH: Final = 24
#: zlib level for `gzip: true`. Level 1 encodes ~700-byte demo-like messages ~2.5x faster than
#: the default 6 (~300k vs ~120k messages/s on one core) for a body ~25% larger
#: (bench/segment_encode.py): CPU is what the agent is short of, not upload bandwidth.
GZIP_LEVEL: Final = 1
#: 400 bodies longer than this are not parsed (treated as a plain 400). 2,500 errors with
#: generous reasons fit well within it.
MAX_ERROR_BODY_BYTES: Final = 1_000_000
#: A `reason` from the endpoint is cut to this many characters before it reaches a dead letter.
MAX_REASON_CHARS: Final = 1_000

_BATCH_OPEN: Final = b'{"batch":['
_SENT_AT_KEY: Final = b'],"sentAt":'
_DEFAULT_PATH: Final = "/v1/batch"
_NO_REASON: Final = "rejected by the endpoint (no reason given)"


class SegmentEnvelope:
    """Builds request bodies around already-encoded messages.

    `write_key_in_body`: the `writeKey` body field (bearer auth with a write key), or None.
    `gzip`: whether `encode` compresses the body, at zlib level `gzip_level`."""

    __slots__ = (
        "_gzip",
        "_headers",
        "_level",
        "_overhead",
        "_tail",
        "version",
        "write_key_in_body",
    )

    def __init__(
        self,
        version: str,
        write_key_in_body: str | None,
        gzip: bool,
        *,
        gzip_level: int = GZIP_LEVEL,
    ) -> None:
        if not 0 <= gzip_level <= 9:
            raise ValueError(f"gzip_level must be 0..9, got {gzip_level}")
        self.version = version
        self.write_key_in_body = write_key_in_body
        self._gzip = gzip
        self._level = gzip_level
        tail = b',"context":' + orjson.dumps({"library": {"name": "trackd", "version": version}})
        if write_key_in_body is not None:
            tail += b',"writeKey":' + orjson.dumps(write_key_in_body)
        self._tail = tail + b"}"
        # The quotes of the sentAt string are part of the overhead too.
        self._overhead = len(_BATCH_OPEN) + len(_SENT_AT_KEY) + SENT_AT_LENGTH + 2 + len(self._tail)
        self._headers: dict[str, str] = {"Content-Type": "application/json"}
        if gzip:
            self._headers["Content-Encoding"] = "gzip"

    def __repr__(self) -> str:
        # Never the write key itself: reprs end up in logs.
        key = "set" if self.write_key_in_body is not None else "none"
        return (
            f"SegmentEnvelope(version={self.version!r}, write_key_in_body={key}, gzip={self._gzip})"
        )

    @property
    def gzip(self) -> bool:
        """Whether `encode` compresses the body."""
        return self._gzip

    def overhead(self) -> int:
        """Bytes of the body with an empty batch: a request of messages `ms` is
        `overhead() + sum(map(len, ms)) + len(ms) - 1` bytes (uncompressed)."""
        return self._overhead

    def body(self, messages: Sequence[bytes], sent_at: str) -> bytes:
        """The uncompressed body carrying `messages` verbatim; `sent_at` as made by `sent_at()`."""
        if len(sent_at) != SENT_AT_LENGTH:
            raise ValueError(
                f"sentAt {sent_at!r} is not {SENT_AT_LENGTH} characters; make it with sent_at()"
            )
        return b"".join(
            (_BATCH_OPEN, b",".join(messages), _SENT_AT_KEY, orjson.dumps(sent_at), self._tail)
        )

    def encode(self, messages: Sequence[bytes], sent_at: str) -> tuple[bytes, dict[str, str]]:
        """The bytes to send (gzip-compressed when `gzip` is on) and their content headers
        (`Content-Type`, plus `Content-Encoding: gzip`). The headers are a fresh dict."""
        raw = self.body(messages, sent_at)
        if self._gzip:
            # wbits=31: a gzip member (header with mtime 0, CRC-32 trailer), as `Content-Encoding:
            # gzip` names it; zlib.compress is the one-shot path without gzip.py's file machinery.
            raw = zlib.compress(raw, self._level, wbits=31)
        return raw, dict(self._headers)


def sent_at(now: float) -> str:
    """`now` (seconds since the epoch, wall clock) as `2026-11-27T08:00:47.120Z`: UTC,
    milliseconds truncated, always `SENT_AT_LENGTH` characters for years 1970 to 9999."""
    seconds, millis = divmod(math.floor(now * 1000), 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{millis:03d}Z"


def auth_headers(auth: str, write_key: str | None, token: str | None) -> dict[str, str]:
    """The `Authorization` header: `basic` → `Basic base64(write_key + ":")`, `bearer` →
    `Bearer token`. A missing credential or another `auth` is a `ValueError` (config should have
    caught it; the message never carries a secret)."""
    if auth == "basic":
        if not write_key:
            raise ValueError("sink.auth 'basic' needs sink.write_key")
        encoded = base64.b64encode(f"{write_key}:".encode()).decode("ascii")
        return {"Authorization": f"Basic {encoded}"}
    if auth == "bearer":
        if not token:
            raise ValueError("sink.auth 'bearer' needs sink.token")
        return {"Authorization": f"Bearer {token}"}
    raise ValueError(f"sink.auth: unknown auth {auth!r} (expected one of: basic, bearer)")


def user_agent(version: str) -> str:
    """The `User-Agent` header value."""
    return f"trackd/{version}"


def oversized(sizes: Sequence[int]) -> list[int]:
    """Indices of the messages over `MAX_MESSAGE_BYTES` (to dead-letter `too_large`)."""
    return [i for i, size in enumerate(sizes) if size > MAX_MESSAGE_BYTES]


def split_requests(
    sizes: Sequence[int],
    overhead: int,
    max_messages: int,
    *,
    max_bytes: int = MAX_REQUEST_BYTES,
) -> list[tuple[int, int]]:
    """Cut messages of body sizes `sizes` (in order) into consecutive `(start, end)` slices, each
    at most `max_bytes` (overhead + sizes + commas) and at most `max_messages` (itself capped at
    `MAX_REQUEST_MESSAGES`). Greedy: each request takes as many messages as fit. A message that
    does not fit even alone still forms its own request (oversized ones are screened earlier).
    No sizes: no requests."""
    if max_messages < 1:
        raise ValueError(f"max_messages must be at least 1, got {max_messages}")
    cap = min(max_messages, MAX_REQUEST_MESSAGES)
    slices: list[tuple[int, int]] = []
    start = 0
    total = 0
    for i, size in enumerate(sizes):
        if i > start and (i - start >= cap or total + 1 + size > max_bytes):
            slices.append((start, i))
            start = i
        total = overhead + size if i == start else total + 1 + size
    if start < len(sizes):
        slices.append((start, len(sizes)))
    return slices


def bisect(n: int) -> tuple[range, range]:
    """The two halves of a batch of `n` ≥ 2 messages (the first gets the smaller half)."""
    if n < 2:
        raise ValueError(f"a batch of {n} message(s) cannot be halved")
    middle = n // 2
    return range(middle), range(middle, n)


class BatchError(NamedTuple):
    """One entry of a Segment 400 body: where in the batch, which message, and why."""

    # The field shadows `tuple.index`, which mypy flags; the name is the one Segment's body uses
    # and the brief's, and nothing here calls tuple.index on a BatchError.
    index: int | None  # type: ignore[assignment]
    message_id: str | None
    reason: str


def parse_errors(body: bytes) -> list[BatchError] | None:
    """The entries of a 400 body `{"errors":[{"index":…,"messageId":…,"reason":…}, …]}`, or None
    for anything else (a plain 400, to bisect): not JSON, over `MAX_ERROR_BODY_BYTES`, no or an
    empty `errors` list, an entry that names neither an `index` nor a `messageId`, a field of the
    wrong type. A missing or null `reason` reads as a generic one. Never raises."""
    if len(body) > MAX_ERROR_BODY_BYTES:
        return None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    entries = doc.get("errors")
    if not isinstance(entries, list) or not entries:
        return None
    errors: list[BatchError] = []
    for entry in entries:
        if not isinstance(entry, dict):
            return None
        index = entry.get("index")
        message_id = entry.get("messageId")
        reason = entry.get("reason")
        # bool is an int to Python; `"index": true` is not a position.
        if index is not None and (not isinstance(index, int) or isinstance(index, bool)):
            return None
        if message_id is not None and not isinstance(message_id, str):
            return None
        if reason is not None and not isinstance(reason, str):
            return None
        if index is None and message_id is None:
            return None
        errors.append(BatchError(index, message_id, (reason or _NO_REASON)[:MAX_REASON_CHARS]))
    return errors


def match_errors(errors: Sequence[BatchError], message_ids: Sequence[str]) -> dict[int, str]:
    """Position in the batch → reason. An error is placed by its `index` when that is in range
    and, if it names a `messageId` too, the id there agrees; otherwise by its `messageId` (every
    position carrying that id). Errors that match nothing are left out; the first reason for a
    position wins. An empty result means the 400 named nothing we sent: treat it as plain."""
    positions: dict[str, list[int]] = {}
    for position, message_id in enumerate(message_ids):
        positions.setdefault(message_id, []).append(position)
    matched: dict[int, str] = {}
    for error in errors:
        index = error.index
        if (
            index is not None
            and 0 <= index < len(message_ids)
            and (error.message_id is None or message_ids[index] == error.message_id)
        ):
            matched.setdefault(index, error.reason)
        elif error.message_id is not None:
            for position in positions.get(error.message_id, ()):
                matched.setdefault(position, error.reason)
    return matched


def normalize_url(url: str) -> tuple[str, bool]:
    """The batch endpoint for `url`: one whose path is empty or `/` gets `/v1/batch` (query and
    fragment kept). Returns `(url, changed)`; `check` reports a change."""
    parts = urlsplit(url)
    if parts.path not in ("", "/"):
        return url, False
    return urlunsplit(parts._replace(path=_DEFAULT_PATH)), True
