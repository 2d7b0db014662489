"""The fields an access record offers to rules and templates (SPEC §2).

    ip method path query.NAME protocol status bytes referrer user_agent cookie.NAME host
    request_time forwarded_for

and every other value the format captured, by its name: nginx variables as `remote_user`,
`upstream_status`, `http_x_request_id`, `arg_plan`; Apache directives as `remote_user`,
`server_port`, `http_accept_language`, `env_unique_id` (see `apache.py`); regex groups and JSON
keys as named (nested JSON keys dotted). The name of a capture that fed one of the fields above
(`remote_addr`, `http_user_agent`, `request_uri`, `args`, …) reads that field, and `target`
(path and query as logged) and `query` (the query string) are offered too.

A field that is missing, empty or `-` reads as None (templates render it as absent, SPEC §3.3);
so does a status of 0 (nginx's "no status"). `query.NAME` is decoded once as browsers encode
forms (`+` is a space); `cookie.NAME` loses one pair of surrounding quotes and is
percent-decoded once (RFC 3986, `+` stays). The first occurrence of a name wins for both.
The raw Cookie header is never offered (`cookie`, `http_cookie`): only single cookies are
(SPEC §8: the header is never sent).
"""

from __future__ import annotations

from functools import lru_cache
from operator import attrgetter
from typing import Any
from urllib.parse import unquote_plus

from agent.parse.apache import FEEDS as APACHE_FEEDS
from agent.parse.cookies import parse_cookie_header
from agent.parse.nginx import FEEDS as NGINX_FEEDS
from agent.parse.request import split_target
from agent.records import AccessRecord
from agent.textcodec import percent_decode_once

_DIRECT = {
    name: attrgetter(name)
    for name in (
        "ip method protocol status bytes referrer user_agent host request_time "
        "forwarded_for".split()
    )
}
#: Capture names that fed a record field -> the field they read (for rules written with them).
_ALIASES = {
    name: feed
    for name, (feed, _rank) in {**NGINX_FEEDS, **APACHE_FEEDS}.items()
    if feed not in ("ts", "ts_frac")
} | {"referer": "referrer", "target": "target", "query": "query", "request": "request"}
_NOT_OFFERED = frozenset({"cookie", "http_cookie"})
_CACHE = 4096


@lru_cache(maxsize=_CACHE)
def query_params(query: str) -> dict[str, str]:
    """Query parameters, decoded once (`+` as space, as browsers encode forms); first wins.

    Cached (rules ask several fields of one record): callers must not change the result."""
    out: dict[str, str] = {}
    for part in query.split("&") if query else ():
        if not part:
            continue
        name, _, value = part.partition("=")
        key = unquote_plus(name, errors="replace")
        if key not in out:
            out[key] = unquote_plus(value, errors="replace")
    return out


_cookie_jar = lru_cache(maxsize=_CACHE)(parse_cookie_header)


def cookie_value(raw: str) -> str:
    """A cookie's value as rules see it: one pair of DQUOTEs removed (RFC 6265's quoted form),
    then percent-decoded once."""
    if len(raw) >= 2 and raw[0] == '"' and raw[-1] == '"':
        raw = raw[1:-1]
    return percent_decode_once(raw)


def alias_of(name: str) -> str | None:
    """The field a capture name reads when the record has no extra of that name
    (`request_uri` -> target, `http_host` -> host), or None."""
    return _ALIASES.get(name)


def access_field(rec: AccessRecord, name: str) -> Any:
    """The value of field `name` of an access record, or None when it has none."""
    getter = _DIRECT.get(name)
    if getter is not None:
        value = getter(rec)
        return None if value in ("", "-") or (name == "status" and value == 0) else value
    if name == "path":
        return split_target(rec.target)[0] or None
    if name.startswith("query."):
        return _query_param(rec, name[6:])
    if name.startswith("cookie."):
        cookie = name[7:]
        raw = rec.cookies.get(cookie) if rec.cookies else None
        if raw is None:
            raw = _cookie_jar(rec.cookie_header).get(cookie) if rec.cookie_header else None
        return None if raw is None else cookie_value(raw)
    if rec.extra:
        value = rec.extra.get(name)
        if value is not None:
            return None if value in ("", "-") else value
    if name in _NOT_OFFERED:
        return None
    alias = _ALIASES.get(name)
    if alias == "request":
        return " ".join(p for p in (rec.method, rec.target, rec.protocol) if p) or None
    if alias == "target":
        return rec.target or None
    if alias == "query":
        return split_target(rec.target)[1] or None
    if alias is not None:
        return access_field(rec, alias)
    return None


def _query_param(rec: AccessRecord, key: str) -> str | None:
    value = query_params(split_target(rec.target)[1]).get(key)
    if value is None and rec.extra:
        # nginx `$arg_NAME` captured on its own (a format logging `$uri` without `$args`).
        arg = rec.extra.get(f"arg_{key}")
        if arg and arg != "-":
            value = unquote_plus(arg, errors="replace")
    return value
