"""Compiled log layouts: a token list (literal text and captured fields) -> one anchored regex and
a generated assembler from its groups to an AccessRecord.

The nginx and Apache format compilers (and the `regex` format) describe a layout as tokens and say
which record field each capture feeds; this module does the rest, once per format:

- each capture gets the pattern its context calls for: alone between quotes, everything up to
  the closing quote (escape-aware); elsewhere its typed pattern when its values have a known
  shape (status, sizes, times, addresses), else lazily up to what follows — the anchored regex
  backtracks where a value happens to contain that text;
- the per-line assembler (groups -> AccessRecord) is generated as Python source for exactly the
  captures the format has, so the hot path has no per-field lookups or branches for fields it
  lacks. Only group indexes, constants and `repr()`'d names enter the generated code.

Several captures may feed one field (`$remote_addr` and `$realip_remote_addr`; `$msec` and
`$time_local`): the lowest rank wins (compilers rank times most precise first), the others stay
available as extras. Hosts are tried in rank order, first non-empty wins.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any

from agent.parse.escapes import unescape
from agent.parse.fields import to_float, to_int
from agent.parse.request import split_request
from agent.parse.timefmt import ClfTime, IsoTime, epoch_scaled, parse_msec
from agent.records import AccessRecord


class FormatError(ValueError):
    """A log format (or regex) cannot be compiled; the message says what to change.

    `key` names the source's config key at fault (`log_format`, `regex`, `time_field`,
    `fields.NAME`), so that config validation reports it at its YAML path."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True, slots=True)
class Capture:
    """One captured value of a layout and the record field it feeds.

    `feeds`: ip, request, method, target (path + ?query), path, query, protocol, status, bytes,
    referrer, user_agent, cookie (the raw header), cookie.NAME, host, request_time,
    forwarded_for, ts (with `time` saying how to read it), ts_part (more of a custom time, read
    together with it, `\x1f` between pieces), ts_frac, or None (an extra only).
    """

    name: str
    feeds: str | None = None
    rank: int = 0
    pattern: str | None = None
    _: KW_ONLY
    #: The typed pattern inside quotes, where a value may hold spaces (nginx's decoded `$uri`).
    quoted: str | None = None
    #: request_time: divisor to seconds (µs -> 1e6); ts_frac: 10**digits; ts epoch: divisor.
    scale: float = 1.0
    #: For feeds == "ts": clf | iso | msec | epoch | custom (then `parser` reads the value).
    time: str = ""
    parser: Callable[[str], tuple[float, float] | None] | None = None
    #: How `explain` names it: `$status`, `%>s`, or (default) its name.
    label: str = ""


Token = str | Capture

#: The generic pattern of a capture without a typed one, per escaping and context.
_ALONE_IN_QUOTES = {
    "default": r'[^"]*',  # nginx writes `"` as \x22: a value never holds a raw quote
    "backslash": r'[^"\\]*(?:\\.[^"\\]*)*',  # Apache and escape=json write \" and \\
    "none": r'[^"]*',
}
# Several values between one pair of quotes: each lazily up to what follows (never a raw quote).
_SHARED_QUOTES = {"default": r'[^"]*?', "backslash": r'(?:[^"\\]|\\.)*?', "none": r'[^"]*?'}
_UNQUOTED = r".*?"
_GROUP = "v{}"


def build_regex(tokens: Sequence[Token], escape: str) -> tuple[str, list[tuple[str, str]]]:
    """The layout's regex source, and (label, piece) per token for `explain`."""
    quoted_at: list[int] = []  # per token: quoted region id, or -1
    region = -1
    regions = 0
    for tok in tokens:
        if isinstance(tok, str):
            quoted_at.append(-1)
            for ch in tok:
                if ch == '"':
                    if region < 0:
                        region = regions
                        regions += 1
                    else:
                        region = -1
        else:
            quoted_at.append(region)
    members: dict[int, int] = {}
    for r in quoted_at:
        if r >= 0:
            members[r] = members.get(r, 0) + 1
    pieces: list[tuple[str, str]] = []
    first: dict[str, int] = {}
    spaced_used = False
    for i, tok in enumerate(tokens):
        if isinstance(tok, str):
            pieces.append((repr(tok), re.escape(tok)))
            continue
        label = tok.label or tok.name
        if tok.name in first:
            pieces.append((label, f"(?P={_GROUP.format(first[tok.name])})"))
            continue
        first[tok.name] = i
        r = quoted_at[i]
        if r >= 0 and members[r] == 1:
            # Alone between quotes the closing quote delimits the value: the generic pattern
            # is exact, and faster than a typed one (measured: bench/parse.py, escape=json).
            # Unescaped (escape=none), only one value may hold raw quotes (see `_untyped`).
            pattern = _ALONE_IN_QUOTES[escape]
            if escape == "none" and cap_may_hold_spaces(tok) and not spaced_used:
                pattern, spaced_used = ".*?", True
        elif r >= 0 and tok.quoted is not None:
            pattern = tok.quoted
        elif tok.pattern is not None:
            pattern = tok.pattern
        else:
            after = tokens[i + 1] if i + 1 < len(tokens) else None
            sep = after[:1] if isinstance(after, str) else ""
            spaced = sep == " " and cap_may_hold_spaces(tok) and not spaced_used
            spaced_used = spaced_used or spaced
            pattern = _untyped(tok, sep, r >= 0, escape, spaced)
        pieces.append((label, f"(?P<{_GROUP.format(i)}>{pattern})"))
    return "".join(p for _, p in pieces) + r"\s*$", pieces


def cap_may_hold_spaces(cap: Capture) -> bool:
    """User agents, Cookie and X-Forwarded-For headers hold spaces in any layout."""
    return cap.feeds in ("user_agent", "cookie", "forwarded_for")


# A request line between spaces: `METHOD target PROTOCOL`, or fewer parts (HTTP/0.9, garbage).
_SPACED_REQUEST = r"[^ ]*(?: [^ ]+){0,2}"


def _untyped(cap: Capture, sep: str, quoted: bool, escape: str, spaced: bool) -> str:
    """The pattern of a capture without a typed one, outside "alone between quotes".

    Such a value stops at the next field separator `sep` (the first character of the literal
    after it, when that is punctuation or whitespace). This keeps the regex linear: values free
    to run over separators make a non-matching line cost O(n^k) backtracking steps (a crafted
    400-byte line took 14 s with four such values, a 64 KiB one 19 s with two). So a request
    line between spaces has its three-part shape, and only one value of a layout (`spaced`: a
    user agent, Cookie or X-Forwarded-For header) may run over a space separator; any other
    value holding its separator does not parse (quote such fields in the log format)."""
    if sep == " " and cap.feeds == "request":
        return _SPACED_REQUEST
    if not sep or sep.isalnum() or spaced:
        return _SHARED_QUOTES[escape] if quoted else _UNQUOTED
    stop = re.escape(sep) if sep != '"' else ""
    if escape == "backslash":
        return rf'(?:[^"\\{stop}]|\\.)*'
    if escape == "default" or quoted:
        return rf'[^"{stop}]*'
    return rf"[^{stop}]*"


def captures_by_group(tokens: Sequence[Token], regex: re.Pattern[str]) -> list[tuple[Capture, int]]:
    """Each distinct capture with its index into `m.groups()`."""
    out = []
    for i, tok in enumerate(tokens):
        key = _GROUP.format(i)
        if isinstance(tok, Capture) and key in regex.groupindex:
            out.append((tok, regex.groupindex[key] - 1))
    return out


def compile_layout(
    kind: str, template: str, tokens: Sequence[Token], escape: str
) -> CompiledParser:
    """Compile a token layout (nginx, Apache) with escaping `default | backslash | none`."""
    pattern, pieces = build_regex(tokens, escape)
    try:
        regex = re.compile(pattern, re.S)
    except re.error as exc:  # the typed patterns are ours: a failure here is a bug, said plainly
        raise FormatError(f"cannot compile this {kind} format: {exc}") from exc
    caps = captures_by_group(tokens, regex)
    plain = frozenset(
        regex.groupindex[_GROUP.format(i)] - 1
        for i, (_label, piece) in enumerate(pieces)
        if _GROUP.format(i) in regex.groupindex and _BACKSLASH_FREE.match(piece)
    )
    return CompiledParser(
        kind, template, regex, caps, escaped=escape != "none", pieces=pieces, plain=plain
    )


# A typed piece made only of `\d`, escaped punctuation, other literal characters and classes
# without negation (`\d{3}|-`, the CLF and ISO times, `$upstream_*` number lists) cannot match a
# backslash: its value needs no unescaping.
_BACKSLASH_FREE = re.compile(r"^\(\?P<v\d+>(?:\\[d.:/+?\-]|[^\\\[.]|\[[^\]^\\]*\])*\)$")


class CompiledParser:
    """A compiled layout. Callable: a line in, an AccessRecord (or None when it does not match).

    `source` holds the generated assembler (for tests and debugging)."""

    __slots__ = ("_assemble", "_kind", "_pieces", "_regex", "_template", "source")

    def __init__(
        self,
        kind: str,
        template: str,
        regex: re.Pattern[str],
        caps: list[tuple[Capture, int]],
        *,
        escaped: bool,
        pieces: list[tuple[str, str]] | None = None,
        plain: frozenset[int] = frozenset(),
    ) -> None:
        self._kind = kind
        self._template = template
        self._regex = regex
        self._pieces = pieces
        if not any(c.feeds == "ts" for c, _ in caps):
            raise FormatError(f"the {kind} format has no time field")
        self.source, namespace = assembler_source(
            caps, escaped=escaped, optional_groups=pieces is None, plain=plain
        )
        namespace["_match"] = regex.match
        exec(compile(self.source, f"<{kind} format {template[:40]!r}>", "exec"), namespace)  # noqa: S102 - generated from group indexes, constants and repr()'d names only
        self._assemble: Callable[[str], AccessRecord | None] = namespace["parse"]

    @property
    def regex(self) -> re.Pattern[str]:
        return self._regex

    def __call__(self, line: str) -> AccessRecord | None:
        return self._assemble(line)

    def explain(self, line: str) -> str:
        """Why `line` does not parse (for `trackd check`): where the format stops matching.

        Names the format element and the column, never the line's text (it may hold cookies)."""
        if self._regex.match(line) is not None:
            return "the time field does not hold a readable time"
        if self._pieces is None:
            return f"the line does not match the {self._kind} (anchored at the line's start)"
        end = 0
        for n in range(1, len(self._pieces) + 1):
            m = re.match("".join(p for _, p in self._pieces[:n]), line, re.S)
            if m is None:
                label = self._pieces[n - 1][0]
                return (
                    f"the line stops matching the format at {label} (column {end + 1}); "
                    "is the format exactly what the server writes?"
                )
            end = m.end()
        return f"the line has extra text after column {end} that the format does not have"

    def __repr__(self) -> str:
        return f"{self._kind.capitalize()}Parser({self._template!r})"


_HELPERS: dict[str, Any] = {
    "_u": unescape,
    "_split": split_request,
    "_int": to_int,
    "_float": to_float,
    "_Rec": AccessRecord,
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
    body.append(f"    return _Rec({', '.join(fields)})")
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
