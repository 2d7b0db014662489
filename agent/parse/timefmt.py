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
    """`28/Nov/2026:13:10:42 +0100` (nginx `$time_local`, Apache `%t`) -> Unix seconds (UTC)."""

    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: dict[str, float] = {}

    def __call__(self, text: str) -> float | None:
        ts = self._cache.get(text)
        if ts is not None:
            return ts
        m = _CLF.match(text)
        if m is None:
            return None
        day, mon, year, hh, mm, ss, sign, oh, om = m.groups()
        month = _MONTHS.get(mon)
        if month is None:
            return None
        try:
            base = calendar.timegm((int(year), month, int(day), int(hh), int(mm), int(ss), 0, 0, 0))
            datetime(int(year), month, int(day), int(hh), int(mm), int(ss))  # rejects 31/Feb
        except ValueError:
            return None
        offset = int(oh) * 3600 + int(om) * 60
        ts = float(base - offset if sign == "+" else base + offset)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[text] = ts
        return ts

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
