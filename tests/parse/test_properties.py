"""Properties of every parser (SCENARIOS C.42): arbitrary input never raises, and lines rendered
the way each server writes them parse back to the values rendered."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.parse import build_access_parser, build_app_parser
from agent.parse.app import logfmt_fields
from agent.records import AccessRecord, AppRecord, Continuation
from tests.strategies import (
    addresses,
    aware_times,
    cookie_values,
    header_text,
    line_bytes,
    loggy_text,
    methods,
    target_text,
)

NGINX_FORMATS = [
    '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
    '"$http_referer" "$http_user_agent" "$http_cookie" $request_time',
    'log_format j escape=json \'{"t":"$time_iso8601","r":"$request","s":$status,'
    '"ua":"$http_user_agent","up":"$upstream_status"}\';',
    'log_format n escape=none \'$msec "$request_method $uri$is_args$args" $status '
    "$upstream_addr $upstream_response_time $cookie_km_ai $http_x_forwarded_for';",
    "$remote_addr\t$time_local\t$request\t$status\t$http_user_agent",
]
APACHE_FORMATS = [
    '%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-Agent}i" "%{Cookie}i"',
    '%v:%p %a %{%d/%b/%Y %T}t.%{msec_frac}t %{%z}t "%m %U%q %H" %<s %>s %O %D %{km_ai}C',
    "%{usec}t %400,501{User-agent}i %r %% %X",
]
REGEX = (
    r'^(?P<ip>\S+) \[(?P<time>[^\]]+)\] "(?P<request>[^"]*)" (?P<status>\d+)'
    r'(?: "(?P<user_agent>[^"]*)")?(?: (?P<cookie_km_ai>\S+))?'
)


def access_parsers() -> list[Any]:
    return [
        *(build_access_parser(f) for f in ("common", "combined", "combined_cookie")),
        *(build_access_parser("nginx", f) for f in NGINX_FORMATS),
        *(build_access_parser("apache", f) for f in APACHE_FORMATS),
        build_access_parser("json"),
        build_access_parser("json", fields={"ip": "a.b", "request": "r", "time": "t"}),
        build_access_parser("regex", regex=REGEX),
    ]


def app_parsers() -> list[Any]:
    return [
        build_app_parser("json", time_field=None, time_format=None),
        build_app_parser("json", time_field="a.t", time_format="unix_ms"),
        build_app_parser("logfmt", time_field=None, time_format=None),
        build_app_parser("logfmt", time_field="t", time_format="%Y-%m-%d %H:%M:%S"),
        build_app_parser(
            "regex", regex=r"^(?P<ts>\S+) (?P<msg>.*)$", time_field=None, time_format=None
        ),
    ]


ACCESS = access_parsers()
APP = app_parsers()


def check_never_raises(text: str) -> None:
    for parser in ACCESS:
        rec = parser(text)
        if rec is None:
            assert isinstance(parser.explain(text), str)
        else:
            assert isinstance(rec, AccessRecord) and isinstance(rec.ts, float)
    for parser in APP:
        out = parser(text)
        if out is None:
            assert isinstance(parser.explain(text), str)
        else:
            assert isinstance(out, AppRecord | Continuation)


@given(line_bytes)
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    """Any bytes (decoded as the pipeline does) into every access and app parser: a record, a
    continuation or None — and explain() works on whatever did not parse."""
    check_never_raises(data.decode("utf-8", "replace"))


@given(loggy_text)
def test_log_like_text_never_raises(text: str) -> None:
    """Text made of log-ish characters (quotes, brackets, backslashes) never raises."""
    check_never_raises(text)


@given(st.text(max_size=300))
def test_any_unicode_text_never_raises(text: str) -> None:
    """Any Unicode text (surrogates included) never raises."""
    check_never_raises(text)


# --- render -> parse round trips ------------------------------------------------------------


def apache_escape(value: str) -> str:
    """As Apache's ap_escape_logitem writes a value: `\\"`, `\\\\`, letter escapes, `\\xhh`."""
    out = []
    for byte in value.encode("utf-8"):
        ch = chr(byte)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch in "\b\n\r\t\v":
            out.append("\\" + "bnrtv"["\b\n\r\t\v".index(ch)])
        elif 0x20 <= byte < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


def nginx_escape(value: str) -> str:
    """As nginx's default escaping writes a value: `"`, `\\`, controls and >= 0x7F as `\\xHH`."""
    out = []
    for byte in value.encode("utf-8"):
        if byte in (0x22, 0x5C) or byte < 0x20 or byte >= 0x7F:
            out.append(f"\\x{byte:02X}")
        else:
            out.append(chr(byte))
    return "".join(out)


def json_escape(value: str) -> str:
    """As nginx's escape=json writes a value (controls as \\uXXXX or letters, UTF-8 raw)."""
    return json.dumps(value, ensure_ascii=False)[1:-1]


def clf(dt: datetime) -> str:
    return dt.strftime("%d/%b/%Y:%H:%M:%S %z")


hits = st.fixed_dictionaries(
    {
        "ip": addresses,
        "when": aware_times,
        "method": methods,
        "target": target_text,
        "status": st.integers(min_value=100, max_value=599),
        "bytes": st.integers(min_value=0, max_value=10**9),
        "referrer": header_text,
        "agent": header_text,
        "cookie": header_text,
        "km_ai": cookie_values,
        "request_time": st.integers(min_value=0, max_value=10**6).map(lambda ms: ms / 1000),
    }
)


def dash(value: str) -> str:
    return value or "-"


def assert_hit(rec: AccessRecord | None, hit: dict[str, Any], *, cookie: bool = True) -> None:
    assert rec is not None
    assert rec.ts == hit["when"].timestamp()
    assert (rec.ip, rec.method, rec.target, rec.protocol) == (
        hit["ip"],
        hit["method"],
        hit["target"],
        "HTTP/1.1",
    )
    assert (rec.status, rec.bytes) == (hit["status"], hit["bytes"])
    assert (rec.referrer, rec.user_agent) == (hit["referrer"], hit["agent"])
    if cookie:
        assert rec.cookie_header == hit["cookie"]


@given(hits)
def test_apache_combined_cookie_round_trip(hit: dict[str, Any]) -> None:
    """A hit rendered by Apache's combined + Cookie LogFormat (its escaping, `-` for empty and
    for 0 bytes, any UTC offset) parses back — with the apache compiler and combined_cookie."""
    line = (
        f'{hit["ip"]} - - [{clf(hit["when"])}] "{apache_escape(hit["method"] + " " + hit["target"] + " HTTP/1.1")}" '
        f'{hit["status"]} {hit["bytes"] or "-"} "{dash(apache_escape(hit["referrer"]))}" '
        f'"{dash(apache_escape(hit["agent"]))}" "{dash(apache_escape(hit["cookie"]))}"'
    )
    assert_hit(build_access_parser("apache", APACHE_FORMATS[0])(line), hit)
    assert_hit(build_access_parser("combined_cookie")(line), hit)


@given(hits)
def test_nginx_default_escaping_round_trip(hit: dict[str, Any]) -> None:
    """A hit rendered by nginx with its default `\\xHH` escaping parses back, `$cookie_` and
    `$request_time` included."""
    fmt = (
        '$remote_addr [$time_local] "$request" $status $body_bytes_sent "$http_referer" '
        '"$http_user_agent" "$http_cookie" $cookie_km_ai $request_time'
    )
    line = (
        f'{hit["ip"]} [{clf(hit["when"])}] "{nginx_escape(hit["method"] + " " + hit["target"] + " HTTP/1.1")}" '
        f'{hit["status"]} {hit["bytes"]} "{dash(nginx_escape(hit["referrer"]))}" '
        f'"{dash(nginx_escape(hit["agent"]))}" "{dash(nginx_escape(hit["cookie"]))}" '
        f"{hit['km_ai']} {hit['request_time']:.3f}"
    )
    rec = build_access_parser("nginx", fmt)(line)
    assert_hit(rec, hit)
    assert rec is not None
    assert rec.cookies == {"km_ai": hit["km_ai"]}
    assert rec.request_time == pytest.approx(hit["request_time"])


@given(hits)
def test_nginx_escape_json_round_trip(hit: dict[str, Any]) -> None:
    """A hit rendered by an escape=json format (JSON escapes, raw UTF-8, `""` for empty)
    parses back, with its ISO 8601 time in any offset."""
    fmt = (
        'log_format j escape=json \'{"time":"$time_iso8601","ip":"$remote_addr",'
        '"request":"$request","status":$status,"bytes":$body_bytes_sent,'
        '"ref":"$http_referer","ua":"$http_user_agent","cookie":"$http_cookie"}\';'
    )
    line = (
        f'{{"time":"{hit["when"].isoformat()}","ip":"{hit["ip"]}",'
        f'"request":"{json_escape(hit["method"] + " " + hit["target"] + " HTTP/1.1")}",'
        f'"status":{hit["status"]},"bytes":{hit["bytes"]},"ref":"{json_escape(hit["referrer"])}",'
        f'"ua":"{json_escape(hit["agent"])}","cookie":"{json_escape(hit["cookie"])}"}}'
    )
    assert_hit(build_access_parser("nginx", fmt)(line), hit)
    mapped = build_access_parser(
        "json", fields={"referrer": "ref", "user_agent": "ua", "cookie": "cookie"}
    )
    assert_hit(mapped(line), hit)


logfmt_keys = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters='="'), min_size=1
).filter(lambda k: k not in ("ts",))


def logfmt_value(value: str) -> str:
    if value and not any(c in value for c in ' ="\\') and value.isprintable():
        return value
    return json.dumps(value, ensure_ascii=False)


@given(st.dictionaries(logfmt_keys, header_text, max_size=8), aware_times)
def test_logfmt_round_trip(fields: dict[str, str], when: datetime) -> None:
    """Pairs rendered as logfmt (quoting values with spaces, quotes or escapes) parse back."""
    line = f"ts={when.isoformat()} " + " ".join(f"{k}={logfmt_value(v)}" for k, v in fields.items())
    rec = build_app_parser("logfmt", time_field="ts", time_format=None)(line)
    assert isinstance(rec, AppRecord)
    assert rec.ts == when.timestamp()
    assert {k: v for k, v in rec.fields.items() if k != "ts"} == fields
    assert logfmt_fields(line)["ts"] == when.isoformat()


ADVERSARIAL = {
    "spaces": "x " * 32000,
    "quotes": '"x" ' * 16000,
    "brackets": "[x] " * 16000,
    "digits": "1 " * 32000,
    "almost": '1.2.3.4 - - [28/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" ' + "a, " * 20000,
    "tabs": "x\t" * 32000,
    "escapes": '{"t":"' + 'x\\"' * 15000,
    "lists": "10.0.0.1:80, " * 5000 + ": " * 5000,
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("shape", sorted(ADVERSARIAL))
def test_long_crafted_lines_parse_in_linear_time(shape: str) -> None:
    """64 KiB lines shaped to make regexes backtrack (many separators, quotes, escapes) are
    rejected promptly by every parser and its explain() — no catastrophic backtracking."""
    check_never_raises(ADVERSARIAL[shape])
