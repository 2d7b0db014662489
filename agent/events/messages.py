"""Building and encoding messages in the exact shape of SPEC §3.1.

Key order is fixed (`type, messageId, timestamp, userId, anonymousId, previousId, event|name,
properties|traits, context`) and nothing depends on the wall clock, so the same input gives the same
bytes. Messages are encoded once, with orjson, when they are built.
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
