"""Compile an nginx `log_format` into a parser (SPEC §2, format `nginx`).

Operators paste what their nginx.conf says — either the format string alone
(`$remote_addr - $remote_user [$time_local] "$request" …`) or the whole directive
(`log_format main escape=json '…' '…';`) — and get a parser for exactly that layout.

Hand-written because no maintained library compiles nginx formats to a fast matcher. This module
knows nginx: which variables feed which record field, and the shape of the values nginx writes
(status, sizes, times, addresses, the comma/colon lists of `$upstream_*`); `layout.py` turns
that into one anchored regex and a generated assembler. Every variable compiles: unknown ones
(`$http_*`, `$sent_http_*`, `$arg_*`, module variables) are captured as extras by name.

nginx writes a value it does not have as `-`; with the default escaping it writes `"`, `\\`,
control bytes and bytes >= 0x7F as `\\xHH`, with `escape=json` JSON escapes, with `escape=none`
nothing. Known limit: an unquoted `$uri` (decoded, so it may hold a space) is matched up to
the first space or `?`; `$request`/`$request_uri` have no such limit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from agent.parse.layout import Capture, CompiledParser, FormatError, Token, compile_layout

_VAR = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")
# A directive's tokens: '…', "…", a bare word, `;`, or a `#` comment (to the end of its line).
_DIRECTIVE_TOKEN = re.compile(
    r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"|(#[^\n]*)|([^\s'\";#]+)|(;)", re.S
)
# nginx's config reader undoes \" \' \\ and turns \t \r \n into the control characters; any other
# backslash stays (ngx_conf_read_token).
_CONF_ESCAPE = re.compile(r"\\([\"'\\trn])")
_CONF_CHARS = {"t": "\t", "r": "\r", "n": "\n"}

_DIGITS = r"\d+|-"
_DECIMAL = r"\d+(?:\.\d+)?|-"
_ADDR = r'[^\s"]+'
_HOST = r'[^\s"/]*'


def _list(item: str) -> str:
    """`$upstream_*` values: one per upstream tried, `, ` between servers, ` : ` between groups."""
    return rf"(?:{item})(?:(?:, | : )(?:{item}))*"


CLF_PATTERN = r"\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}"
ISO_PATTERN = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[+-]\d{2}:\d{2}|Z)"

_FIELDS = [
    # Times, most precise first (the rank): the record takes one, the others become extras.
    Capture("msec", "ts", 0, r"\d+(?:\.\d+)?", time="msec"),
    Capture("time_iso8601", "ts", 1, ISO_PATTERN, time="iso"),
    Capture("time_local", "ts", 2, CLF_PATTERN, time="clf"),
    Capture("remote_addr", "ip", 0, _ADDR),
    Capture("realip_remote_addr", "ip", 1, _ADDR),
    Capture("request", "request"),
    Capture("request_method", "method", 0, r'[^\s"]*'),
    Capture("request_uri", "target"),
    # `$uri` is decoded (it may hold spaces) and ends at a `?` (`$uri$is_args$args`).
    Capture("uri", "path", 0, r"[^\s?]*", quoted=r'[^"?]*'),
    Capture("document_uri", "path", 1, r"[^\s?]*", quoted=r'[^"?]*'),
    # A query is logged raw: no spaces; `-` when the request has none.
    Capture("args", "query", 0, r'[^\s"]*'),
    Capture("query_string", "query", 1, r'[^\s"]*'),
    Capture("server_protocol", "protocol", 0, r'[^\s"]*'),
    Capture("status", "status", 0, r"\d{3}|-"),
    Capture("body_bytes_sent", "bytes", 0, _DIGITS),
    Capture("bytes_sent", "bytes", 1, _DIGITS),
    Capture("http_referer", "referrer"),
    Capture("http_user_agent", "user_agent"),
    Capture("http_cookie", "cookie"),
    Capture("host", "host", 0, _HOST),
    Capture("http_host", "host", 1, _HOST),
    Capture("server_name", "host", 2, _HOST),
    Capture("request_time", "request_time", 0, _DECIMAL),
    Capture("http_x_forwarded_for", "forwarded_for", 0),
    # "$http_x_forwarded_for, $remote_addr": the same client walk (identity/clientip.py).
    Capture("proxy_add_x_forwarded_for", "forwarded_for", 1),
]
_TYPED_EXTRAS = {
    **dict.fromkeys(
        "request_length connection connection_requests pid remote_port server_port "
        "realip_remote_port proxy_protocol_port proxy_protocol_server_port tcpinfo_rtt "
        "tcpinfo_rttvar tcpinfo_snd_cwnd tcpinfo_rcv_space content_length".split(),
        _DIGITS,
    ),
    **dict.fromkeys(("connection_time", "gzip_ratio"), _DECIMAL),
    **dict.fromkeys(
        "upstream_response_time upstream_connect_time upstream_header_time "
        "upstream_queue_time".split(),
        _list(r"\d+(?:\.\d+)?|-"),
    ),
    **dict.fromkeys(
        "upstream_response_length upstream_bytes_received upstream_bytes_sent".split(),
        _list(r"\d+|-"),
    ),
    "upstream_status": _list(r"\d{3}|-"),
    "upstream_addr": _list(r'[^\s,"]+'),
    "upstream_cache_status": r"[A-Z]+|-",
    **dict.fromkeys(
        "server_addr proxy_protocol_addr proxy_protocol_server_addr binary_remote_addr "
        "ssl_protocol ssl_cipher".split(),
        _ADDR,
    ),
    "hostname": _HOST,
    "scheme": r"[a-z]+|-",
    "https": r"(?:on)?",
    "is_args": r"\??",
    "pipe": r"[p.]",
    "request_id": r"[0-9a-fA-F]+|-",
    "request_completion": r"(?:OK)?",
    "nginx_version": r"[\d.]+",
}
_KNOWN = {c.name: c for c in _FIELDS} | {
    name: Capture(name, None, 0, pattern) for name, pattern in _TYPED_EXTRAS.items()
}
TIME_VARIABLES = ("time_local", "time_iso8601", "msec")
#: What nginx's variable names feed, for layouts that reuse them (regex groups, JSON keys).
FEEDS = {c.name: (c.feeds, c.rank) for c in _FIELDS if c.feeds is not None and c.feeds != "ts"}


class NginxFormatError(FormatError):
    """The log_format cannot be compiled; the message says what to change."""


@dataclass(frozen=True, slots=True)
class NginxFormat:
    """A parsed `log_format`: its template text and escaping mode."""

    template: str
    escape: str  # default | json | none


def read_log_format(text: str) -> NginxFormat:
    """Accept a bare format string or a whole `log_format name [escape=…] '…' …;` directive."""
    stripped = text.strip()
    if not stripped.startswith("log_format"):
        return NginxFormat(stripped, "default")
    words: list[str] = []
    strings: list[str] = []
    escape = "default"
    for m in list(_DIRECTIVE_TOKEN.finditer(stripped))[1:]:
        single, double, comment, bare, semi = m.groups()
        if semi:
            break
        if comment is not None:
            continue
        if single is not None or double is not None:
            raw = single if single is not None else double
            strings.append(_CONF_ESCAPE.sub(lambda e: _CONF_CHARS.get(e[1], e[1]), raw or ""))
        elif bare is not None:
            if strings:
                strings.append(bare)
            elif bare.startswith("escape="):
                escape = bare.partition("=")[2]
            else:
                words.append(bare)
    if escape not in ("default", "json", "none"):
        raise NginxFormatError(
            f"unknown escape={escape} in the log_format directive (nginx knows default, json and "
            "none)"
        )
    if not strings:
        raise NginxFormatError(
            "the log_format directive has no format string (paste it with its quotes: "
            "log_format main '$remote_addr … [$time_local] \"$request\" …';)"
        )
    return NginxFormat("".join(strings), escape)


def _tokens(template: str) -> list[Token]:
    """Split a template into literal text and one Capture per `$variable`."""
    out: list[Token] = []
    pos = 0
    for m in _VAR.finditer(template):
        if m.start() > pos:
            out.append(template[pos : m.start()])
        cap = replace(_capture(m.group(1) or m.group(2)), label=m.group(0))
        prev = out[-1] if out else None
        if cap.feeds == "query" and isinstance(prev, Capture) and prev.name == "is_args":
            # `$uri$is_args$args` writes `/path-` without a query (`$args` is `-`, `$is_args`
            # empty): after `?` the query, else exactly that `-`, never a piece of the path.
            cap = replace(cap, pattern=r'(?<=\?)[^\s"]*|-')
        out.append(cap)
        pos = m.end()
    if pos < len(template):
        out.append(template[pos:])
    return out


def _capture(name: str) -> Capture:
    known = _KNOWN.get(name)
    if known is not None:
        return known
    if name.startswith("cookie_") and len(name) > 7:
        return Capture(name, f"cookie.{name[7:]}")
    return Capture(name)


def compile_nginx(text: str) -> CompiledParser:
    """Compile a log_format (string or directive); raises NginxFormatError with a fix hint."""
    fmt = read_log_format(text)
    tokens = _tokens(fmt.template)
    names = {t.name for t in tokens if isinstance(t, Capture)}
    if not names:
        raise NginxFormatError(
            "the format has no $variables (paste the log_format string, e.g. "
            "'$remote_addr - $remote_user [$time_local] \"$request\" $status …')"
        )
    if not names.intersection(TIME_VARIABLES):
        raise NginxFormatError(
            "the format has no time variable: trackd needs $time_local, $time_iso8601 or $msec "
            "to give events their time (add one to the log_format in nginx.conf and here)"
        )
    if not names.intersection(("request", "request_uri", "uri", "document_uri")):
        raise NginxFormatError(
            "the format has no request: trackd needs $request (or $request_uri / $uri) for paths "
            "(add one to the log_format in nginx.conf and here)"
        )
    if fmt.escape == "json":
        # escape=json writes a value nginx does not have as "" (not `-`): typed fields may be empty.
        tokens = [_may_be_empty(t) if isinstance(t, Capture) else t for t in tokens]
    escape = {"default": "default", "json": "backslash", "none": "none"}[fmt.escape]
    return compile_layout("nginx", fmt.template, tokens, escape)


def _may_be_empty(cap: Capture) -> Capture:
    if cap.pattern is None:
        return cap
    quoted = None if cap.quoted is None else f"(?:{cap.quoted})?"
    return replace(cap, pattern=f"(?:{cap.pattern})?", quoted=quoted)
