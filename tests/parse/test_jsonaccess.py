"""The `json` access format: fields: mappings, nested keys, lists, times, extras."""

from __future__ import annotations

import calendar
from typing import Any

import pytest

from agent.parse import FormatError, build_access_parser
from agent.records import AccessRecord


def utc(*parts: int) -> float:
    return float(calendar.timegm((*parts, 0, 0, 0)))


CADDY = (
    '{"level":"info","ts":1795856400.5,"logger":"http.log.access","msg":"handled request",'
    '"request":{"remote_ip":"198.51.100.7","proto":"HTTP/2.0","method":"GET","host":"shop.example.com",'
    '"uri":"/pricing?plan=pro","headers":{"User-Agent":["Mozilla/5.0"],"Cookie":["km_ai=abc","x=1"],'
    '"X-Forwarded-For":["198.51.100.7","10.0.0.2"]},"tls":{"version":772}},'
    '"duration":0.0012,"size":10900,"status":200}'
)
CADDY_FIELDS = {
    "ip": "request.remote_ip",
    "method": "request.method",
    "target": "request.uri",
    "protocol": "request.proto",
    "host": "request.host",
    "user_agent": "request.headers.User-Agent",
    "cookie": "request.headers.Cookie",
    "forwarded_for": "request.headers.X-Forwarded-For",
    "status": "status",
    "bytes": "size",
    "request_time": "duration",
}


def parse(line: str, **kw: Any) -> AccessRecord:
    parser = build_access_parser("json", **kw)
    rec = parser(line)
    assert rec is not None, parser.explain(line)
    return rec


class TestMapping:
    def test_caddy_log_with_dotted_keys_and_header_lists(self) -> None:
        """Dotted keys reach into nested objects; header lists read as their first value,
        Cookie and X-Forwarded-For lists joined as the headers would be."""
        rec = parse(CADDY, fields=CADDY_FIELDS, time_field="ts", time_format="unix")
        assert (rec.ip, rec.method, rec.target, rec.protocol, rec.host) == (
            "198.51.100.7",
            "GET",
            "/pricing?plan=pro",
            "HTTP/2.0",
            "shop.example.com",
        )
        assert (rec.status, rec.bytes, rec.request_time) == (200, 10900, 0.0012)
        assert rec.user_agent == "Mozilla/5.0"
        assert rec.cookie_header == "km_ai=abc; x=1"
        assert rec.forwarded_for == "198.51.100.7, 10.0.0.2"
        assert rec.ts == 1795856400.5

    def test_unmapped_keys_become_dotted_extras(self) -> None:
        """Keys no field used stay available as extras, nested ones flattened."""
        rec = parse(CADDY, fields=CADDY_FIELDS, time_field="ts")
        assert rec.extra is not None
        assert rec.extra["logger"] == "http.log.access"
        assert "request.tls.version" not in rec.extra  # `request` fed fields: not an extra

    def test_reverse_orientation_is_accepted(self) -> None:
        """`{document key: our field}` works when only the value is one of our names."""
        rec = parse(
            '{"when":"2026-11-28T10:00:00-05:00","client":"1.2.3.4","req":"GET / HTTP/1.1","code":301}',
            fields={"when": "time", "client": "ip", "req": "request", "code": "status"},
        )
        assert (rec.ip, rec.status, rec.ts) == ("1.2.3.4", 301, utc(2026, 11, 28, 15, 0, 0))

    def test_cookie_fields_map_single_cookies(self) -> None:
        """`cookie.NAME: key` maps one cookie."""
        rec = parse(
            '{"time":"2026-11-28T10:00:00Z","request":"GET / HTTP/1.1","anon":"qFq2Lw"}',
            fields={"cookie.km_ai": "anon"},
        )
        assert rec.cookies == {"km_ai": "qFq2Lw"}


class TestDefaults:
    def test_nginx_escape_json_keys_need_no_mapping(self) -> None:
        """Keys named like nginx variables (or our fields) are found without `fields:`."""
        rec = parse(
            '{"time_local":"28/Nov/2026:10:00:00 +0530","remote_addr":"1.2.3.4",'
            '"request":"GET /a HTTP/1.1","status":"200","body_bytes_sent":"512",'
            '"http_user_agent":"curl/8","http_referer":"","request_time":"0.004"}'
        )
        assert (rec.ip, rec.target, rec.status, rec.bytes) == ("1.2.3.4", "/a", 200, 512)
        assert rec.user_agent == "curl/8" and rec.referrer == "" and rec.request_time == 0.004
        assert rec.ts == utc(2026, 11, 28, 4, 30, 0)

    @pytest.mark.parametrize(
        ("value", "expected", "precision"),
        [
            ("1795856400", 1795856400.0, 1.0),
            ("1795856400250", 1795856400.25, 0.001),
            ('"2026-11-28T09:00:00.250000Z"', 1795856400.25, 0.001),
            ('"2026-11-28T09:00:00.123456+00:00"', 1795856400.123456, 1e-6),
        ],
    )
    def test_auto_time_format(self, value: str, expected: float, precision: float) -> None:
        """Without time_format: epochs by magnitude (s, ms), ISO 8601 with its precision."""
        rec = parse(f'{{"ts":{value},"request":"GET / HTTP/1.1"}}')
        assert rec.ts == pytest.approx(expected) and rec.precision == precision

    def test_lines_that_are_not_objects_or_lack_a_time(self) -> None:
        """Non-JSON, non-object and time-less lines are None, each explained."""
        parser = build_access_parser("json")
        for line, reason in [
            ("GET / HTTP/1.1", "not a JSON object"),
            ("[1, 2]", "not a JSON object"),
            ('{"request": "GET / HTTP/1.1"}', "no time field"),
            ('{"time": "soon", "request": "GET /"}', "unreadable time 'soon'"),
        ]:
            assert parser(line) is None
            assert reason in parser.explain(line)


def test_unknown_field_names_are_rejected_at_their_key() -> None:
    """A mapping naming no field of ours (either way round) is an error at `fields.KEY`."""
    with pytest.raises(FormatError, match="'ua' is not a trackd field") as err:
        build_access_parser("json", fields={"ua": "agent"})
    assert err.value.key == "fields.ua"
