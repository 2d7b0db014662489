"""Identifier intake (SPEC §1.1): normalise a raw value, or discard it as junk (counted by kind).

Normalisation, in order: percent-decode once (only `%XX`; `+` stays; a malformed `%` stays), JSON-
decode a `"…"` literal, strip whitespace, reject control characters; lower-case email-like named
values when configured. Cookies repeat on every hit of a visitor, so results are cached (bounded).
"""

from __future__ import annotations

import json
import re
from collections import Counter

from agent.textcodec import percent_decode_once

JUNK_WORDS = frozenset(
    (
        *(
            "anonymous anon guest null nil none undefined true false nan n/a na unknown id user "
            "userid user_id email distinct_id distinctid not_authenticated test abc123 void {} [] "
            "<nil> 00000000-0000-0000-0000-000000000000 -1 0"
        ).split(),
        "[object object]",
    )
)
_ZEROS = re.compile(r"^[0-]*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
#: A value no step but the length, zeros and junk checks can change: no `%`, quote, space,
#: control character, `@` or non-ASCII (what cookie ids mostly are).
_PLAIN = re.compile(r"[A-Za-z0-9._~+\-]+").fullmatch
_CACHE_MAX = 50_000

KINDS = ("device", "named", "session")


class Normalizer:
    """Callable per kind: `normalizer.device(raw)` -> the identifier, or None when junk."""

    __slots__ = ("_blocklist", "_cache", "_lower_emails", "junk")

    def __init__(self, *, lowercase_emails: bool = True, blocklist: tuple[str, ...] = ()) -> None:
        self._lower_emails = lowercase_emails
        self._blocklist = frozenset(b.lower() for b in blocklist)
        self._cache: dict[str, dict[str, str | None]] = {kind: {} for kind in KINDS}
        # Values rendered by rule templates were decoded by their field already (`query.*`,
        # `cookie.*`) or were never encoded (app log fields): not percent-decoded again.
        self._cache.update({f"{kind}:decoded": {} for kind in KINDS})
        #: Junk values discarded, by kind (`trackd_identity_junk_total{kind}`); never the values.
        self.junk: Counter[str] = Counter()

    @property
    def junk_words(self) -> frozenset[str]:
        """The lower-case values discarded as junk: JUNK_WORDS and the configured blocklist."""
        return JUNK_WORDS | self._blocklist

    def device(self, raw: str) -> str | None:
        return self._get("device", raw)

    def named(self, raw: str) -> str | None:
        return self._get("named", raw)

    def session(self, raw: str) -> str | None:
        return self._get("session", raw)

    def value(self, kind: str, raw: str) -> str | None:
        """The normalised identifier of `kind` ("device", "named", "session"); junk counted."""
        return self._get(kind, raw)

    def rendered(self, kind: str, text: str) -> str | None:
        """Like `value`, for text a rule template rendered: SPEC §1.1's percent-decoding is not
        applied a second time (decoded exactly once)."""
        value = self.check(f"{kind}:decoded", text)
        if value is None:
            self.junk[kind] += 1
        return value

    def _get(self, kind: str, raw: str) -> str | None:
        value = self.check(kind, raw)
        if value is None:
            self.junk[kind] += 1
        return value

    def check(self, kind: str, raw: str) -> str | None:
        """Like `device`/`named`/`session`, without counting junk (the caller counts)."""
        cache = self._cache[kind]
        try:
            return cache[raw]
        except KeyError:
            base, _, decoded = kind.partition(":")
            value = self._normalize(base, raw, percent=not decoded)
            if len(cache) >= _CACHE_MAX:
                cache.clear()
            cache[raw] = value
            return value

    def _normalize(self, kind: str, raw: str, *, percent: bool = True) -> str | None:
        if _PLAIN(raw) is not None:
            # Decoding, unquoting, stripping and the control and email checks leave it as is.
            if len(raw) > 255 or (kind != "named" and len(raw) < 5) or _ZEROS.match(raw):
                return None
            folded = raw.lower()
            if folded in JUNK_WORDS or folded in self._blocklist:
                return None
            return raw
        return self.normalize_fully(kind, raw, percent=percent)

    def normalize_fully(self, kind: str, raw: str, *, percent: bool = True) -> str | None:
        """Every step of SPEC §1.1 intake, for any value (`_normalize` skips those that cannot
        change a plain one)."""
        value = percent_decode_once(raw) if percent else raw
        if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            try:
                decoded = json.loads(value)
            except ValueError:
                pass
            else:
                if isinstance(decoded, str):
                    value = decoded
        value = value.strip()
        if not value or _CONTROL.search(value) or "\ufffd" in value:
            return None
        if _ZEROS.match(value):
            return None
        if len(value) > 255 or (kind != "named" and len(value) < 5):
            return None
        folded = value.lower()
        if folded in JUNK_WORDS or folded.strip("\"'") in JUNK_WORDS or folded in self._blocklist:
            return None
        if kind == "named" and self._lower_emails and _EMAIL.match(value):
            return folded
        return value

    def __repr__(self) -> str:
        return (
            f"Normalizer(lowercase_emails={self._lower_emails}, blocklist={len(self._blocklist)})"
        )
