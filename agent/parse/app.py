"""Application log formats (SPEC §2): one entry per line, its time from `time_field`.

    json    one JSON object per line (nested objects stay nested)
    logfmt  key=value pairs                              (not built yet)
    regex   named groups of a regular expression         (not built yet)

Lines that continue an entry — a Python traceback, indented detail — are recognised by their
shape and returned as CONTINUATION, so they never become junk records or parse errors.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from agent.records import CONTINUATION, AppRecord, Continuation

#: Keys tried, in order, when `time_field` is not given.
TIME_FIELDS = ("ts", "time", "timestamp", "@timestamp", "datetime", "date")
_CONTINUATION = re.compile(
    r"^(?:[ \t]|Traceback \(most recent call last\)|\S+(?:Error|Exception)\b|During handling|The above exception)"
)
_CACHE_MAX = 4096


def get_field(fields: dict[str, Any], dotted: str) -> Any:
    """`fields["a"]["b"]` for `"a.b"` (a literal key containing dots wins), or None."""
    if dotted in fields:
        return fields[dotted]
    node: Any = fields
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


class TimeParser:
    """A `time_format` (iso8601 | unix | unix_ms | strftime pattern) and `timezone` -> callable
    value -> (Unix seconds, precision) or None."""

    __slots__ = ("_cache", "_format", "_tz")

    def __init__(self, time_format: str | None, tz_name: str = "UTC") -> None:
        self._format = time_format or "iso8601"
        self._tz: tzinfo = UTC if tz_name == "UTC" else ZoneInfo(tz_name)
        self._cache: dict[Any, tuple[float, float] | None] = {}

    def __call__(self, value: Any) -> tuple[float, float] | None:
        if value is None or isinstance(value, bool):
            return None
        key = value if isinstance(value, str | int | float) else None
        if key is None:
            return None
        hit = self._cache.get(key, False)
        if hit is not False:
            return hit  # type: ignore[return-value]
        result = self._parse(value)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[key] = result
        return result

    def _parse(self, value: str | int | float) -> tuple[float, float] | None:
        fmt = self._format
        try:
            if fmt == "unix":
                ts = float(value)
                return ts, (1.0 if ts == int(ts) and not _has_fraction(value) else 0.001)
            if fmt == "unix_ms":
                return float(value) / 1000.0, 0.001
            text = str(value).strip()
            if fmt == "iso8601":
                dt = datetime.fromisoformat(text)
            else:
                dt = datetime.strptime(text, fmt)
        except (ValueError, OverflowError, TypeError):
            return None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=self._tz)
        precision = 1.0 if dt.microsecond == 0 and "." not in str(value) else 1e-6
        if precision < 1.0 and dt.microsecond % 1000 == 0:
            precision = 0.001
        return dt.timestamp(), precision


def _has_fraction(value: str | int | float) -> bool:
    return isinstance(value, float) or (isinstance(value, str) and "." in value)


class JsonAppParser:
    """One JSON object per line; its time from `time_field` (auto-detected when not given)."""

    __slots__ = ("_time", "_time_field")

    def __init__(self, time_field: str | None, time_format: str | None, tz_name: str) -> None:
        self._time_field = time_field
        self._time = TimeParser(time_format, tz_name)

    def __call__(self, line: str) -> AppRecord | Continuation | None:
        stripped = line.lstrip()
        if not stripped.startswith("{"):
            return CONTINUATION if _CONTINUATION.match(line) else None
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(doc, dict):
            return None
        when = self._time(self._time_value(doc))
        if when is None:
            return None
        return AppRecord(when[0], when[1], doc)

    def _time_value(self, doc: dict[str, Any]) -> Any:
        if self._time_field is not None:
            return get_field(doc, self._time_field)
        for key in TIME_FIELDS:
            if key in doc:
                return doc[key]
        return None

    def explain(self, line: str) -> str:
        stripped = line.lstrip()
        if not stripped.startswith("{"):
            return "not a JSON object (app json lines start with '{')"
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            return f"invalid JSON: {exc}"
        if not isinstance(doc, dict):
            return "not a JSON object"
        value = self._time_value(doc)
        if value is None:
            where = self._time_field or " or ".join(TIME_FIELDS)
            return f"no time field ({where})"
        return f"unreadable time {value!r} for time_format {self._time._format}"

    def __repr__(self) -> str:
        return f"JsonAppParser(time_field={self._time_field!r})"
