"""The `json` access format: one JSON object per line (SPEC §2), e.g. nginx `escape=json`
formats, Caddy, Traefik, or an application's own access log.

`fields:` maps our field names (`regexfmt.OUR_FIELDS`, `cookie.NAME`) to the document's keys;
dotted keys reach into nested objects (`user_agent: request.headers.User-Agent`). The SPEC's
example writes ours first (`{user_agent: ua}`); the reverse (`{ua: user_agent}`) is accepted when
only the value is one of our names. Fields without a mapping are found by name: our names and
nginx variable names (`remote_addr`, `http_user_agent`, …) at the top level. The time comes from
`time_field` (dotted), else a `time` mapping, else the usual keys (`regexfmt.TIME_NAMES`), read
by `time_format` (auto when not given: ISO 8601, CLF, or an epoch in s/ms/µs/ns by magnitude).

Header values given as lists (Caddy logs `{"User-Agent": ["…"]}`) read as their first item, a
Cookie list joined by `; `, an X-Forwarded-For list by `, `. The keys a record does not use
become extras: nested objects flattened to dotted names, values as text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from agent.parse.fields import to_float, to_int
from agent.parse.layout import FormatError
from agent.parse.regexfmt import OUR_FIELDS, TIME_NAMES, feed_of, time_parser
from agent.parse.request import split_request
from agent.records import AccessRecord

_PLANS_MAX = 64
_JOIN = {"cookie": "; ", "forwarded_for": ", "}
Path = tuple[str, ...]
#: A plan: (record field, key path, list joiner) per field, the time's key path, the top-level
#: keys those use, and whether any cookie.NAME is mapped.
Plan = tuple[list[tuple[str, Path, str | None]], Path | None, frozenset[str], bool]


def orient(fields: Mapping[str, str] | None) -> dict[str, str]:
    """`fields:` as {record field: dotted document key}; FormatError naming a bad entry."""
    out: dict[str, str] = {}
    for key, value in (fields or {}).items():
        ours, doc = key, value
        if not _ours(key):
            if isinstance(value, str) and _ours(value):
                ours, doc = value, key
            else:
                raise FormatError(
                    f"{key!r} is not a trackd field (fields: maps ours to the document's keys; "
                    f"ours are {', '.join(OUR_FIELDS)} and cookie.NAME)",
                    key=f"fields.{key}",
                )
        if not isinstance(doc, str) or not doc:
            raise FormatError("expected a document key (dotted for nested keys)", f"fields.{key}")
        feed = feed_of(ours)
        assert feed is not None  # checked above
        out[feed[0]] = doc
    return out


def _ours(name: str) -> bool:
    return name in OUR_FIELDS or (name.startswith("cookie.") and len(name) > 7)


class JsonAccessParser:
    """Callable: a JSON access line in, an AccessRecord (or None) out."""

    __slots__ = ("_mapped", "_plans", "_time", "_time_field")

    def __init__(
        self,
        fields: Mapping[str, str] | None,
        time_field: str | None,
        time_format: str | None,
        timezone: str = "UTC",
    ) -> None:
        self._mapped = orient(fields)
        self._time_field = time_field or self._mapped.pop("ts", None)
        self._time = time_parser(time_format, timezone)
        # Logs keep one key set: the lookup plan is worked out once per set of top-level keys.
        self._plans: dict[tuple[str, ...], Plan] = {}

    def _doc(self, line: str) -> dict[str, Any] | None:
        if not line.lstrip().startswith("{"):
            return None
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            return None
        return doc if isinstance(doc, dict) else None

    def _plan(self, doc: dict[str, Any]) -> Plan:
        keys = tuple(doc)
        plan = self._plans.get(keys)
        if plan is not None:
            return plan
        where = dict(self._mapped)
        ranks: dict[str, int] = {}
        for key in keys:
            feed = feed_of(key)
            if feed is None or feed[0] in ("ts", *self._mapped) or isinstance(doc[key], dict):
                continue
            if feed[0] not in where or feed[1] < ranks.get(feed[0], 99):
                where[feed[0]], ranks[feed[0]] = key, feed[1]
        when = self._time_field or next((k for k in TIME_NAMES if k in doc), None)
        steps = [(name, _path(doc, key), _JOIN.get(name)) for name, key in where.items()]
        time_path = None if when is None else _path(doc, when)
        used = {path[0] for _, path, _ in steps}
        if time_path is not None:
            used.add(time_path[0])
        plan = (steps, time_path, frozenset(used), any(n.startswith("cookie.") for n in where))
        if len(self._plans) >= _PLANS_MAX:
            self._plans.clear()
        self._plans[keys] = plan
        return plan

    def __call__(self, line: str) -> AccessRecord | None:
        doc = self._doc(line)
        if doc is None:
            return None
        steps, when, used, has_cookies = self._plan(doc)
        timed = self._time(_lookup(doc, when)) if when is not None else None
        if timed is None:
            return None
        v: dict[str, str] = {name: _text(_lookup(doc, path), join) for name, path, join in steps}
        if v.get("request"):
            method, target, protocol = split_request(v["request"])
        else:
            method, target, protocol = v.get("method", ""), v.get("target", ""), ""
            if not target:
                target = v.get("path", "")
                query = v.get("query", "")
                if query:
                    target += query if query[0] == "?" else "?" + query
        protocol = v.get("protocol") or protocol
        cookies = (
            {k[7:]: c for k, c in v.items() if k.startswith("cookie.") and c}
            if has_cookies
            else None
        )
        extra: dict[str, str] = {}
        for key, value in doc.items():
            if key not in used:
                _flatten(key, value, extra)
        host = v.get("host", "")
        return AccessRecord(
            timed[0],
            timed[1],
            v.get("ip", ""),
            method,
            target,
            protocol,
            to_int(v.get("status")),
            to_int(v.get("bytes")),
            v.get("referrer", ""),
            v.get("user_agent", ""),
            v.get("cookie", ""),
            cookies or None,
            host,
            to_float(v.get("request_time")),
            v.get("forwarded_for", ""),
            extra or None,
        )

    def explain(self, line: str) -> str:
        doc = self._doc(line)
        if doc is None:
            try:
                orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                return f"not a JSON object: {exc}"
            return "not a JSON object (json access lines are one {…} object per line)"
        when = self._plan(doc)[1]
        if when is None:
            return (
                f"no time field (set time_field; looked for {', '.join(TIME_NAMES)} at the top "
                "level)"
            )
        value = _lookup(doc, when)
        if value is None:
            return f"no time field {'.'.join(when)!r} in this object"
        return f"unreadable time {value!r} for time_format {self._time.format}"

    def __repr__(self) -> str:
        return f"JsonAccessParser(fields={self._mapped!r}, time_field={self._time_field!r})"


def _path(doc: dict[str, Any], key: str) -> Path:
    """A dotted key as the steps into this document (a literal key with dots wins)."""
    return (key,) if key in doc or "." not in key else tuple(key.split("."))


def _lookup(doc: dict[str, Any], path: Path) -> Any:
    node: Any = doc
    for part in path:
        if type(node) is not dict:
            return None
        node = node.get(part)
    return node


def _text(value: Any, join: str | None = None) -> str:
    """A JSON value as the text a record field holds (`-` and null are empty)."""
    if type(value) is str:
        return "" if value == "-" else value
    if isinstance(value, list):
        items = [_text(item) for item in value]
        return join.join(i for i in items if i) if join else next((i for i in items if i), "")
    if value is None or isinstance(value, dict):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _flatten(key: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{key}.{k}", v, out)
    elif isinstance(value, list) and any(isinstance(i, dict | list) for i in value):
        out[key] = orjson.dumps(value).decode()
    elif value is not None:
        out[key] = _text(value, ", ")
