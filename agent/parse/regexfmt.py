"""The `regex` access format, and the field names access layouts without a server format use.

A `regex` source's named groups are our fields (SPEC §2); a `json` source maps its keys to the
same names (`jsonaccess.py`). The names are SPEC §2's, plus `time`, `request` (a whole request
line), `target` (path and query), `query` and `cookie` (the raw Cookie header); `cookie_NAME`
(a regex group name cannot hold a dot) or `cookie.NAME` is one cookie. nginx variable names
(`remote_addr`, `http_user_agent`, `body_bytes_sent`, …) are understood too, so that a regex or a
JSON layout built from an nginx format needs no renaming. Other groups become extras.

The regex is matched at the line's start (`re.match`): add `$` to anchor its end. Values are
taken as they stand (no escape decoding: the regex, not a server, defines the layout).
"""

from __future__ import annotations

import re

from agent.parse.layout import Capture, CompiledParser, FormatError
from agent.parse.nginx import FEEDS
from agent.parse.timefmt import TimeParser

#: Our field names -> the record field each feeds ("ts" is the event time).
OUR_FIELDS = {
    "ip": "ip",
    "time": "ts",
    "method": "method",
    "path": "path",
    "query": "query",
    "target": "target",
    "request": "request",
    "protocol": "protocol",
    "status": "status",
    "bytes": "bytes",
    "referrer": "referrer",
    "user_agent": "user_agent",
    "cookie": "cookie",
    "host": "host",
    "request_time": "request_time",
    "forwarded_for": "forwarded_for",
}
#: Where the time is looked for when `time_field` is not given, in this order.
TIME_NAMES = (
    "time",
    "ts",
    "timestamp",
    "@timestamp",
    "time_iso8601",
    "time_local",
    "msec",
    "datetime",
    "date",
)
_PATH_FEEDS = ("request", "target", "path")


def feed_of(name: str) -> tuple[str, int] | None:
    """(record field, rank) a field name feeds, or None for an extra; our names outrank nginx's."""
    ours = OUR_FIELDS.get(name)
    if ours is not None:
        return ours, 0
    for prefix in ("cookie.", "cookie_"):
        if name.startswith(prefix) and len(name) > len(prefix):
            return f"cookie.{name[len(prefix) :]}", 0
    known = FEEDS.get(name)
    return None if known is None else (known[0], known[1] + 1)


def time_parser(time_format: str | None, timezone: str) -> TimeParser:
    """A TimeParser, with a bad strftime pattern reported against `time_format`."""
    try:
        return TimeParser(time_format, timezone)
    except ValueError as exc:
        raise FormatError(str(exc), key="time_format") from None


def compile_regex(
    pattern: str, *, time_field: str | None, time_format: str | None, timezone: str = "UTC"
) -> CompiledParser:
    """Compile a `regex` access source; raises FormatError naming the config key at fault."""
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise FormatError(f"invalid regular expression: {exc}", key="regex") from None
    names = regex.groupindex
    if not names:
        raise FormatError(
            "the regular expression has no named groups: name the parts trackd needs, e.g. "
            '(?P<ip>\\S+) … \\[(?P<time>[^\\]]+)\\] "(?P<request>[^"]*)" (?P<status>\\d+)',
            key="regex",
        )
    when = time_field or next((n for n in TIME_NAMES if n in names), None)
    if when is None:
        raise FormatError(
            "the regular expression has no time group: name it (?P<time>…) or set time_field",
            key="regex",
        )
    if when not in names:
        raise FormatError(
            f"{when!r} is not a group of the regular expression (its groups: {', '.join(names)})",
            key="time_field",
        )
    feeds = {name: feed_of(name) for name in names}
    if not any(f is not None and f[0] in _PATH_FEEDS for f in feeds.values()):
        raise FormatError(
            "the regular expression has no request: name a group request (a whole request "
            "line), target (path and query) or path",
            key="regex",
        )
    parse_time = time_parser(time_format, timezone)
    caps = []
    for name, group in names.items():
        feed = feeds[name]
        if name == when:
            cap = Capture(name, "ts", 0, time="custom", parser=parse_time)
        elif feed is None or feed[0] == "ts":
            cap = Capture(name)
        else:
            cap = Capture(name, feed[0], feed[1])
        caps.append((cap, group - 1))
    return CompiledParser("regex", pattern, regex, caps, escaped=False)
