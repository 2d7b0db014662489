"""The fields an access record offers to rules and templates (SPEC §2).

    ip method path query.NAME protocol status bytes referrer user_agent cookie.NAME host
    request_time forwarded_for, and any other variable the format captured (nginx `$foo` as
    `foo`, Apache directives by name).

`query.NAME` and `cookie.NAME` are percent-decoded once; the first occurrence of a name wins.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_plus

from agent.parse.cookies import parse_cookie_header
from agent.records import AccessRecord
from agent.textcodec import percent_decode_once

_DIRECT = {
    "ip": lambda r: r.ip,
    "method": lambda r: r.method,
    "protocol": lambda r: r.protocol,
    "status": lambda r: r.status,
    "bytes": lambda r: r.bytes,
    "referrer": lambda r: r.referrer,
    "user_agent": lambda r: r.user_agent,
    "host": lambda r: r.host,
    "request_time": lambda r: r.request_time,
    "forwarded_for": lambda r: r.forwarded_for,
}


def path_and_query(target: str) -> tuple[str, str]:
    """`/a/b?x=1#f` -> ("/a/b", "x=1"); absolute-form targets lose scheme and host."""
    if target.startswith(("http://", "https://")):
        rest = target.split("://", 1)[1]
        slash = rest.find("/")
        target = rest[slash:] if slash >= 0 else "/"
    target = target.split("#", 1)[0]
    path, _, query = target.partition("?")
    return path, query


def query_params(query: str) -> dict[str, str]:
    """Query parameters, decoded once (`+` as space, as browsers encode forms); first wins."""
    out: dict[str, str] = {}
    if not query:
        return out
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        key = unquote_plus(name, errors="replace")
        if key not in out:
            out[key] = unquote_plus(value, errors="replace")
    return out


def access_field(rec: AccessRecord, name: str) -> Any:
    """The value of field `name` of an access record, or None when it has none."""
    getter = _DIRECT.get(name)
    if getter is not None:
        value = getter(rec)
        return None if value == "" else value
    if name == "path":
        return path_and_query(rec.target)[0]
    if name.startswith("query."):
        return query_params(path_and_query(rec.target)[1]).get(name[6:])
    if name.startswith("cookie."):
        cookie = name[7:]
        raw: str | None
        if rec.cookies and cookie in rec.cookies:
            raw = rec.cookies[cookie]
        else:
            raw = parse_cookie_header(rec.cookie_header).get(cookie)
        return None if raw is None else percent_decode_once(raw)
    if rec.extra and name in rec.extra:
        value = rec.extra[name]
        return None if value in ("", "-") else value
    return None
