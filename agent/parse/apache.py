"""Compile an Apache `LogFormat` string into a parser (SPEC §2, format `apache`).

Operators paste what their httpd.conf says: the whole directive (`LogFormat "%h %l %u %t \\"%r\\"
%>s %b" common`, or a `CustomLog path "…"` line), or the format string as it stands between the
quotes (`\\"` for a quote), or the string with plain quotes. Every mod_log_config directive
compiles (`%h %l %u %t %r %>s %b %B %D %T %v %V %p %a %A %m %U %q %H %I %O %S %k %L %X %R %f %P
%{X}i %{X}o %{X}e %{X}n %{X}C %{X}^ti %{format}t`), with the `<`/`>` and `%400,501{…}`/`%!200{…}`
condition modifiers; the record fields they feed and the names extras get are in `_directive`.

Hand-written for the same reason as the nginx compiler (no library compiles LogFormat strings to
a matcher); both share `layout.py`. Apache writes `-` for a missing value, escapes `"` and `\\`
with a backslash and other non-printable bytes as `\\xhh` (`\\n`, `\\t` for those two). A
`%{format}t` time without `%z` is in the server's local time: set the source's `timezone`.
"""

from __future__ import annotations

import re
from dataclasses import replace

from agent.parse.layout import Capture, CompiledParser, FormatError, Token, compile_layout
from agent.parse.nginx import CLF_PATTERN
from agent.parse.timefmt import CLF_STRFTIME, TimeParser, strftime_regex

_DIGITS = r"\d+|-"
_ADDR = r'[^\s"]+'
_NAME = r'[^\s"/:]*'
# The header fields a record has a place for; others become extras named like nginx's.
_HEADERS = {
    "referer": ("http_referer", "referrer"),
    "user-agent": ("http_user_agent", "user_agent"),
    "cookie": ("http_cookie", "cookie"),
    "host": ("http_host", "host"),
    "x-forwarded-for": ("http_x_forwarded_for", "forwarded_for"),
}
_DIRECTIVE_WORDS = re.compile(r"^\s*(LogFormat|CustomLog)\s", re.I)
_CONF_ARG = re.compile(r'"((?:[^"\\]|\\.)*)"|\'((?:[^\'\\]|\\.)*)\'|(\S+)', re.S)
_LITERAL_ESCAPES = {"\\": "\\", "r": "\r", "n": "\n", "t": "\t"}


class ApacheFormatError(FormatError):
    """The LogFormat cannot be compiled; the message says what to change."""


def read_log_format(text: str) -> str:
    """The format string of a pasted `LogFormat`/`CustomLog` directive, or of a bare string."""
    stripped = text.strip()
    m = _DIRECTIVE_WORDS.match(stripped)
    if m is None:
        return _unquote_conf(stripped, '"')
    args = list(_CONF_ARG.finditer(stripped[m.end() :]))
    # LogFormat "format" [nickname]; CustomLog path "format"|nickname [env=…]
    pick = args[0] if m.group(1).lower() == "logformat" else (args[1] if len(args) > 1 else None)
    if pick is None or (pick.group(1) is None and pick.group(2) is None):
        raise ApacheFormatError(
            f"the {m.group(1)} directive has no quoted format string (paste it with its quotes, "
            'e.g. LogFormat "%h %l %u %t \\"%r\\" %>s %b" common)'
        )
    quote = '"' if pick.group(1) is not None else "'"
    return _unquote_conf(pick.group(1) if quote == '"' else pick.group(2), quote)


def _unquote_conf(text: str, quote: str) -> str:
    """httpd's config reader: inside a quoted argument, `\\<quote>` and `\\\\` lose the backslash."""
    return re.sub(r"\\([\\" + quote + "])", r"\1", text)


def _literal(text: str) -> str:
    """mod_log_config's literal text: `\\\\ \\r \\n \\t` are escapes, other backslashes stay."""
    return re.sub(r"\\([\\rnt])", lambda e: _LITERAL_ESCAPES[e[1]], text)


def _snake(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _tokens(fmt: str, timezone: str) -> list[Token]:
    out: list[Token] = []
    named: dict[str, str] = {}  # capture name -> the directive text that first used it
    pos = 0
    while pos < len(fmt):
        pct = fmt.find("%", pos)
        if pct < 0:
            out.append(_literal(fmt[pos:]))
            break
        if pct > pos:
            out.append(_literal(fmt[pos:pct]))
        end, letter, arg, final, conditions = _item(fmt, pct)
        pos = end
        if letter == "%":
            out.append("%")
            continue
        for tok in _directive(letter, arg, final, timezone, fmt[pct:end]):
            if isinstance(tok, Capture):
                tok = replace(tok, label=fmt[pct:end])
                if conditions and tok.pattern is not None:  # logged for some statuses, else `-`
                    tok = replace(tok, pattern=f"(?:{tok.pattern})|-")
                text = fmt[pct:end]
                first = named.setdefault(tok.name, text)
                if first != text:  # same name, other directive (another time format, condition)
                    tok = Capture(f"{tok.name}_{len(named)}", None, tok.rank, tok.pattern)
            out.append(tok)
    return out


def _item(fmt: str, pct: int) -> tuple[int, str, str, bool, bool]:
    """Parse one `%…` item at `pct`: (end, directive letter, {argument}, final (`>`), conditional)."""
    j = pct + 1
    arg = ""
    final = False
    conditions = False
    while j < len(fmt):
        c = fmt[j]
        if c == "{":
            close = fmt.find("}", j)
            if close < 0:
                raise ApacheFormatError(
                    f"unclosed {{ in the directive at column {pct + 1} (write %{{Header}}i)"
                )
            arg = fmt[j + 1 : close]
            j = close + 1
        elif c in "<>":
            final = c == ">"
            j += 1
        elif c == "!" or c == "," or c.isdigit():
            conditions = True
            j += 1
        elif c == "^" and fmt[j + 1 : j + 3] in ("ti", "to"):
            return j + 3, fmt[j : j + 3], arg, final, conditions
        else:
            return j + 1, c, arg, final, conditions
    raise ApacheFormatError(f"the format ends inside the directive at column {pct + 1}")


def _directive(letter: str, arg: str, final: bool, tz: str, text: str) -> list[Token]:
    """The tokens one directive writes (`%t` writes its own brackets)."""
    if letter == "t":
        return _time(arg, tz)
    if letter == "s":
        return [Capture("status", "status", 0, r"\d{3}|-") if final else _SIMPLE["s"]]
    simple = _SIMPLE.get(letter)
    if simple is not None and not arg:
        return [simple]
    if letter == "a":
        return [Capture("peer_addr", "ip", 2, _ADDR) if arg == "c" else _SIMPLE["a"]]
    if letter == "h":
        return [Capture("peer_host", "ip", 3, _ADDR) if arg == "c" else _SIMPLE["h"]]
    if letter == "T":
        unit = {"": (3, 1.0), "s": (3, 1.0), "ms": (2, 1e3), "us": (1, 1e6)}.get(arg)
        if unit is None:
            raise ApacheFormatError(f"{text}: unknown unit {arg!r} (use %T, %{{ms}}T or %{{us}}T)")
        rank, scale = unit  # the finest unit wins; %D (µs) has rank 0
        return [Capture(f"request_time_{arg or 's'}", "request_time", rank, _DIGITS, scale=scale)]
    if letter == "p":
        port = {"canonical": "server_port", "local": "local_port", "remote": "remote_port"}
        if arg not in port:
            raise ApacheFormatError(
                f"{text}: unknown port {arg!r} (use canonical, local or remote)"
            )
        return [Capture(port[arg], None, 0, _DIGITS)]
    if letter == "P":
        if arg not in ("pid", "tid", "hextid"):
            raise ApacheFormatError(f"{text}: unknown {arg!r} (use pid, tid or hextid)")
        return [Capture(arg, None, 0, r"[0-9a-fA-F]+|-")]
    if letter in ("C", "i", "e", "o", "n", "^ti", "^to"):
        if not arg:
            raise ApacheFormatError(f"{text} needs a name in braces, e.g. %{{User-Agent}}i")
        return [_named(letter, arg)]
    raise ApacheFormatError(
        f"unknown directive {text} (mod_log_config has no such directive: check the LogFormat "
        "in httpd.conf, and write a literal % as %%)"
    )


def _named(letter: str, arg: str) -> Capture:
    if letter == "C":
        return Capture(f"cookie_{arg}", f"cookie.{arg}")
    if letter == "i":
        known = _HEADERS.get(arg.lower())
        if known is not None:
            pattern = r'[^\s"/]*' if known[1] == "host" else None
            return Capture(known[0], known[1], 0, pattern)
        return Capture(f"http_{_snake(arg)}")
    prefix = {"e": "env_", "o": "sent_http_", "n": "note_", "^ti": "trailer_in_"}
    return Capture(prefix.get(letter, "trailer_out_") + _snake(arg))


def _time(arg: str, tz: str) -> list[Token]:
    fmt = arg.removeprefix("begin:").removeprefix("end:")
    if not fmt:
        return ["[", Capture("time_local", "ts", 3, CLF_PATTERN, time="clf"), "]"]
    epoch = {"sec": (4, 1.0), "msec": (1, 1e3), "usec": (0, 1e6)}.get(fmt)
    if epoch is not None:
        return [Capture(f"time_{fmt}", "ts", epoch[0], r"\d+", scale=epoch[1], time="epoch")]
    if fmt in ("msec_frac", "usec_frac"):
        digits = 3 if fmt == "msec_frac" else 6
        return [Capture(f"time_{fmt}", "ts_frac", 0, rf"\d{{{digits}}}", scale=10.0**digits)]
    if fmt == CLF_STRFTIME:
        return [Capture("time", "ts", 2, CLF_PATTERN, time="clf")]
    try:
        pattern = strftime_regex(fmt)
    except ValueError as exc:
        raise ApacheFormatError(f"%{{{arg}}}t: {exc}") from None
    return [Capture(f"time:{fmt}", "ts", 2, pattern, time="custom", parser=TimeParser(fmt, tz))]


_SIMPLE = {
    "a": Capture("remote_addr", "ip", 0, _ADDR),
    "A": Capture("server_addr", None, 0, _ADDR),
    "b": Capture("body_bytes_sent", "bytes", 0, _DIGITS),
    "B": Capture("body_bytes_sent", "bytes", 0, _DIGITS),
    "D": Capture("request_time_us", "request_time", 0, _DIGITS, scale=1e6),
    "f": Capture("filename"),
    "h": Capture("remote_host", "ip", 1, _ADDR),
    "H": Capture("server_protocol", "protocol", 0, r'[^\s"]*'),
    "I": Capture("bytes_received", None, 0, _DIGITS),
    "k": Capture("keepalive_requests", None, 0, _DIGITS),
    "l": Capture("remote_logname"),
    "L": Capture("log_id"),
    "m": Capture("request_method", "method", 0, r'[^\s"]*'),
    "O": Capture("bytes_sent", "bytes", 1, _DIGITS),
    "p": Capture("server_port", None, 0, _DIGITS),
    "P": Capture("pid", None, 0, _DIGITS),
    "q": Capture("query_string", "query", 0, r'(?:\?[^\s"]*)?'),
    "r": Capture("request", "request"),
    "R": Capture("handler"),
    "s": Capture("original_status", "status", 1, r"\d{3}|-"),
    "S": Capture("bytes_transferred", None, 0, _DIGITS),
    "u": Capture("remote_user"),
    "U": Capture("uri", "path", 0, r'[^\s?"]*'),
    "v": Capture("server_name", "host", 2, _NAME),
    "V": Capture("server_name_used", "host", 1, _NAME),
    "X": Capture("connection_status", None, 0, r"[X+-]"),
}


#: What the names Apache captures get feed, for rules written with those names (`accessor.py`).
FEEDS = {
    c.name: (c.feeds, c.rank)
    for c in [
        *_SIMPLE.values(),
        Capture("status", "status"),
        Capture("peer_addr", "ip", 2),
        Capture("peer_host", "ip", 3),
        *(Capture(f"request_time_{u}", "request_time") for u in ("s", "ms", "us")),
        *(Capture(name, feed) for name, feed in _HEADERS.values()),
    ]
    if c.feeds is not None
}


def _join_time_pieces(tokens: list[Token], timezone: str) -> list[Token]:
    """Several `%{strftime}t` (the documented `%{%d/%b/%Y %T}t.%{msec_frac}t %{%z}t`) are one
    time: the first reads all their values, joined by `\x1f`, with their formats joined alike."""
    first_seen: dict[str, Capture] = {}  # a repeated piece is a backreference, not a new value
    for t in tokens:
        if isinstance(t, Capture) and t.time == "custom":
            first_seen.setdefault(t.name, t)
    pieces = list(first_seen.values())
    if len(pieces) < 2:
        return tokens
    formats = "\x1f".join(t.name.removeprefix("time:") for t in pieces)
    first, rest = pieces[0], {id(t) for t in pieces[1:]}
    out: list[Token] = []
    for tok in tokens:
        if tok is first:
            out.append(replace(first, parser=TimeParser(formats, timezone)))
        elif isinstance(tok, Capture) and id(tok) in rest:
            out.append(replace(tok, feeds="ts_part"))
        else:
            out.append(tok)
    return out


def compile_apache(text: str, timezone: str = "UTC") -> CompiledParser:
    """Compile a LogFormat (directive or string); raises ApacheFormatError with a fix hint."""
    fmt = read_log_format(text)
    tokens = _join_time_pieces(_tokens(fmt, timezone), timezone)
    caps = [t for t in tokens if isinstance(t, Capture)]
    if not caps:
        raise ApacheFormatError(
            "the format has no %directives (paste the LogFormat string, e.g. "
            '%h %l %u %t "%r" %>s %b)'
        )
    if not any(c.feeds == "ts" for c in caps):
        raise ApacheFormatError(
            "the format has no time: trackd needs %t or %{format}t to give events their time "
            "(add one to the LogFormat in httpd.conf and here)"
        )
    if not any(c.feeds in ("request", "path", "target") for c in caps):
        raise ApacheFormatError(
            "the format has no request: trackd needs %r (or %U) for paths (add one to the "
            "LogFormat in httpd.conf and here)"
        )
    return compile_layout("apache", fmt, tokens, "backslash")
