"""Kissmetrics wire encoding: one Segment-shaped message in, one request out (SPEC §4).

Pure: no network, no database, no clock. The contract:

- ``page``/``track`` → ``/e?_k _p _n _t _d`` then properties; ``identify`` → ``/s?_k _p _t _d``
  then traits (sent also when there are none); ``alias`` → ``/a?_k _p _n`` (``_p`` = previousId,
  ``_n`` = userId), always ``GET``, no ``_t``. ``_p`` = userId when present, else anonymousId.
  ``_d=1`` on every ``/e`` and ``/s``.
- ``_t`` is chosen by the caller, which keeps the per-(person, event) second assignments in the
  state; `KmEncoder.stamp_key` gives the key it assigns by. ``t=None`` means the floor of the
  event second.
- A page is ``_n`` = the configured page event with ``Viewed URL`` (its ``url``, else path +
  search) and ``Referrer`` (omitted when empty or ``-``); its lower-case ``path``/``search``/
  ``url``/``referrer`` are not sent, every other property is.
- Names (event and property): ``,`` and ``:`` → space, cut to 255 characters. Property names
  starting with ``_`` (or cleaning to nothing) are dropped; of names equal case-insensitively after
  cleaning the first in sort order wins. Every drop is counted in `KmEncoder.properties_dropped`.
  Values: at most 8 KiB of UTF-8 (cut at a character boundary), nested objects flattened to dotted
  keys, lists joined with ``,`` (an object or list inside a list as compact JSON), booleans and
  numbers as JSON writes them, null and empty omitted. Properties are sorted by the UTF-8 bytes
  of their cleaned name.
- Identities (``_p``, and ``_n`` of ``/a``) are never cut: cutting could merge two people. One
  over 255 characters gives `KmTooLong` (reason ``too_long``), which the sink dead-letters; a
  message that cannot be encoded at all (no identity, unknown type, unreadable timestamp) gives
  `KmTooLong` with reason ``invalid``. Neither ever carries the identity itself.
- Every byte outside ``[A-Za-z0-9-._~]`` is ``%XX`` with uppercase hex (space is ``%20``, never
  ``+``). An ``/e`` or ``/s`` query over 2000 bytes becomes a ``POST`` to the same path whose body
  is exactly that query (``application/x-www-form-urlencoded``) and whose URL has no query.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import orjson

#: Longest name (event or property) Kissmetrics keeps, and longest identity trackd will send.
MAX_NAME_CHARS = 255
#: Longest property value, in UTF-8 bytes.
MAX_VALUE_BYTES = 8 * 1024
#: Longest ``/e`` or ``/s`` query sent in a URL; longer ones go as a POST body.
MAX_QUERY_BYTES = 2000

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"

_UNRESERVED = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
# One string per byte value: joining these is about twice as fast as urllib.parse.quote, which
# goes through a per-call wrapper and a dict-based quoter.
_BYTE_TEXT = [chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in range(256)]
_byte_text = _BYTE_TEXT.__getitem__

# The lower-case page fields of SPEC §3.1: Kissmetrics gets them as `Viewed URL` / `Referrer`
# instead, because a bare `URL` would overwrite the person's landing-page property.
_PAGE_FIELDS = frozenset(("path", "search", "url", "referrer"))

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)
# Bound on the per-encoder name cache; event and property names repeat, values do not.
_CACHE_MAX = 4096


def _utf8(s: str) -> bytes:
    try:
        return s.encode()
    except UnicodeEncodeError:
        # Lone surrogates cannot come out of orjson, but a caller's dict may hold them; send
        # U+FFFD as the parsers do rather than fail the whole message.
        return "".join(["\ufffd" if "\ud800" <= c <= "\udfff" else c for c in s]).encode()


def clean_name(name: str) -> str:
    """An event or property name as Kissmetrics receives it (SPEC §4): ``,`` and ``:`` become
    spaces, then the name is cut to 255 characters."""
    return name.replace(",", " ").replace(":", " ")[:MAX_NAME_CHARS]


def encode_component(s: str) -> str:
    """``s`` as UTF-8 with every byte outside ``[A-Za-z0-9-._~]`` as ``%XX`` (uppercase hex);
    identical to ``urllib.parse.quote(s, safe="")``."""
    b = _utf8(s)
    # rstrip by the unreserved set leaves nothing exactly when every byte is unreserved.
    if not b.rstrip(_UNRESERVED):
        return s
    return "".join(map(_byte_text, b))


def _cut_value(s: str) -> str:
    # 4 bytes is the longest UTF-8 character, so short strings skip the encode.
    if len(s) <= MAX_VALUE_BYTES // 4:
        return s
    b = _utf8(s)
    if len(b) <= MAX_VALUE_BYTES:
        return s
    # The input is valid UTF-8, so "ignore" drops only the character split by the cut.
    return b[:MAX_VALUE_BYTES].decode("utf-8", "ignore")


def _scalar(v: object) -> str | None:
    if isinstance(v, str):
        return v
    if v is None:
        return None
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        text = orjson.dumps(v).decode()
        # orjson writes NaN and infinities as null: there is no number to send.
        return None if text == "null" else text
    if isinstance(v, (dict, list, tuple)):
        try:
            return orjson.dumps(v).decode()
        except orjson.JSONEncodeError:
            # orjson refuses what JSON from a log cannot hold (ints past 64 bits, non-str keys);
            # a caller's dict might, and one odd value must not fail the message.
            return json.dumps(v, ensure_ascii=False, separators=(",", ":"), default=str)
    return str(v)


def _value(v: object) -> str | None:
    if isinstance(v, (list, tuple)):
        return ",".join([s for s in map(_scalar, v) if s is not None])
    return _scalar(v)


def _flatten(props: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, object]]:
    for key, v in props.items():
        name = prefix + str(key)
        if isinstance(v, Mapping):
            yield from _flatten(v, name + ".")
        else:
            yield name, v


def _event_second(message: Mapping[str, Any]) -> int | None:
    ts = message.get("timestamp")
    if not isinstance(ts, str):
        return None
    try:
        dt = datetime.fromisoformat(ts)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    # timedelta // timedelta floors, also before 1970 and without float rounding.
    return (dt - _EPOCH) // _SECOND


def _identity(message: Mapping[str, Any]) -> str | None:
    user = message.get("userId")
    if isinstance(user, str) and user:
        return user
    anon = message.get("anonymousId")
    if isinstance(anon, str) and anon:
        return anon
    return None


class KmRequest(NamedTuple):
    """One Kissmetrics request. ``query`` is the encoded query without ``?`` (``""`` for POST);
    ``body`` is ``b""`` for GET and the exact encoded string for POST."""

    method: str
    path: str
    query: str
    body: bytes

    @property
    def target(self) -> str:
        """The request target: ``path?query`` for GET, ``path`` for POST."""
        return f"{self.path}?{self.query}" if self.method == "GET" else self.path

    def __repr__(self) -> str:
        # The query and body carry the api key; a repr ends up in logs and test output.
        return (
            f"KmRequest(method={self.method!r}, path={self.path!r}, "
            f"query={_mask_key(self.query)!r}, body={_mask_key(self.body.decode())!r})"
        )


def _mask_key(encoded: str) -> str:
    if not encoded.startswith("_k="):
        return encoded
    end = encoded.find("&")
    return "_k=***" + ("" if end < 0 else encoded[end:])


class KmTooLong(NamedTuple):
    """A message that cannot become a request; the sink dead-letters it with ``reason``.
    ``reason`` is ``too_long`` (an identity over 255 characters) or ``invalid`` (nothing to
    encode); ``detail`` names the field and its length, never its value."""

    detail: str
    reason: str = "too_long"


def _invalid(detail: str) -> KmTooLong:
    return KmTooLong(detail, "invalid")


def _too_long(field: str, value: str) -> KmTooLong | None:
    if len(value) > MAX_NAME_CHARS:
        return KmTooLong(f"{field} is {len(value)} characters (at most {MAX_NAME_CHARS})")
    return None


class KmEncoder:
    """Turns messages into `KmRequest`s for one api key.

    ``properties_dropped`` counts every property dropped by an `encode` call (an ``_`` name, a
    name that cleans to nothing, a case-insensitive collision): the source of
    ``trackd_km_properties_dropped_total``.
    """

    __slots__ = ("_names", "_page_enc", "_page_event", "_page_key", "_prefix", "properties_dropped")

    def __init__(self, api_key: str, page_event: str = "Viewed Page") -> None:
        # Only the encoded prefix is kept, so the key itself is not an attribute to leak.
        self._prefix = f"_k={encode_component(api_key)}&_p="
        self._page_event = page_event
        cleaned = clean_name(page_event)
        self._page_enc = encode_component(cleaned)
        self._page_key = cleaned.lower()
        # raw event/property name -> (encoded cleaned name, cleaned name lower-cased)
        self._names: dict[str, tuple[str, str]] = {}
        self.properties_dropped = 0

    def __repr__(self) -> str:
        return (
            f"KmEncoder(page_event={self._page_event!r}, "
            f"properties_dropped={self.properties_dropped})"
        )

    def _name(self, cleaned: str) -> tuple[str, str]:
        hit = self._names.get(cleaned)
        if hit is None:
            if len(self._names) >= _CACHE_MAX:
                self._names.clear()
            hit = self._names[cleaned] = (encode_component(cleaned), cleaned.lower())
        return hit

    def stamp_key(self, message: dict[str, Any]) -> tuple[str, str, int] | None:
        """The ``(_p, clean(_n) lower-cased, event second)`` that ``_t`` is assigned by (``/s``
        for identify, the page event for a page); None for an alias (no ``_t``) and for a
        message `encode` would refuse as invalid."""
        kind = message.get("type")
        if kind == "track":
            event = message.get("event")
            if not isinstance(event, str) or not event:
                return None
            name = self._name(clean_name(event))[1]
        elif kind == "page":
            name = self._page_key
        elif kind == "identify":
            name = "/s"
        else:
            return None
        person = _identity(message)
        second = _event_second(message)
        if person is None or second is None:
            return None
        return person, name, second

    def encode(self, message: dict[str, Any], t: int | None) -> KmRequest | KmTooLong:
        """The request for ``message`` with ``_t`` = ``t`` (None: the floor of its event second),
        or why there is none."""
        kind = message.get("type")
        if kind == "alias":
            return self._alias(message)
        if kind not in ("track", "page", "identify"):
            return _invalid(f"type {str(kind)[:20]!r} has no Kissmetrics request")
        person = _identity(message)
        if person is None:
            return _invalid("_p: neither userId nor anonymousId")
        refused = _too_long("_p", person)
        if refused is not None:
            return refused
        if t is None:
            t = _event_second(message)
            if t is None:
                return _invalid("_t: timestamp missing or not ISO 8601")

        if kind == "identify":
            path = "/s"
            head = f"{self._prefix}{encode_component(person)}&_t={t}&_d=1"
            traits = message.get("traits")
            pairs = self._properties(traits if isinstance(traits, Mapping) else {}, ())
        else:
            path = "/e"
            props = message.get("properties")
            if not isinstance(props, Mapping):
                props = {}
            if kind == "page":
                event_enc = self._page_enc
                pairs = self._properties(
                    {k: v for k, v in props.items() if k not in _PAGE_FIELDS}, _page_extra(props)
                )
            else:
                event = message.get("event")
                if not isinstance(event, str) or not clean_name(event):
                    return _invalid("_n: track without an event name")
                event_enc = self._name(clean_name(event))[0]
                pairs = self._properties(props, ())
            head = f"{self._prefix}{encode_component(person)}&_n={event_enc}&_t={t}&_d=1"

        query = f"{head}&{pairs}" if pairs else head
        # The query is all ASCII, so its length in characters is its length in bytes.
        if len(query) > MAX_QUERY_BYTES:
            return KmRequest("POST", path, "", query.encode("ascii"))
        return KmRequest("GET", path, query, b"")

    def encode_body(self, body: bytes, t: int | None) -> KmRequest | KmTooLong:
        """`encode` for a message still in its JSON bytes (an outbox row)."""
        try:
            message = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _invalid("message is not JSON")
        if not isinstance(message, dict):
            return _invalid("message is not a JSON object")
        return self.encode(message, t)

    def _alias(self, message: Mapping[str, Any]) -> KmRequest | KmTooLong:
        previous = message.get("previousId")
        user = message.get("userId")
        if not isinstance(previous, str) or not previous:
            return _invalid("_p: alias without previousId")
        if not isinstance(user, str) or not user:
            return _invalid("_n: alias without userId")
        refused = _too_long("_p (previousId)", previous) or _too_long("_n (userId)", user)
        if refused is not None:
            return refused
        # Always GET, however long: an alias carries two identities and nothing that can grow.
        query = f"{self._prefix}{encode_component(previous)}&_n={encode_component(user)}"
        return KmRequest("GET", "/a", query, b"")

    def _properties(self, props: Mapping[str, Any], first: tuple[tuple[str, str], ...]) -> str:
        # (cleaned name, rank, raw name, value): rank 0 puts the page's own `Viewed URL` and
        # `Referrer` ahead of a rule property that cleans to exactly the same name.
        rows: list[tuple[str, int, str, str]] = []
        dropped = 0
        for rank, source in ((0, iter(first)), (1, _flatten(props))):
            for raw, v in source:
                value = _value(v)
                if not value:
                    continue
                name = clean_name(raw)
                if not name or name[0] == "_":
                    dropped += 1
                    continue
                rows.append((name, rank, raw, _cut_value(value)))
        if not rows:
            self.properties_dropped += dropped
            return ""
        # Python orders str by code point, which is the UTF-8 byte order (surrogates aside).
        rows.sort()
        seen: set[str] = set()
        parts: list[str] = []
        for name, _rank, _raw, value in rows:
            encoded, key = self._name(name)
            if key in seen:
                dropped += 1
                continue
            seen.add(key)
            parts.append(f"{encoded}={encode_component(value)}")
        self.properties_dropped += dropped
        return "&".join(parts)


def _page_extra(props: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    url = props.get("url")
    if not url:
        url = f"{props.get('path') or ''}{props.get('search') or ''}"
    viewed = _value(url)
    referrer = _value(props.get("referrer"))
    extra: list[tuple[str, str]] = []
    if viewed:
        extra.append(("Viewed URL", viewed))
    if referrer and referrer != "-":
        extra.append(("Referrer", referrer))
    return tuple(extra)
