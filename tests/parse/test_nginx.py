"""The nginx log_format compiler."""

from __future__ import annotations

import calendar

import pytest
from hypothesis import given

from agent.parse.nginx import NginxFormatError, compile_nginx
from tests.strategies import line_bytes, loggy_text


def utc(*parts: int) -> float:
    return float(calendar.timegm((*parts, 0, 0, 0)))


DIRECTIVE = """log_format main escape=default '$remote_addr - $remote_user [$time_local] "$request" '
                '$status $body_bytes_sent "$http_referer" "$http_user_agent" '
                '$request_time "$http_x_forwarded_for" $cookie_km_ai $host';"""


class TestCompile:
    def test_pasted_directive_is_accepted(self) -> None:
        """The whole `log_format name '…' '…';` directive compiles like the bare string."""
        parser = compile_nginx(DIRECTIVE)
        rec = parser(
            '10.0.0.1 - - [28/Nov/2026:10:00:00 +0100] "GET /a?b=1 HTTP/2.0" 200 512 "-" '
            '"Mozilla/5.0" 0.004 "198.51.100.7, 10.0.0.1" qFq2LweZugF shop.example.com'
        )
        assert rec is not None
        assert rec.ts == utc(2026, 11, 28, 9, 0, 0)
        assert rec.target == "/a?b=1" and rec.status == 200 and rec.bytes == 512
        assert rec.referrer == "" and rec.user_agent == "Mozilla/5.0"
        assert rec.request_time == 0.004
        assert rec.forwarded_for == "198.51.100.7, 10.0.0.1"
        assert rec.cookies == {"km_ai": "qFq2LweZugF"}
        assert rec.host == "shop.example.com"
        assert rec.extra == {"remote_user": "-"}

    def test_msec_gives_millisecond_precision(self) -> None:
        """`$msec` is a fractional epoch with a 1 ms precision interval."""
        parser = compile_nginx('$msec "$request" $status')
        rec = parser('1795856400.123 "GET / HTTP/1.1" 204')
        assert rec is not None
        assert rec.ts == pytest.approx(1795856400.123)
        assert rec.precision == 0.001

    def test_iso8601_time(self) -> None:
        """`$time_iso8601` with an offset converts to UTC."""
        parser = compile_nginx('[$time_iso8601] "$request" $status')
        rec = parser('[2026-11-28T10:00:00-05:00] "GET / HTTP/1.1" 200')
        assert rec is not None and rec.ts == utc(2026, 11, 28, 15, 0, 0)

    def test_json_escaping(self) -> None:
        """With escape=json a quoted value may hold `\\"`."""
        parser = compile_nginx(
            'log_format j escape=json \'[$time_local] "$request" $status "$http_user_agent"\';'
        )
        rec = parser('[28/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 "a \\"quoted\\" agent"')
        assert rec is not None and rec.user_agent == 'a "quoted" agent'

    @pytest.mark.parametrize(
        ("fmt", "needle"),
        [
            ('"$request" $status', "no time variable"),
            ("[$time_local] $status", "no request"),
            ("plain text", "no $variables"),
            ("log_format x escape=xml '$time_local $request';", "unknown escape=xml"),
        ],
    )
    def test_unusable_formats_say_why(self, fmt: str, needle: str) -> None:
        """A format trackd cannot use is rejected with the reason."""
        with pytest.raises(NginxFormatError, match=needle.replace("$", r"\$")):
            compile_nginx(fmt)

    def test_explain_points_at_the_mismatch(self) -> None:
        """explain() names where a line stops matching."""
        parser = compile_nginx('$remote_addr [$time_local] "$request" $status')
        assert "stops matching" in parser.explain("1.2.3.4 GET /")


@given(line_bytes)
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    """Any bytes into a compiled nginx parser give a record or None, never an exception."""
    parser = compile_nginx(DIRECTIVE)
    text = data.decode("utf-8", "replace")
    if parser(text) is None:
        assert isinstance(parser.explain(text), str)


@given(loggy_text)
def test_log_like_text_never_raises(text: str) -> None:
    """Log-ish text never makes the nginx parser raise."""
    compile_nginx(DIRECTIVE)(text)
