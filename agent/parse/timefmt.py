"""Event times from log text, always as Unix seconds (UTC) plus the width of their precision.

`time.strptime` costs ~10 µs a call and logs repeat the same second many times, so every parser
here caches by the timestamp text (bounded). The fixed layouts nginx and Apache write (`ClfTime`,
`IsoTime`, `parse_msec`) are sliced by hand; `TimeParser` serves the configurable
`time_format: iso8601 | unix | unix_ms | <strftime>` (SPEC §2), and `strftime_regex` turns an
Apache `%{format}t` into the pattern that matches what it writes.
"""

from __future__ import annotations

import calendar
import re
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

_MONTHS = {
    m: i
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_CLF = re.compile(r"^(\d{2})/([A-Z][a-z]{2})/(\d{4}):(\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})$")
_CACHE_MAX = 4096
#: The `time_format` names besides strftime patterns (SPEC §2).
TIME_FORMATS = ("iso8601", "unix", "unix_ms")
#: A strftime pattern for the Common Log Format time; parsed by `ClfTime`, not strptime.
CLF_STRFTIME = "%d/%b/%Y:%H:%M:%S %z"

_MISS = object()
Timed = tuple[float, float]
"""(Unix seconds, precision): the precision is the width of the interval the text denotes."""


class ClfTime:
    """`28/Nov/2026:13:10:42 +0100` (nginx `$time_local`, Apache `%t`) -> Unix seconds (UTC).

    Two caches: whole timestamps (busy sites log many hits per second), and the start of each
    (day, zone) — so a quiet site, whose every hit has its own second, pays only for slicing
    the time of day."""

    __slots__ = ("_cache", "_days")

    def __init__(self) -> None:
        self._cache: dict[str, float] = {}
        self._days: dict[str, float | None] = {}

    def __call__(self, text: str) -> float | None:
        ts = self._cache.get(text)
        if ts is not None:
            return ts
        if len(text) != 26 or text[11] != ":" or text[14] != ":" or text[17] != ":":
            return None
        day_key = text[:11] + text[20:]
        base = self._days.get(day_key, False)
        if base is False:
            base = self._day_start(text)
            if len(self._days) >= _CACHE_MAX:
                self._days.clear()
            self._days[day_key] = base
        if base is None:
            return None
        hh, mm, ss = text[12:14], text[15:17], text[18:20]
        if not (hh.isdigit() and mm.isdigit() and ss.isdigit()):
            return None
        h, m, s = int(hh), int(mm), int(ss)
        if h > 23 or m > 59 or s > 60:
            return None
        ts = base + h * 3600 + m * 60 + s
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[text] = ts
        return ts

    @staticmethod
    def _day_start(text: str) -> float | None:
        """UTC Unix time of 00:00:00 local on the text's day, in the text's zone."""
        m = _CLF.match(text[:12] + "00:00:00" + text[20:])
        if m is None:
            return None
        day, mon, year, _, _, _, sign, oh, om = m.groups()
        month = _MONTHS.get(mon)
        if month is None:
            return None
        try:
            datetime(int(year), month, int(day))  # rejects 31/Feb
        except ValueError:
            return None
        base = calendar.timegm((int(year), month, int(day), 0, 0, 0, 0, 0, 0))
        offset = int(oh) * 3600 + int(om) * 60
        return float(base - offset if sign == "+" else base + offset)

    def __repr__(self) -> str:
        return "ClfTime()"


class IsoTime:
    """ISO 8601 with an offset or `Z` (nginx `$time_iso8601`) -> Unix seconds (UTC)."""

    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: dict[str, float] = {}

    def __call__(self, text: str) -> float | None:
        ts = self._cache.get(text)
        if ts is not None:
            return ts
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            return None
        if dt.tzinfo is None:
            return None
        ts = dt.timestamp()
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[text] = ts
        return ts

    def __repr__(self) -> str:
        return "IsoTime()"


def parse_msec(text: str) -> float | None:
    """nginx `$msec`: seconds with a millisecond fraction."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and 0 < value < 1e11 else None


def epoch_scaled(text: str, divisor: float) -> float | None:
    """Whole epoch units (Apache `%{sec}t`, `%{msec}t`, `%{usec}t`) -> seconds."""
    if not text.isdigit():
        return None
    value = int(text) / divisor
    return value if value < 1e11 else None


class TimeParser:
    """`time_format` + `timezone` -> callable: a value (text or JSON number) -> Timed or None.

    `time_format` None means auto: numbers are epochs (seconds, or ms/µs/ns by magnitude),
    text is ISO 8601, the Common Log Format time, or a numeric epoch. A time without an offset
    is read in `timezone` (an IANA name; DST-ambiguous local times take their first occurrence).
    """

    __slots__ = ("_cache", "_clf", "_format", "_strptime", "_tz")

    def __init__(self, time_format: str | None = None, tz_name: str = "UTC") -> None:
        self._format = time_format
        self._strptime = ""
        if time_format is not None and time_format not in TIME_FORMATS:
            check_strftime(time_format)
            self._strptime = expand_strftime(time_format)
        self._tz: tzinfo = UTC if tz_name == "UTC" else ZoneInfo(tz_name)
        self._clf = ClfTime()
        self._cache: dict[Any, Timed | None] = {}

    @property
    def format(self) -> str:
        return self._format or "auto"

    def __call__(self, value: Any) -> Timed | None:
        if type(value) is str:
            key: Any = value
        elif isinstance(value, int | float) and not isinstance(value, bool):
            key = (type(value), value)  # 1 and 1.0 are equal keys but differ in precision
        else:
            return None
        hit = self._cache.get(key, _MISS)
        if hit is not _MISS:
            return hit  # type: ignore[return-value]
        try:
            result = self._parse(value)
        except (ValueError, OverflowError, TypeError):
            result = None
        if result is not None and not -1e11 < result[0] < 1e11:  # also rejects NaN and inf
            result = None
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[key] = result
        return result

    def _parse(self, value: str | int | float) -> Timed | None:
        fmt = self._format
        if fmt == "unix":
            return _epoch(value, 1.0)
        if fmt == "unix_ms":
            return _epoch(value, 1000.0)
        if fmt is None and not isinstance(value, str):
            return _epoch(value, _magnitude(float(value)))
        text = value.strip() if isinstance(value, str) else str(value)
        if fmt is None:
            # Most likely first: ISO 8601 (`2026-…`), then epochs, then the CLF time.
            if text[4:5] != "-" and _NUMBER.match(text):
                return _epoch(text, _magnitude(float(text)))
            if text[2:3] == "/":
                clf = self._clf(text)
                return None if clf is None else (clf, 1.0)
            return self._aware(datetime.fromisoformat(text), text)
        if fmt == CLF_STRFTIME:
            clf = self._clf(text)
            return None if clf is None else (clf, 1.0)
        if fmt == "iso8601":
            return self._aware(datetime.fromisoformat(text), text)
        return self._aware(datetime.strptime(text, self._strptime), text)

    def _aware(self, dt: datetime, text: str) -> Timed:
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=self._tz)
        # The precision the text has: whole seconds, milliseconds or finer.
        if dt.microsecond == 0 and "." not in text and "," not in text:
            precision = 1.0
        else:
            precision = 0.001 if dt.microsecond % 1000 == 0 else 1e-6
        return dt.timestamp(), precision

    def __repr__(self) -> str:
        return f"TimeParser({self.format!r}, tz={self._tz})"


_NUMBER = re.compile(r"^\d+(?:\.\d+)?$")


def _magnitude(value: float) -> float:
    """Divisor that turns an epoch number into seconds, judged by its size (auto mode)."""
    if value >= 1e17:
        return 1e9
    if value >= 1e14:
        return 1e6
    if value >= 1e11:
        return 1e3
    return 1.0


def _epoch(value: str | int | float, divisor: float) -> Timed | None:
    number = float(value)
    if isinstance(value, int) or (isinstance(value, str) and "." not in value):
        precision = 1.0 / divisor
    else:
        digits = len(str(value).rpartition(".")[2])
        precision = 10.0**-digits / divisor
    return number / divisor, max(min(precision, 1.0), 1e-6)


# strftime directives strptime understands, and the regex matching what each one writes.
_STRFTIME = {
    "a": r"[A-Za-z]{3}",
    "A": r"[A-Za-z]+",
    "b": r"[A-Za-z]{3}",
    "B": r"[A-Za-z]+",
    "d": r"[ \d]?\d",
    "H": r"\d{2}",
    "I": r"\d{2}",
    "j": r"\d{3}",
    "m": r"\d{2}",
    "M": r"\d{2}",
    "p": r"[AaPp][Mm]",
    "S": r"\d{2}",
    "f": r"\d{1,6}",
    "u": r"\d",
    "U": r"\d{2}",
    "V": r"\d{2}",
    "w": r"\d",
    "W": r"\d{2}",
    "y": r"\d{2}",
    "Y": r"\d{4}",
    "G": r"\d{4}",
    "z": r"(?:[+-]\d{2}:?\d{2}|Z)",
    "Z": r"[A-Za-z]+",
    "%": "%",
}
# C-library composites strptime lacks, spelled with directives it has.
_COMPOSITES = {"D": "%m/%d/%y", "F": "%Y-%m-%d", "T": "%H:%M:%S", "R": "%H:%M", "h": "%b"}
_DIRECTIVE = re.compile(r"%(.?)", re.S)


def expand_strftime(fmt: str) -> str:
    """`%F %T` -> `%Y-%m-%d %H:%M:%S`: the composites C's strftime knows and strptime does not."""
    return _DIRECTIVE.sub(lambda m: _COMPOSITES.get(m.group(1), m.group(0)), fmt)


def check_strftime(fmt: str) -> None:
    """Raise ValueError naming the first directive strptime cannot read back."""
    for m in _DIRECTIVE.finditer(expand_strftime(fmt)):
        if m.group(1) not in _STRFTIME:
            raise ValueError(
                f"strftime directive %{m.group(1)} in {fmt!r} cannot be parsed back "
                "(use e.g. %Y-%m-%d %H:%M:%S %z; %d, %H, %b, %z, %f, %F and %T are fine)"
            )


def strftime_regex(fmt: str) -> str:
    """The regex (no groups) matching what `fmt` writes; ValueError for unreadable directives."""
    expanded = expand_strftime(fmt)
    check_strftime(expanded)
    out: list[str] = []
    pos = 0
    for m in _DIRECTIVE.finditer(expanded):
        out.append(re.escape(expanded[pos : m.start()]))
        out.append(_STRFTIME[m.group(1)])
        pos = m.end()
    out.append(re.escape(expanded[pos:]))
    return "".join(out)
