"""Compile an nginx `log_format` into a parser (SPEC §2, format `nginx`).

Operators paste what their nginx.conf says — either the format string alone
(`$remote_addr - $remote_user [$time_local] "$request" …`) or the whole directive
(`log_format main escape=json '…' '…';`) — and get a parser for exactly that layout.

Hand-written because no maintained library compiles nginx formats to a fast matcher: the format is
turned into one anchored regex, with a typed pattern for each variable whose values have a known
shape (status, sizes, times, addresses) and, for the rest, a pattern chosen from the context: a
quoted variable runs to the closing quote (nginx escapes `"` inside values as `\\x22`, or `\\"`
with `escape=json`), an unquoted one matches lazily up to what follows it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.parse.escapes import unescape
from agent.parse.fields import dash, to_float, to_int
from agent.parse.request import split_request
from agent.parse.timefmt import ClfTime, IsoTime, parse_msec
from agent.records import AccessRecord

_VAR = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")
_DIRECTIVE_TOKEN = re.compile(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"|([^\s'\";]+)|(;)", re.S)

_TYPED = {
    "status": r"\d{3}|-",
    "body_bytes_sent": r"\d+|-",
    "bytes_sent": r"\d+|-",
    "request_length": r"\d+|-",
    "connection": r"\d+|-",
    "connection_requests": r"\d+|-",
    "pid": r"\d+|-",
    "remote_port": r"\d+|-",
    "server_port": r"\d+|-",
    "request_time": r"\d+(?:\.\d+)?|-",
    "msec": r"\d+(?:\.\d+)?",
    "time_local": r"\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}",
    "time_iso8601": r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[+-]\d{2}:\d{2}|Z)",
    "remote_addr": r"[^\s\"]+",
    "realip_remote_addr": r"[^\s\"]+",
    "scheme": r"[a-z]+|-",
}
TIME_VARIABLES = ("time_local", "time_iso8601", "msec")
_HOST_VARS = ("host", "http_host", "server_name")
_ROLE_VARS = frozenset(
    {
        *TIME_VARIABLES,
        *_HOST_VARS,
        "remote_addr",
        "realip_remote_addr",
        "request",
        "request_method",
        "request_uri",
        "uri",
        "args",
        "query_string",
        "server_protocol",
        "status",
        "body_bytes_sent",
        "bytes_sent",
        "http_referer",
        "http_user_agent",
        "http_cookie",
        "request_time",
        "http_x_forwarded_for",
    }
)


class NginxFormatError(ValueError):
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
    tokens = [m for m in _DIRECTIVE_TOKEN.finditer(stripped)]
    words: list[str] = []
    strings: list[str] = []
    escape = "default"
    for m in tokens[1:]:
        single, double, bare, semi = m.groups()
        if semi:
            break
        if single is not None or double is not None:
            raw = single if single is not None else double
            assert raw is not None
            strings.append(re.sub(r"\\(.)", r"\1", raw))
        elif bare is not None:
            if strings:
                strings.append(bare)
            elif bare.startswith("escape="):
                escape = bare.partition("=")[2]
            else:
                words.append(bare)
    if escape not in ("default", "json", "none"):
        raise NginxFormatError(f"unknown escape={escape} (nginx knows default, json and none)")
    if not strings:
        raise NginxFormatError("the log_format directive has no format string")
    return NginxFormat("".join(strings), escape)


def _tokens(template: str) -> list[tuple[str, str]]:
    """Split a template into ("lit", text) and ("var", name) tokens."""
    out: list[tuple[str, str]] = []
    pos = 0
    for m in _VAR.finditer(template):
        if m.start() > pos:
            out.append(("lit", template[pos : m.start()]))
        out.append(("var", m.group(1) or m.group(2)))
        pos = m.end()
    if pos < len(template):
        out.append(("lit", template[pos:]))
    return out


def compile_nginx(text: str) -> NginxParser:
    """Compile a log_format (string or directive); raises NginxFormatError with a fix hint."""
    fmt = read_log_format(text)
    tokens = _tokens(fmt.template)
    names = [v for k, v in tokens if k == "var"]
    if not names:
        raise NginxFormatError("the format has no $variables (paste the log_format string)")
    if not any(t in names for t in TIME_VARIABLES):
        raise NginxFormatError(
            "the format has no time variable: trackd needs $time_local, $time_iso8601 or $msec "
            "to give events their time"
        )
    if "request" not in names and "request_uri" not in names and "uri" not in names:
        raise NginxFormatError(
            "the format has no request: trackd needs $request (or $request_uri / $uri) for paths"
        )
    parts: list[str] = []
    seen: set[str] = set()
    for i, (kind, value) in enumerate(tokens):
        if kind == "lit":
            parts.append(re.escape(value))
            continue
        if value in seen:
            parts.append(f"(?P={_group(value)})")
            continue
        seen.add(value)
        before = tokens[i - 1][1] if i > 0 and tokens[i - 1][0] == "lit" else ""
        after = tokens[i + 1][1] if i + 1 < len(tokens) and tokens[i + 1][0] == "lit" else ""
        parts.append(f"(?P<{_group(value)}>{_pattern(value, before, after, fmt.escape)})")
    regex = re.compile("".join(parts) + r"\s*$", re.S)
    return NginxParser(fmt, regex, names)


def _group(name: str) -> str:
    return f"v_{name}"


def _pattern(name: str, before: str, after: str, escape: str) -> str:
    quoted = before.endswith('"') and after.startswith('"')
    if quoted:
        if escape == "json":
            return r'[^"\\]*(?:\\.[^"\\]*)*'
        if escape == "default":
            return r'[^"]*'
        return r".*?"
    typed = _TYPED.get(name)
    if typed is not None:
        return typed
    if name in ("request_uri", "uri"):
        return r"\S*"
    if not after:
        return r".*?"
    # Unquoted and untyped: lazily up to what follows; the anchored regex backtracks if a value
    # happens to contain that text.
    return r".*?"


class NginxParser:
    """A compiled nginx log_format. Callable: a line in, an AccessRecord (or None) out.

    The per-line assembler (groups -> AccessRecord) is generated as Python source for the exact
    variables of the format, so the hot path has no per-field lookups or branches for variables
    the format does not have. Only group indexes and known helper names enter the generated code.
    """

    __slots__ = ("_assemble", "_fmt", "_regex", "source")

    def __init__(self, fmt: NginxFormat, regex: re.Pattern[str], names: list[str]) -> None:
        self._fmt = fmt
        self._regex = regex
        index = {n: regex.groupindex[_group(n)] - 1 for n in names if _group(n) in regex.groupindex}
        self.source = _assembler_source(index, fmt.escape != "none")
        namespace: dict[str, object] = {
            "_match": regex.match,
            "_clf": ClfTime(),
            "_iso": IsoTime(),
            "_msec": parse_msec,
            "_u": unescape,
            "_split": split_request,
            "_int": to_int,
            "_float": to_float,
            "_dash": dash,
            "_Rec": AccessRecord,
        }
        exec(compile(self.source, f"<nginx log_format {fmt.template[:40]!r}>", "exec"), namespace)  # noqa: S102 - generated from group indexes only
        self._assemble = namespace["parse"]

    @property
    def regex(self) -> re.Pattern[str]:
        return self._regex

    def __call__(self, line: str) -> AccessRecord | None:
        return self._assemble(line)  # type: ignore[no-any-return,operator]

    def explain(self, line: str) -> str:
        """Why `line` does not match (for `trackd check`): how far the format got."""
        if self._regex.match(line) is not None:
            return "unreadable time value"
        tokens = _tokens(self._fmt.template)
        best = "the line does not start like the format"
        for n in range(1, len(tokens) + 1):
            partial = []
            for kind, value in tokens[:n]:
                partial.append(re.escape(value) if kind == "lit" else r".*?")
            if re.match("".join(partial), line, re.S) is None:
                kind, value = tokens[n - 1]
                what = f"${value}" if kind == "var" else repr(value)
                return f"the line stops matching the format at {what}"
            best = "the line has extra or missing text at the end"
        return best

    def __repr__(self) -> str:
        return f"NginxParser({self._fmt.template!r}, escape={self._fmt.escape})"


def _assembler_source(i: dict[str, int], escaped: bool) -> str:
    """Python source of `parse(line)` for a format whose variables sit at group indexes `i`."""

    def g(name: str) -> str:
        return f"g[{i[name]}]"

    def u(expr: str) -> str:
        # Inline the common case (no backslash) to save a call per field.
        return f'({expr} if "\\\\" not in {expr} else _u({expr}))' if escaped else expr

    def first(*names: str) -> str | None:
        return next((n for n in names if n in i), None)

    body = ["def parse(line):", "    m = _match(line)", "    if m is None:", "        return None"]
    body.append("    g = m.groups()")
    if "time_local" in i:
        body += [f"    ts = _clf({g('time_local')})", "    precision = 1.0"]
    elif "time_iso8601" in i:
        body += [f"    ts = _iso({g('time_iso8601')})", "    precision = 1.0"]
    else:
        body += [f"    ts = _msec({g('msec')})", "    precision = 0.001"]
    body += ["    if ts is None:", "        return None"]
    if "request" in i:
        body.append(f"    method, target, protocol = _split({u(g('request'))})")
    else:
        method = f"_dash({g('request_method')})" if "request_method" in i else '""'
        body.append(f"    method = {method}")
        if "request_uri" in i:
            body.append(f"    target = {u(g('request_uri'))}")
        else:
            body.append(f"    target = {u(g('uri'))}")
            q = first("args", "query_string")
            if q is not None:
                body += [
                    f"    query = {g(q)}",
                    '    if query and query != "-":',
                    f'        target = target + "?" + {u("query")}',
                ]
        body.append('    protocol = ""')
    if "server_protocol" in i:
        body.append(f"    protocol = _dash({g('server_protocol')})")
    hosts = [n for n in _HOST_VARS if n in i]
    if hosts:
        expr = " or ".join(f"_dash({g(n)})" for n in hosts)
        body.append(f"    host = {expr}")
    else:
        body.append('    host = ""')
    cookies = [(n.removeprefix("cookie_"), i[n]) for n in i if n.startswith("cookie_")]
    if cookies:
        body.append("    cookies = {}")
        for cname, idx in cookies:
            body += [
                f"    v = g[{idx}]",
                '    if v and v != "-":',
                f"        cookies[{cname!r}] = {u('v')}",
            ]
    else:
        body.append("    cookies = None")
    extra = [(n, i[n]) for n in i if n not in _ROLE_VARS and not n.startswith("cookie_")]
    if extra:
        items = ", ".join(f"{n!r}: {u(f'g[{idx}]')}" for n, idx in extra)
        body.append(f"    extra = {{{items}}}")
    else:
        body.append("    extra = None")

    ip = first("remote_addr", "realip_remote_addr")
    size = first("body_bytes_sent", "bytes_sent")
    fields = [
        "ts",
        "precision",
        g(ip) if ip else '""',
        "method",
        "target",
        "protocol",
        f"_int({g('status')})" if "status" in i else "0",
        f"_int({g(size)})" if size else "0",
        f"_dash({u(g('http_referer'))})" if "http_referer" in i else '""',
        f"_dash({u(g('http_user_agent'))})" if "http_user_agent" in i else '""',
        f"_dash({u(g('http_cookie'))})" if "http_cookie" in i else '""',
        "cookies",
        "host",
        f"_float({g('request_time')})" if "request_time" in i else "None",
        f"_dash({g('http_x_forwarded_for')})" if "http_x_forwarded_for" in i else '""',
        "extra",
    ]
    body.append(f"    return _Rec({', '.join(fields)})")
    return "\n".join(body) + "\n"
