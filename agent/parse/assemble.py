"""The generated per-line assembler of a compiled layout: `m.groups()` -> AccessRecord.

Generated as Python source for exactly the captures a format has, so the hot path has no
per-field lookups or branches for fields it lacks, and the common case of each field (no
backslash, not `-`) is inlined instead of a call. Only group indexes, constants and `repr()`'d
names enter the generated code (the `exec` in `layout.CompiledParser`).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from agent.parse.escapes import unescape
from agent.parse.fields import to_float, to_int
from agent.parse.request import split_request
from agent.parse.timefmt import ClfTime, IsoTime, epoch_scaled, parse_msec
from agent.records import AccessRecord

if TYPE_CHECKING:
    from agent.parse.layout import Capture

_HELPERS: dict[str, Any] = {
    "_u": unescape,
    "_split": split_request,
    "_int": to_int,
    "_float": to_float,
    # `AccessRecord(*fields)` without the generated `__new__`'s frame: one record per line.
    "_Rec": functools.partial(tuple.__new__, AccessRecord),
    "_msec": parse_msec,
    "_epoch": epoch_scaled,
}


def assembler_source(
    caps: list[tuple[Capture, int]],
    *,
    escaped: bool,
    optional_groups: bool = False,
    plain: frozenset[int] = frozenset(),
) -> tuple[str, dict[str, Any]]:
    """Python source of `parse(line)` for these captures, and the namespace it runs in.

    `plain`: group indexes whose pattern cannot match a backslash (they need no unescaping)."""
    namespace = dict(_HELPERS)
    best: dict[str, tuple[Capture, int]] = {}
    hosts: list[tuple[int, int]] = []
    time_parts: list[int] = []
    cookies: dict[str, int] = {}
    extras: list[tuple[str, int]] = []
    for cap, idx in caps:
        feeds = cap.feeds
        if feeds is None:
            extras.append((cap.name, idx))
        elif feeds == "host":
            hosts.append((cap.rank, idx))
        elif feeds == "ts_part":
            time_parts.append(idx)
        elif feeds.startswith("cookie."):
            cookies.setdefault(feeds[7:], idx)
        else:
            held = best.get(feeds)
            if held is None or cap.rank < held[0].rank:
                if held is not None:
                    extras.append((held[0].name, held[1]))
                best[feeds] = (cap, idx)
            else:
                extras.append((cap.name, idx))

    def g(field: str) -> str:
        return f"g[{best[field][1]}]"

    def gi(field: str) -> int:
        return best[field][1]

    def u(expr: str, group: int) -> str:
        """`expr` unescaped; the common case (no backslash) inlined to save a call per field."""
        if not escaped or group in plain:
            return expr
        return f'({expr} if "\\\\" not in {expr} else _u({expr}))'

    def dash_(expr: str) -> str:
        return f'("" if {expr} == "-" else {expr})'

    def du(group: int) -> str:
        """Group `group`: `-` -> "", else unescaped (`_dash(u(...))` inlined; `-` has no `\\`)."""
        expr = f"g[{group}]"
        if not escaped or group in plain:
            return dash_(expr)
        return f'("" if {expr} == "-" else {expr} if "\\\\" not in {expr} else _u({expr}))'

    body = ["def parse(line):", "    m = _match(line)", "    if m is None:", "        return None"]
    # A user's regex may have groups that do not take part in a match: they read as "".
    body.append('    g = m.groups("")' if optional_groups else "    g = m.groups()")
    body += _time_lines(best, namespace, time_parts)
    if "request" in best:
        body.append(f"    method, target, protocol = _split({u(g('request'), gi('request'))})")
        if "method" in best:
            body.append(f"    method = {dash_(g('method'))} or method")
    else:
        body.append(f"    method = {dash_(g('method'))}" if "method" in best else '    method = ""')
        if "target" in best:
            body.append(f"    target = {du(gi('target'))}")
        elif "path" in best:
            body.append(f"    target = {du(gi('path'))}")
        else:
            body.append('    target = ""')
        if "query" in best and "target" not in best:
            body += [
                f"    query = {g('query')}",
                '    if query and query != "-" and query != "?":',
                f'        target = target + (query if query[0] == "?" else "?" + {u("query", gi("query"))})',
            ]
        body.append('    protocol = ""')
    if "protocol" in best:
        body.append(f"    protocol = {dash_(g('protocol'))} or protocol")
    hosts.sort()
    if hosts:
        body.append("    host = " + " or ".join(du(i) for _, i in hosts))
    else:
        body.append('    host = ""')
    if cookies:
        body.append("    cookies = {}")
        for cname, idx in cookies.items():
            body += [
                f"    v = g[{idx}]",
                '    if v and v != "-":',
                f"        cookies[{cname!r}] = {u('v', idx)}",
            ]
    else:
        body.append("    cookies = None")
    if extras:
        items = ", ".join(f"{n!r}: {u(f'g[{i}]', i)}" for n, i in extras)
        body.append(f"    extra = {{{items}}}")
    else:
        body.append("    extra = None")
    rt = best.get("request_time")
    if rt is None:
        request_time = "None"
    elif rt[0].scale == 1.0:
        request_time = f"_float({g('request_time')})"
    else:
        body += [
            f"    rt = _float({g('request_time')})",
            f"    if rt is not None:\n        rt = rt / {rt[0].scale!r}",
        ]
        request_time = "rt"

    def text(field: str) -> str:
        return du(gi(field)) if field in best else '""'

    fields = [
        "ts",
        "precision",
        du(gi("ip")) if "ip" in best else '""',
        "method",
        "target",
        "protocol",
        f"_int({g('status')})" if "status" in best else "0",
        f"_int({g('bytes')})" if "bytes" in best else "0",
        text("referrer"),
        text("user_agent"),
        text("cookie"),
        "cookies",
        "host",
        request_time,
        text("forwarded_for"),
        "extra",
    ]
    body.append(f"    return _Rec(({', '.join(fields)}))")
    return "\n".join(body) + "\n", namespace


def _time_lines(
    best: dict[str, tuple[Capture, int]], namespace: dict[str, Any], parts: list[int]
) -> list[str]:
    cap, idx = best["ts"]
    if cap.time == "clf":
        namespace["_clf"] = ClfTime()
        lines = [f"    ts = _clf(g[{idx}])", "    precision = 1.0"]
    elif cap.time == "iso":
        namespace["_iso"] = IsoTime()
        lines = [f"    ts = _iso(g[{idx}])", "    precision = 1.0"]
    elif cap.time == "msec":
        lines = [f"    ts = _msec(g[{idx}])", "    precision = 0.001"]
    elif cap.time == "epoch":
        lines = [f"    ts = _epoch(g[{idx}], {cap.scale!r})", f"    precision = {1 / cap.scale!r}"]
    else:
        namespace["_tc"] = cap.parser
        # A time written in pieces (Apache `%{%d/%b/%Y %T}t … %{%z}t`) is read as one text.
        value = " + '\\x1f' + ".join(f"g[{i}]" for i in [idx, *parts])
        lines = [f"    t = _tc({value})", "    if t is None:", "        return None"]
        lines.append("    ts, precision = t")
    if cap.time != "custom":
        lines += ["    if ts is None:", "        return None"]
    frac = best.get("ts_frac")
    if frac is not None and cap.time in ("clf", "iso", "custom"):
        lines += [
            f"    f = g[{frac[1]}]",
            "    if f.isdigit():",
            f"        ts = ts + int(f) / {frac[0].scale!r}",
            f"        precision = {1 / frac[0].scale!r}",
        ]
    return lines
