"""The Common/Combined Log Formats, and combined plus a quoted Cookie header.

    common:          %h %l %u %t "%r" %>s %b
    combined:        common + "%{Referer}i" "%{User-Agent}i"
    combined_cookie: combined + "%{Cookie}i"   (nginx: ... "$http_cookie")

Quoted fields accept both nginx's `\\xHH` and Apache's `\\"` escaping (an unrolled-loop pattern,
no backtracking). Trailing fields some servers append (request times, hosts) are tolerated for
common and combined, whose layouts are commonly extended at the end.
"""

from __future__ import annotations

import re

from agent.parse.escapes import unescape
from agent.parse.fields import dash, to_int
from agent.parse.request import split_request
from agent.parse.timefmt import ClfTime
from agent.records import AccessRecord

_Q = r'"([^"\\]*(?:\\.[^"\\]*)*)"'
_HEAD = r"(\S+) (\S+) (\S+) \[([^\]]+)\] " + _Q + r" (\d{3}|-) (\d+|-)"
_PATTERNS = {
    "common": _HEAD + r"(?:\s|$)",
    "combined": _HEAD + " " + _Q + " " + _Q + r"(?:\s|$)",
    "combined_cookie": _HEAD + " " + _Q + " " + _Q + " " + _Q + r"\s*$",
}


class ClfParser:
    """A callable parser for `common`, `combined` and `combined_cookie` lines."""

    __slots__ = ("_clf", "_fields", "_name", "_rx")

    def __init__(self, name: str) -> None:
        self._name = name
        self._rx = re.compile(_PATTERNS[name])
        self._fields = self._rx.groups
        self._clf = ClfTime()

    def __call__(self, line: str) -> AccessRecord | None:
        m = self._rx.match(line)
        if m is None:
            return None
        g = m.groups()
        ts = self._clf(g[3])
        if ts is None:
            return None
        request = g[4]
        if "\\" in request:
            request = unescape(request)
        method, target, protocol = split_request(request)
        referrer = user_agent = cookie = ""
        if self._fields >= 9:
            referrer = dash(unescape(g[7]))
            user_agent = dash(unescape(g[8]))
            if self._fields == 10:
                cookie = dash(unescape(g[9]))
        return AccessRecord(
            ts,
            1.0,
            g[0],
            method,
            target,
            protocol,
            to_int(g[5]),
            to_int(g[6]),
            referrer,
            user_agent,
            cookie,
            None,
            "",
            None,
            "",
            None,
        )

    @property
    def name(self) -> str:
        """`common`, `combined` or `combined_cookie`."""
        return self._name

    @property
    def regex(self) -> re.Pattern[str]:
        """The layout's regex (groups: ip, ident, user, time, request, status, bytes, then
        referrer, user agent and cookie as the layout has them)."""
        return self._rx

    def explain(self, line: str) -> str:
        """Why `line` does not parse (for `trackd check`)."""
        m = self._rx.match(line)
        if m is not None:
            return f"unreadable time [{m.group(4)}] (expected like 28/Nov/2026:13:10:42 +0000)"
        head = re.match(r"(\S+) (\S+) (\S+) \[([^\]]+)\] ", line)
        if head is None:
            return "does not start like `IP - user [time] ` (is this the right format?)"
        return f"does not match the {self._name} layout after the time (check the quoted fields)"

    def __repr__(self) -> str:
        return f"ClfParser({self._name!r})"
