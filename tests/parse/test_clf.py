"""The common / combined / combined_cookie parsers."""

from __future__ import annotations

import calendar

from hypothesis import given

from agent.parse import build_access_parser
from tests.strategies import line_bytes, loggy_text


def utc(*parts: int) -> float:
    return float(calendar.timegm((*parts, 0, 0, 0)))


COMBINED = (
    '203.0.113.9 - frank [10/Oct/2026:13:55:36 -0700] "GET /apache_pb.gif?x=1 HTTP/1.0" 200 2326 '
    '"http://www.example.com/start.html" "Mozilla/4.08 [en] (Win98; I ;Nav)"'
)


class TestCombined:
    def test_fields_round_trip(self) -> None:
        """A combined line gives every field, and the time in UTC."""
        rec = build_access_parser("combined")(COMBINED)
        assert rec is not None
        assert rec.ip == "203.0.113.9"
        assert (rec.method, rec.target, rec.protocol) == ("GET", "/apache_pb.gif?x=1", "HTTP/1.0")
        assert (rec.status, rec.bytes) == (200, 2326)
        assert rec.referrer == "http://www.example.com/start.html"
        assert rec.user_agent == "Mozilla/4.08 [en] (Win98; I ;Nav)"
        # 13:55:36 at -0700 is 20:55:36 UTC.
        assert rec.ts == utc(2026, 10, 10, 20, 55, 36)
        assert rec.precision == 1.0

    def test_positive_offset_converts_to_utc(self) -> None:
        """+0530 is subtracted: 10:00 IST is 04:30 UTC."""
        rec = build_access_parser("common")(
            '1.1.1.1 - - [28/Nov/2026:10:00:00 +0530] "GET / HTTP/1.1" 200 -'
        )
        assert rec is not None
        assert rec.ts == utc(2026, 11, 28, 4, 30, 0)
        assert rec.bytes == 0

    def test_apache_and_nginx_escapes_are_undone(self) -> None:
        """Apache's `\\"` and nginx's `\\xHH` inside quoted fields come back as the bytes logged."""
        parser = build_access_parser("combined")
        apache = parser(COMBINED.replace("Mozilla/4.08", 'Moz\\"illa'))
        nginx = parser(COMBINED.replace("Mozilla/4.08", "Moz\\x22illa \\xD0\\xB0"))
        assert apache is not None and apache.user_agent.startswith('Moz"illa')
        assert nginx is not None and nginx.user_agent.startswith('Moz"illa а')

    def test_invalid_date_is_not_a_record(self) -> None:
        """31 February is rejected, and explain() says the time is the problem."""
        parser = build_access_parser("combined")
        line = COMBINED.replace("10/Oct/2026", "31/Feb/2026")
        assert parser(line) is None
        assert "unreadable time" in parser.explain(line)

    def test_cookie_field(self) -> None:
        """combined_cookie keeps the raw Cookie header; `-` means none."""
        parser = build_access_parser("combined_cookie")
        rec = parser(COMBINED + ' "km_ai=abc%3D; km_ni=bob"')
        none = parser(COMBINED + ' "-"')
        assert rec is not None and rec.cookie_header == "km_ai=abc%3D; km_ni=bob"
        assert none is not None and none.cookie_header == ""

    def test_garbage_request_line_still_parses(self) -> None:
        """A scanner's binary request is kept as a record (the page-view filter drops it)."""
        rec = build_access_parser("combined")(
            COMBINED.replace("GET /apache_pb.gif?x=1 HTTP/1.0", "\\x16\\x03\\x01")
        )
        assert rec is not None
        assert rec.method != "GET"


@given(line_bytes)
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    """Any byte sequence either parses or returns None, in every CLF variant."""
    text = data.decode("utf-8", "replace")
    for fmt in ("common", "combined", "combined_cookie"):
        parser = build_access_parser(fmt)
        if parser(text) is None:
            assert isinstance(parser.explain(text), str)


@given(loggy_text)
def test_log_like_text_never_raises(text: str) -> None:
    """Text built from log-ish characters never makes a parser raise."""
    for fmt in ("common", "combined", "combined_cookie"):
        build_access_parser(fmt)(text)
