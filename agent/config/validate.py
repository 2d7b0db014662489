"""Checks that span keys or need more than a type: run on the raw YAML data, beside pydantic.

Working on the raw data (defensively: any part may have the wrong shape) lets these checks run
even when pydantic rejects something else, so one `trackd check` reports every problem at once.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from agent.config.rulefields import SourceFields, template_fields
from agent.config.yamlmarks import Path
from agent.parse import FormatError, build_parser
from agent.parse.registry import ACCESS_FORMATS, APP_FORMATS
from agent.parse.timefmt import TIME_FORMATS, check_strftime

Finding = tuple[Path, str]

_TEMPLATE_FIELD = re.compile(r"\{([^{}]*)\}")
_FIELD_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-@]*$")
_COOKIE_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_LISTEN = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]+):(\d{1,5})$")


def semantic_findings(data: Any) -> list[Finding]:
    """Every cross-key problem in a raw config mapping."""
    if not isinstance(data, dict):
        return []
    out: list[Finding] = []
    sources = data.get("sources")
    source_fields: dict[str, SourceFields | None] = {}
    if isinstance(sources, list):
        out.extend(_sources(sources, source_fields))
    events = data.get("events")
    if isinstance(events, dict):
        out.extend(_pageviews(events.get("pageviews")))
        rules = events.get("rules")
        if isinstance(rules, list):
            out.extend(_rules(rules, source_fields))
    identity = data.get("identity")
    if isinstance(identity, dict):
        for key in ("anonymous_cookies", "named_cookies", "session_cookies"):
            out.extend(_cookie_names(identity.get(key), ("identity", key)))
    privacy = data.get("privacy")
    if isinstance(privacy, dict):
        optout = privacy.get("optout_cookie")
        if isinstance(optout, str) and not _COOKIE_NAME.match(optout):
            out.append((("privacy", "optout_cookie"), f"invalid cookie name {optout!r}"))
    sink = data.get("sink")
    if isinstance(sink, dict):
        out.extend(_sink(sink))
    metrics = data.get("metrics")
    if isinstance(metrics, dict):
        listen = metrics.get("listen")
        if isinstance(listen, str) and listen and not _valid_listen(listen):
            out.append(
                (
                    ("metrics", "listen"),
                    f"invalid address {listen!r} (use host:port, e.g. 127.0.0.1:9880; "
                    '"" disables the metrics server)',
                )
            )
    return out


def _valid_listen(listen: str) -> bool:
    m = _LISTEN.match(listen)
    return m is not None and 0 <= int(m.group(2)) <= 65535


def _sources(sources: list[Any], known: dict[str, SourceFields | None]) -> Iterator[Finding]:
    """Each source's problems; `known` gets each valid source name and what its records hold
    (None when its format did not build: its fields are then not checked)."""
    seen: dict[str, int] = {}
    for i, src in enumerate(sources):
        if not isinstance(src, dict):
            continue
        base: Path = ("sources", i)
        name = src.get("name")
        kind = src.get("kind")
        if isinstance(name, str):
            if name in seen:
                yield (
                    (*base, "name"),
                    f"duplicate source name {name!r} (also sources[{seen[name]}])",
                )
            else:
                seen[name] = i
                if kind in ("access", "app"):
                    known[name] = None
        fmt = src.get("format")
        if kind in ("access", "app") and isinstance(fmt, str):
            allowed = ACCESS_FORMATS if kind == "access" else APP_FORMATS
            if fmt not in allowed:
                hint = ""
                other = APP_FORMATS if kind == "access" else ACCESS_FORMATS
                if fmt in other:
                    hint = f"; {fmt!r} is a format of {'app' if kind == 'access' else 'access'} sources"
                yield (
                    (*base, "format"),
                    f"unknown format {fmt!r} (expected one of: {', '.join(allowed)}){hint}",
                )
            built: list[SourceFields] = []
            yield from _format_options(src, base, kind, fmt, built)
            if isinstance(name, str) and seen.get(name) == i and built:
                known[name] = built[0]
        elif isinstance(fmt, str) and fmt not in ACCESS_FORMATS and fmt not in APP_FORMATS:
            # The kind is invalid (pydantic says so): the format can still be wrong for every
            # kind, and saying so now saves a second round of `trackd check`.
            formats = ", ".join(dict.fromkeys((*ACCESS_FORMATS, *APP_FORMATS)))
            yield (*base, "format"), f"unknown format {fmt!r} (expected one of: {formats})"
        base_url = src.get("base_url")
        if isinstance(base_url, str) and not re.match(r"^https?://[^/\s?#]+/?$", base_url):
            yield (
                (*base, "base_url"),
                f"invalid base_url {base_url!r} (expected scheme and host, "
                "e.g. https://www.example.com)",
            )
        paths = src.get("paths")
        if isinstance(paths, list):
            for j, p in enumerate(paths):
                if isinstance(p, str) and not p.strip():
                    yield (*base, "paths", j), "empty path"
        tz = src.get("timezone")
        if isinstance(tz, str) and not _valid_zone(tz):
            yield (
                (*base, "timezone"),
                f"unknown time zone {tz!r} (use an IANA name like Europe/Paris)",
            )


def _valid_zone(tz: Any) -> bool:
    if tz == "UTC":
        return True
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        return False
    return True


def _format_options(
    src: dict[str, Any], base: Path, kind: str, fmt: str, built: list[SourceFields]
) -> Iterator[Finding]:
    log_format = src.get("log_format")
    if fmt in ("nginx", "apache"):
        if not isinstance(log_format, str) or not log_format.strip():
            example = (
                "'$remote_addr - $remote_user [$time_local] \"$request\" $status …'"
                if fmt == "nginx"
                else "'%h %l %u %t \"%r\" %>s %b'"
            )
            yield (
                (*base, "log_format"),
                f"required for format {fmt} (paste the {fmt} log format string, e.g. {example})",
            )
    elif log_format is not None:
        yield (*base, "log_format"), f"only used by the nginx and apache formats, not {fmt!r}"
    rx = src.get("regex")
    if fmt == "regex":
        if not isinstance(rx, str):
            yield (
                (*base, "regex"),
                "required for format regex (a regular expression with named groups)",
            )
    elif rx is not None:
        yield (*base, "regex"), f"only used by the regex format, not {fmt!r}"
    if src.get("fields") is not None and not (kind == "access" and fmt == "json"):
        yield (*base, "fields"), "only used by access sources in the json format"
    time_format = src.get("time_format")
    if isinstance(time_format, str) and time_format not in TIME_FORMATS:
        if "%" not in time_format:
            yield (
                (*base, "time_format"),
                f"unknown time format {time_format!r} (expected iso8601, unix, unix_ms or a "
                "strftime pattern like '%Y-%m-%d %H:%M:%S')",
            )
        try:
            check_strftime(time_format)
        except ValueError as exc:
            yield (*base, "time_format"), str(exc)
    if kind == "access":
        for key in ("time_field", "time_format"):
            if src.get(key) is not None and fmt not in ("json", "regex"):
                yield (*base, key), "only used by app sources and the json/regex access formats"
    yield from _compile(src, base, kind, fmt, built)


@dataclass(frozen=True, slots=True)
class _RawSource:
    """The parser-relevant keys of a raw source mapping (a `SourceSpec`)."""

    kind: str
    format: str
    log_format: str | None
    regex: str | None
    fields: dict[str, str] | None
    time_field: str | None
    time_format: str | None
    timezone: str


def _compile(
    src: dict[str, Any], base: Path, kind: str, fmt: str, built: list[SourceFields]
) -> Iterator[Finding]:
    """Build the source's parser as `run` will, so that a log_format, regex, fields or
    time_format that cannot work is an error now, at its YAML path, not a failure at start.
    What the built parser's records can hold goes to `built`."""
    allowed = ACCESS_FORMATS if kind == "access" else APP_FORMATS
    values = {k: src.get(k) for k in ("log_format", "regex", "time_field", "time_format")}
    fields = src.get("fields")
    if fmt not in allowed or not all(v is None or isinstance(v, str) for v in values.values()):
        return  # reported above, or a type error pydantic reports
    if fmt in ("nginx", "apache") and not (values["log_format"] or "").strip():
        return
    if fmt == "regex" and values["regex"] is None:
        return
    if fields is not None and not (
        isinstance(fields, dict) and all(isinstance(x, str) for kv in fields.items() for x in kv)
    ):
        return
    tz = src.get("timezone", "UTC")
    if not _valid_zone(tz):
        tz = "UTC"  # reported at sources[i].timezone; check the rest as if it were UTC
    spec = _RawSource(kind, fmt, fields=fields, timezone=tz, **values)
    try:
        parser = build_parser(spec)
    except FormatError as exc:
        key, _, sub = (exc.key or "format").partition(".")
        yield ((*base, key, sub) if sub else (*base, key)), str(exc)
        return
    built.append(SourceFields(str(src.get("name")), kind, fmt, _captured(spec, parser)))


def _captured(spec: _RawSource, parser: object) -> frozenset[str] | None:
    """The names a built parser's records may hold besides SPEC §2's (None: any name)."""
    if spec.kind == "app":
        if spec.format == "regex" and spec.regex is not None:
            return frozenset(re.compile(spec.regex).groupindex)
        return None
    if spec.format in ("combined", "common", "combined_cookie"):
        return frozenset()
    names = getattr(parser, "names", None)  # nginx, apache, regex: what the layout captures
    return frozenset(names) if names is not None else None


def _cookie_names(value: Any, path: Path) -> Iterator[Finding]:
    if isinstance(value, list):
        for i, name in enumerate(value):
            if isinstance(name, str) and not _COOKIE_NAME.match(name):
                yield (*path, i), f"invalid cookie name {name!r}"


def _pageviews(pv: Any) -> Iterator[Finding]:
    if not isinstance(pv, dict):
        return
    methods = pv.get("methods")
    if isinstance(methods, list):
        for i, m in enumerate(methods):
            if isinstance(m, str) and not re.match(r"^[A-Z]+$", m):
                yield (
                    ("events", "pageviews", "methods", i),
                    f"invalid HTTP method {m!r} (use upper case, e.g. GET)",
                )
    patterns = pv.get("bot_patterns")
    if isinstance(patterns, list):
        for i, p in enumerate(patterns):
            if isinstance(p, str):
                try:
                    re.compile(p)
                except re.error as exc:
                    yield ("events", "pageviews", "bot_patterns", i), f"invalid regex: {exc}"


def _rules(rules: list[Any], known: dict[str, SourceFields | None]) -> Iterator[Finding]:
    seen: dict[str, int] = {}
    identify_by_source: dict[str, dict[str, Any]] = {}
    for rule in rules:
        if isinstance(rule, dict) and isinstance(rule.get("identify"), dict):
            src = rule.get("source")
            if isinstance(src, str) and src not in identify_by_source:
                identify_by_source[src] = rule["identify"]
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict):
            continue
        base: Path = ("events", "rules", i)
        name = rule.get("name")
        if isinstance(name, str):
            if name in seen:
                yield (
                    (*base, "name"),
                    f"duplicate rule name {name!r} (also events.rules[{seen[name]}])",
                )
            else:
                seen[name] = i
        source = rule.get("source")
        fields = None
        if isinstance(source, str):
            if source not in known:
                names = ", ".join(sorted(known)) or "none configured"
                yield (*base, "source"), f"unknown source {source!r} (sources: {names})"
            fields = known.get(source)
        actions = [
            k
            for k in ("event", "identify", "logout", "identity_change", "page_name")
            if rule.get(k)
        ]
        if not actions:
            yield (
                base,
                ("a rule needs an action: event, identify, logout, identity_change or page_name"),
            )
        if rule.get("properties") and not rule.get("event"):
            yield (*base, "properties"), "only used with event: (the track message's properties)"
        if rule.get("logout") is True and isinstance(source, str):
            ident = identify_by_source.get(source)
            if ident is None or not (ident.get("session") or ident.get("device")):
                yield (
                    (*base, "logout"),
                    f"'logout: true' needs an identify rule on source {source!r} with a session "
                    'or device template (or write logout: {session: "{session_id}"})',
                )
        match = rule.get("match")
        if isinstance(match, dict):
            yield from _match(match, (*base, "match"), fields)
        yield from _templates(rule, base, fields)


def _match(match: dict[str, Any], base: Path, fields: SourceFields | None) -> Iterator[Finding]:
    for field, value in match.items():
        path = (*base, field)
        problem = fields.problem(str(field)) if fields is not None else None
        if problem is not None:
            yield path, problem
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, dict):
                if set(v) != {"regex"} or not isinstance(v.get("regex"), str):
                    yield path, "a mapping here must be {regex: PATTERN}"
                    continue
                try:
                    re.compile(v["regex"])
                except re.error as exc:
                    yield path, f"invalid regex: {exc}"
            elif isinstance(v, list) or v is None:
                yield path, "expected a value, a list of values, or {regex: PATTERN}"
            elif (
                field == "status"
                and isinstance(v, str)
                and not re.match(r"^[1-5]([0-9]{2}|xx)$", v)
            ):
                yield path, f"invalid status {v!r} (use a code like 404 or a class like 2xx)"


def _templates(rule: dict[str, Any], base: Path, fields: SourceFields | None) -> Iterator[Finding]:
    def check(value: Any, path: Path) -> Iterator[Finding]:
        if isinstance(value, str):
            if value.count("{") != value.count("}"):
                yield path, f"unbalanced braces in template {value!r}"
                return
            for field in _TEMPLATE_FIELD.findall(value):
                if not _FIELD_NAME.match(field):
                    yield path, f"invalid field name {{{field}}} in template {value!r}"
            for field in dict.fromkeys(template_fields(value)):
                problem = fields.problem(field) if fields is not None else None
                if problem is not None and _FIELD_NAME.match(field):
                    yield path, f"template {value!r}: {problem}"
        elif isinstance(value, dict):
            for k, v in value.items():
                yield from check(v, (*path, k))

    for key in ("properties", "identify", "logout", "identity_change", "page_name"):
        if key in rule:
            yield from check(rule[key], (*base, key))


#: Segment's limit of messages per batch request (SPEC §4).
SEGMENT_MAX_BATCH = 2500


def _sink(sink: dict[str, Any]) -> Iterator[Finding]:
    kind = sink.get("type", "file")
    url = sink.get("url")
    if isinstance(url, str) and not re.match(r"^https?://[^/\s]+", url):
        yield ("sink", "url"), f"invalid URL {url!r} (expected http:// or https://…)"
    for key in ("api_key", "write_key", "token"):
        if key in sink and f"{key}_file" in sink:
            yield ("sink", key), f"give either {key} or {key}_file, not both"
    if kind == "file" and isinstance(sink.get("path"), str) and not sink["path"].strip():
        yield ("sink", "path"), 'empty path (use a file path, or "-" for stdout)'
    batch = sink.get("batch")
    max_events = batch.get("max_events") if isinstance(batch, dict) else None
    if kind == "segment" and isinstance(max_events, int) and max_events > SEGMENT_MAX_BATCH:
        yield (
            ("sink", "batch", "max_events"),
            f"{max_events} is over Segment's {SEGMENT_MAX_BATCH} messages per request "
            f"(use at most {SEGMENT_MAX_BATCH}; larger batches are split by size anyway)",
        )
    proxy = sink.get("proxy")
    if isinstance(proxy, str) and not re.match(r"^(https?|socks5h?)://[^/\s]+", proxy):
        yield ("sink", "proxy"), f"invalid proxy URL {proxy!r} (expected http://host:port)"
    tls = sink.get("tls")
    ca_file = tls.get("ca_file") if isinstance(tls, dict) else None
    if isinstance(ca_file, str) and tls is not None and tls.get("insecure_skip_verify") is True:
        yield (
            ("sink", "tls", "ca_file"),
            "ca_file has no effect with insecure_skip_verify: true (drop one of them)",
        )
