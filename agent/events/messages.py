"""Building and encoding messages in the exact shape of SPEC §3.1.

Key order is fixed (`type, messageId, timestamp, userId, anonymousId, previousId, event|name,
properties|traits, context`) and nothing depends on the wall clock, so the same input gives the same
bytes. The dict builders (`page_message`, ...) + `encode` are the reference; the pipeline
assembles the same bytes from parts encoded once (`message_bytes`, `context_bytes`: no dict is
built per message), which tests/events/test_messages.py proves identical.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import orjson

_TS_CACHE_MAX = 4096


class Timestamps:
    """Event time -> `2026-11-28T13:10:42.123Z` (UTC, milliseconds); the date is formatted once
    per day, the time of day by arithmetic."""

    __slots__ = ("_days", "_last")

    def __init__(self) -> None:
        self._days: dict[int, str] = {}
        #: The previous second and its text: consecutive records mostly share a second.
        self._last: tuple[int, str] = (-1, "")

    def __call__(self, ts: float) -> str:
        second = int(ts // 1)
        millis = round((ts - second) * 1000)
        if millis >= 1000:
            second += 1
            millis -= 1000
        last_second, head = self._last
        if second == last_second:
            return f"{head}.{millis:03d}Z"
        day, rest = divmod(second, 86400)
        date = self._days.get(day)
        if date is None:
            date = time.strftime("%Y-%m-%d", time.gmtime(day * 86400))
            if len(self._days) >= _TS_CACHE_MAX:
                self._days.clear()
            self._days[day] = date
        hours, rest = divmod(rest, 3600)
        minutes, seconds = divmod(rest, 60)
        head = f"{date}T{hours:02d}:{minutes:02d}:{seconds:02d}"
        self._last = (second, head)
        return f"{head}.{millis:03d}Z"


class NamedOut:
    """How a named identity is sent: as is, or `sha256(secret + id)` (`privacy.hash_named`)."""

    __slots__ = ("_cache", "_secret")

    def __init__(self, secret: bytes | None) -> None:
        self._secret = secret
        self._cache: dict[str, str] = {}

    def __call__(self, named: str) -> str:
        if self._secret is None:
            return named
        hit = self._cache.get(named)
        if hit is None:
            hit = hashlib.sha256(
                self._secret + named.encode("utf-8", "surrogateescape")
            ).hexdigest()
            if len(self._cache) >= 100_000:
                self._cache.clear()
            self._cache[named] = hit
        return hit


def encode(message: dict[str, Any]) -> bytes:
    """Compact JSON, keys in insertion order (which the builders fix)."""
    return orjson.dumps(message)


def page_message(
    message_id: str,
    timestamp: str,
    user_id: str | None,
    anonymous_id: str | None,
    name: str | None,
    page: dict[str, str],
    context: dict[str, Any],
) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": "page", "messageId": message_id, "timestamp": timestamp}
    if user_id is not None:
        msg["userId"] = user_id
    if anonymous_id is not None:
        msg["anonymousId"] = anonymous_id
    if name is not None:
        msg["name"] = name
    msg["properties"] = page
    msg["context"] = context
    return msg


def track_message(
    message_id: str,
    timestamp: str,
    user_id: str | None,
    anonymous_id: str | None,
    event: str,
    properties: dict[str, Any],
    context: dict[str, Any],
) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": "track", "messageId": message_id, "timestamp": timestamp}
    if user_id is not None:
        msg["userId"] = user_id
    if anonymous_id is not None:
        msg["anonymousId"] = anonymous_id
    msg["event"] = event
    msg["properties"] = properties
    msg["context"] = context
    return msg


def identify_message(
    message_id: str,
    timestamp: str,
    user_id: str,
    anonymous_id: str | None,
    traits: dict[str, Any],
    context: dict[str, Any],
) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "type": "identify",
        "messageId": message_id,
        "timestamp": timestamp,
        "userId": user_id,
    }
    if anonymous_id is not None:
        msg["anonymousId"] = anonymous_id
    msg["traits"] = traits
    msg["context"] = context
    return msg


def alias_message(
    message_id: str, timestamp: str, user_id: str, previous_id: str, context: dict[str, Any]
) -> dict[str, Any]:
    return {
        "type": "alias",
        "messageId": message_id,
        "timestamp": timestamp,
        "userId": user_id,
        "previousId": previous_id,
        "context": context,
    }


# -- the same messages, assembled from encoded parts -----------------------------------------
#
# The hot path does not build dicts to dump them: a record's page properties and the identity-
# independent head of its context are encoded when it is prepared (`context_head`), and a
# message is those bytes with the resolved identity spliced in. Every value goes through the
# same `orjson.dumps` as `encode`, so the bytes are identical (tests/events/test_messages.py
# proves it against the dict builders above, which stay the reference).

_dumps = orjson.dumps
_TRUE_FALSE = (b"false", b"true")


def context_head(ip: str | None, user_agent: str) -> bytes:
    """The identity-independent head of `context` before `page` (ip, userAgent), each part with
    a trailing comma, for `context_bytes`."""
    parts = []
    if ip is not None:
        parts.append(b'"ip":' + _dumps(ip) + b",")
    if user_agent:
        parts.append(b'"userAgent":' + _dumps(user_agent) + b",")
    return b"".join(parts)


def source_head(source: str, file: str) -> bytes:
    """`"source":{"name":…,"file":…,"offset":` for `context_bytes` (one per file)."""
    return b'"source":{"name":' + _dumps(source) + b',"file":' + _dumps(file) + b',"offset":'


def context_bytes(
    head: bytes,
    page: bytes | None,
    resolution: str,
    contested: bool,
    source: bytes,
    offset: int,
) -> bytes:
    """`context` encoded: `head` (`context_head`), the encoded `page` properties (access
    records), identity, then source (`source_head`) with `offset`."""
    return b'{%b%b"identity":{"resolution":%b,"contested":%b},%b%d}}' % (
        head,
        b"" if page is None else b'"page":%b,' % page,
        _dumps(resolution),
        _TRUE_FALSE[contested],
        source,
        offset,
    )


def message_bytes(
    kind: str,
    message_id: str,
    timestamp: str,
    user_id: str | None,
    anonymous_id: str | None,
    fields: bytes,
    context: bytes,
) -> bytes:
    """A message of `kind` from encoded parts: what the dict builders give, encoded. `fields`
    are the keys between the ids and `context` (`page_fields`, `track_fields`, ...)."""
    ids = b"" if user_id is None else b',"userId":' + _dumps(user_id)
    if anonymous_id is not None:
        ids += b',"anonymousId":' + _dumps(anonymous_id)
    return b'{"type":%b,"messageId":%b,"timestamp":%b%b%b,"context":%b}' % (
        _dumps(kind),
        _dumps(message_id),
        _dumps(timestamp),
        ids,
        fields,
        context,
    )


def page_fields(name: str | None, page: bytes) -> bytes:
    """A page's `name` (when a rule named it) and `properties` (encoded)."""
    if name is None:
        return b',"properties":' + page
    return b',"name":' + _dumps(name) + b',"properties":' + page


def track_fields(event: str, properties: dict[str, Any]) -> bytes:
    return b',"event":' + _dumps(event) + b',"properties":' + _dumps(properties)


def identify_fields(traits: dict[str, Any]) -> bytes:
    return b',"traits":' + _dumps(traits)


def alias_fields(previous_id: str) -> bytes:
    """An alias's `previousId` (its `userId` is the message's user; it has no anonymousId)."""
    return b',"previousId":' + _dumps(previous_id)
