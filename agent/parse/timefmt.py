"""Fast event-time parsing for log timestamps.

`time.strptime` costs ~10 µs a call; access logs repeat the same second many times, so each parser
here slices the fixed layout by hand and caches by the timestamp text (bounded).
"""

from __future__ import annotations

import calendar
import re
from datetime import datetime

_MONTHS = {
    m: i
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_CLF = re.compile(r"^(\d{2})/([A-Z][a-z]{2})/(\d{4}):(\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})$")
_CACHE_MAX = 4096


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
