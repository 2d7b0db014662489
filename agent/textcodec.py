"""Text decoding shared by stages (parsing and identity intake decode values the same way)."""

from __future__ import annotations

import re

_PERCENT = re.compile(rb"%([0-9A-Fa-f]{2})")


def percent_decode_once(value: str) -> str:
    """RFC 3986 percent-decoding of `%XX` only, applied once (`+` stays, a malformed `%` stays);
    invalid UTF-8 becomes U+FFFD."""
    if "%" not in value:
        return value
    raw = value.encode("utf-8", "surrogateescape")
    decoded = _PERCENT.sub(lambda m: bytes((int(m.group(1), 16),)), raw)
    return decoded.decode("utf-8", "replace")
