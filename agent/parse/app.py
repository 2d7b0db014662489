"""Application log formats (SPEC §2): one entry per line, its time from `time_field`.

    json    one JSON object per line (nested objects stay nested; rules reach in with a.b.c)
    logfmt  key=value pairs (`level=info msg="signed in" user=42`; a bare key reads as true)
    regex   the named groups of a regular expression, matched at the line's start

Lines that continue an entry — a Python or Java traceback, indented detail, a blank line — are
recognised by their shape and returned as CONTINUATION, so they never become junk records or
parse errors. A line is only taken for a continuation after it failed to parse as an entry, so
an entry is never lost to the heuristic.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from agent.parse.escapes import unescape
from agent.parse.fields import get_field
from agent.parse.layout import FormatError
from agent.parse.regexfmt import time_parser
from agent.records import CONTINUATION, AppRecord, Continuation

__all__ = ["TIME_FIELDS", "JsonAppParser", "LogfmtAppParser", "RegexAppParser", "get_field"]

#: Keys tried, in order, when `time_field` is not given.
TIME_FIELDS = ("ts", "time", "timestamp", "@timestamp", "datetime", "date")
_CONTINUATION = re.compile(
    r"^(?:[ \t]|$|Traceback \(most recent call last\)|\S+(?:Error|Exception|Warning|Exit|Interrupt)\b"
    r"|During handling of the above|The above exception|Caused by: |Suppressed: "
    r"|\.\.\. \d+ (?:more|common frames omitted)|goroutine \d+ \[)"
)
# key=value, key="quoted \" value", or a bare key; keys stop at whitespace, `=` and `"`.
_LOGFMT = re.compile(r'([^\s="]+)(?:=(?:"((?:[^"\\]|\\.)*)"|(\S*)))?')


class _AppParser:
    """What the app formats share: the time (`time_field` or the usual keys) and its reading."""

    __slots__ = ("_time", "_time_field")

    def __init__(self, time_field: str | None, time_format: str | None, tz_name: str) -> None:
        self._time_field = time_field
        self._time = time_parser(time_format, tz_name)

    def _time_value(self, fields: dict[str, Any]) -> Any:
        if self._time_field is not None:
            return get_field(fields, self._time_field)
        for key in TIME_FIELDS:
            if key in fields:
                return fields[key]
        return None

    def _entry(self, fields: dict[str, Any]) -> AppRecord | None:
        key = self._time_field
        # A plain key is one dict lookup; dotted names and auto-detection take the long way.
        value = fields.get(key) if key is not None and "." not in key else self._time_value(fields)
        when = self._time(value)
        return None if when is None else AppRecord(when[0], when[1], fields)

    def _time_problem(self, fields: dict[str, Any]) -> str:
        value = self._time_value(fields)
        if value is None:
            where = self._time_field or " or ".join(TIME_FIELDS)
            return f"no time field ({where})"
        return f"unreadable time {value!r} for time_format {self._time.format}"


class JsonAppParser(_AppParser):
    """One JSON object per line; its time from `time_field` (auto-detected when not given)."""

    __slots__ = ()

    def __init__(self, time_field: str | None, time_format: str | None, tz_name: str) -> None:
        super().__init__(time_field, time_format, tz_name)

    def __call__(self, line: str) -> AppRecord | Continuation | None:
        if not line.lstrip().startswith("{"):
            return CONTINUATION if _CONTINUATION.match(line) else None
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(doc, dict):
            return None
        return self._entry(doc)

    def explain(self, line: str) -> str:
        if not line.lstrip().startswith("{"):
            return "not a JSON object (app json lines start with '{')"
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            return f"invalid JSON: {exc}"
        if not isinstance(doc, dict):
            return "not a JSON object"
        return self._time_problem(doc)

    def __repr__(self) -> str:
        return f"JsonAppParser(time_field={self._time_field!r}, time_format={self._time.format!r})"


def logfmt_fields(line: str) -> dict[str, Any]:
    """The pairs of a logfmt line (first occurrence of a key wins; a bare key is True)."""
    fields: dict[str, Any] = {}
    for m in _LOGFMT.finditer(line):
        key, quoted, bare = m.groups()
        if key in fields:
            continue
        if quoted is not None:
            fields[key] = unescape(quoted) if "\\" in quoted else quoted
        else:
            fields[key] = True if bare is None else bare
    return fields


class LogfmtAppParser(_AppParser):
    """`key=value` pairs, as Go's logfmt, Heroku and many structured loggers write them."""

    __slots__ = ()

    def __init__(self, time_field: str | None, time_format: str | None, tz_name: str) -> None:
        super().__init__(time_field, time_format, tz_name)

    def __call__(self, line: str) -> AppRecord | Continuation | None:
        rec = self._entry(logfmt_fields(line)) if "=" in line else None
        if rec is None and _CONTINUATION.match(line):
            return CONTINUATION
        return rec

    def explain(self, line: str) -> str:
        if "=" not in line:
            return "no key=value pairs (is this a logfmt log?)"
        return self._time_problem(logfmt_fields(line))

    def __repr__(self) -> str:
        return f"LogfmtAppParser(time_field={self._time_field!r})"


class RegexAppParser(_AppParser):
    """The named groups of a regular expression (matched at the line's start) are the fields."""

    __slots__ = ("_rx",)

    def __init__(
        self, pattern: str, time_field: str | None, time_format: str | None, tz_name: str
    ) -> None:
        try:
            self._rx = re.compile(pattern)
        except re.error as exc:
            raise FormatError(f"invalid regular expression: {exc}", key="regex") from None
        names = self._rx.groupindex
        if not names:
            raise FormatError(
                "the regular expression has no named groups: name the fields, e.g. "
                "(?P<time>\\S+) (?P<level>\\w+) (?P<message>.*)",
                key="regex",
            )
        if time_field is None:
            time_field = next((k for k in TIME_FIELDS if k in names), None)
            if time_field is None:
                raise FormatError(
                    f"the regular expression has no time group: name it (?P<ts>…) or set "
                    f"time_field to one of its groups ({', '.join(names)})",
                    key="regex",
                )
        elif time_field not in names:
            raise FormatError(
                f"{time_field!r} is not a group of the regular expression (its groups: "
                f"{', '.join(names)})",
                key="time_field",
            )
        super().__init__(time_field, time_format, tz_name)

    def __call__(self, line: str) -> AppRecord | Continuation | None:
        m = self._rx.match(line)
        if m is not None:
            fields = {k: v for k, v in m.groupdict().items() if v is not None}
            rec = self._entry(fields)
            if rec is not None:
                return rec
        return CONTINUATION if _CONTINUATION.match(line) else None

    def explain(self, line: str) -> str:
        m = self._rx.match(line)
        if m is None:
            return "does not match the regular expression (anchored at the line's start)"
        return self._time_problem({k: v for k, v in m.groupdict().items() if v is not None})

    def __repr__(self) -> str:
        return f"RegexAppParser({self._rx.pattern!r}, time_field={self._time_field!r})"
