"""The nginx log_format compiler: directives, escaping, every kind of variable, times."""

from __future__ import annotations

import calendar

import pytest
from hypothesis import given

from agent.parse.nginx import NginxFormatError, compile_nginx
from agent.records import AccessRecord
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


def parse(fmt: str, line: str) -> AccessRecord:
    rec = compile_nginx(fmt)(line)
    assert rec is not None, compile_nginx(fmt).explain(line)
    return rec


T = "28/Nov/2026:10:00:00 -0500"


class TestEscaping:
    def test_default_escaping_of_quotes_backslashes_and_utf8(self) -> None:
        """nginx's default `\\xHH` escapes (quote, backslash, UTF-8 bytes) are undone."""
        rec = parse(
            '[$time_local] "$request" $status "$http_user_agent" "$http_referer"',
            f'[{T}] "GET /a HTTP/1.1" 200 "x\\x22y\\x5Cz \\xD0\\xB0" "https://e.com/?q=\\xE2\\x82\\xAC"',
        )
        assert rec.user_agent == 'x"y\\z а'
        assert rec.referrer == "https://e.com/?q=€"

    def test_invalid_utf8_becomes_replacement_characters(self) -> None:
        """Escaped bytes that are not UTF-8 become U+FFFD; the line is kept (SPEC §2)."""
        rec = parse(
            '[$time_local] "$request" $status "$http_user_agent"',
            f'[{T}] "GET / HTTP/1.1" 200 "a\\xFFb"',
        )
        assert rec.user_agent == "a\ufffdb"

    def test_escape_json_values_and_empty_missing_ones(self) -> None:
        """escape=json writes `\\"`, `\\\\`, `\\u0001` and raw UTF-8, and "" for a missing value."""
        fmt = (
            'log_format j escape=json \'{"t":"$time_iso8601","r":"$request",'
            '"s":$status,"ua":"$http_user_agent","up":"$upstream_status",'
            '"rt":$request_time}\';'
        )
        rec = parse(
            fmt,
            '{"t":"2026-11-28T10:00:00+05:30","r":"GET /x HTTP/2.0","s":200,'
            '"ua":"a \\"b\\" c\\\\d\\u0001 é","up":"","rt":0.004}',
        )
        assert rec.user_agent == 'a "b" c\\d\x01 é'
        assert rec.extra == {"upstream_status": ""}
        assert rec.request_time == 0.004

    def test_escape_none_values_may_hold_quotes(self) -> None:
        """With escape=none a quoted value may contain a raw quote; the layout still splits."""
        rec = parse(
            'log_format n escape=none \'[$time_local] "$request" $status "$http_user_agent" $msec\';',
            f'[{T}] "GET / HTTP/1.1" 200 "say "hi" now" 1795878000.250',
        )
        assert rec.user_agent == 'say "hi" now'


class TestVariables:
    def test_upstream_lists_with_commas_and_colons(self) -> None:
        """`$upstream_*` lists (`, ` between servers, ` : ` between groups) stay whole."""
        rec = parse(
            '[$time_local] "$request" $status $upstream_addr $upstream_status '
            "$upstream_response_time $request_time",
            f'[{T}] "GET / HTTP/1.1" 200 10.0.0.1:80, 10.0.0.2:80 : unix:/run/app.sock '
            "502, 504 : 200 0.001, - : 0.012 0.020",
        )
        assert rec.extra == {
            "upstream_addr": "10.0.0.1:80, 10.0.0.2:80 : unix:/run/app.sock",
            "upstream_status": "502, 504 : 200",
            "upstream_response_time": "0.001, - : 0.012",
        }
        assert rec.request_time == 0.02

    def test_uri_is_args_args_as_nginx_writes_them(self) -> None:
        """`$uri$is_args$args` logs `/path-` without a query (the `-` is `$args`), and the
        decoded `$uri` may hold a space inside quotes."""
        fmt = '[$time_local] "$request_method $uri$is_args$args $server_protocol" $status'
        for logged, target in [
            ("/a?x=1&y=2", "/a?x=1&y=2"),
            ("/b-", "/b"),
            ("/c--", "/c-"),
            ("/d e-", "/d e"),
        ]:
            rec = parse(fmt, f'[{T}] "GET {logged} HTTP/1.1" 200')
            assert (rec.method, rec.target, rec.protocol) == ("GET", target, "HTTP/1.1")

    def test_scheme_host_and_request_uri_without_separators(self) -> None:
        """`$scheme://$host$request_uri` splits into host and target."""
        rec = parse(
            "[$time_local] $request_method $scheme://$host$request_uri $status",
            f"[{T}] GET https://shop.example.com/cart?id=3 200",
        )
        assert (rec.host, rec.target, rec.method) == ("shop.example.com", "/cart?id=3", "GET")
        assert rec.extra == {"scheme": "https"}

    def test_cookie_and_header_variables(self) -> None:
        """`$cookie_NAME` fills cookies (a `-` means absent); `$http_*` and `$arg_*` are extras."""
        rec = parse(
            '[$time_local] "$request" $status $cookie_km_ai $cookie_km_ni "$http_x_request_id" $arg_plan',
            f'[{T}] "GET /?plan=pro HTTP/1.1" 200 qFq2Lwe - "f00d" pro',
        )
        assert rec.cookies == {"km_ai": "qFq2Lwe"}
        assert rec.extra == {"http_x_request_id": "f00d", "arg_plan": "pro"}

    def test_forwarded_for_and_real_ip_variables(self) -> None:
        """`$proxy_add_x_forwarded_for` fills forwarded_for; `$remote_addr` outranks
        `$realip_remote_addr`, which stays an extra."""
        rec = parse(
            '$realip_remote_addr $remote_addr [$time_local] "$request" $status "$proxy_add_x_forwarded_for"',
            f'10.0.0.9 198.51.100.7 [{T}] "GET / HTTP/1.1" 200 "198.51.100.7, 10.0.0.9"',
        )
        assert rec.ip == "198.51.100.7"
        assert rec.forwarded_for == "198.51.100.7, 10.0.0.9"
        assert rec.extra == {"realip_remote_addr": "10.0.0.9"}

    def test_hosts_fall_back_in_order(self) -> None:
        """host: `$host`, else `$http_host`, else `$server_name` — the first that is not `-`."""
        fmt = '[$time_local] "$request" $status $host $http_host $server_name'
        assert parse(fmt, f'[{T}] "GET / HTTP/1.1" 200 - a.example:8080 s.example').host == (
            "a.example:8080"
        )
        assert parse(fmt, f'[{T}] "GET / HTTP/1.1" 200 - - s.example').host == "s.example"

    def test_bytes_sent_when_body_bytes_are_not_logged(self) -> None:
        """`$bytes_sent` fills bytes when `$body_bytes_sent` is absent."""
        assert (
            parse(
                '[$time_local] "$request" $status $bytes_sent', f'[{T}] "GET / HTTP/1.1" 200 812'
            ).bytes
            == 812
        )


class TestTimes:
    @pytest.mark.parametrize(
        ("stamp", "utc_parts"),
        [
            ("28/Nov/2026:10:00:00 -0500", (2026, 11, 28, 15, 0, 0)),
            ("28/Nov/2026:10:00:00 +0530", (2026, 11, 28, 4, 30, 0)),
            ("01/Jan/2027:00:30:00 +0100", (2026, 12, 31, 23, 30, 0)),
        ],
    )
    def test_time_local_offsets_give_utc(self, stamp: str, utc_parts: tuple[int, ...]) -> None:
        """`$time_local` in any zone converts to UTC, across a year boundary too."""
        rec = parse('[$time_local] "$request" $status', f'[{stamp}] "GET / HTTP/1.1" 200')
        assert rec.ts == utc(*utc_parts)

    def test_msec_outranks_time_local(self) -> None:
        """With both, `$msec` gives the time (ms precision); `$time_local` stays an extra."""
        rec = parse(
            '$msec [$time_local] "$request" $status', f'1795878000.250 [{T}] "GET / HTTP/1.1" 200'
        )
        assert rec.ts == pytest.approx(1795878000.25) and rec.precision == 0.001
        assert rec.extra == {"time_local": T}

    def test_iso8601_with_plus_0530(self) -> None:
        """`$time_iso8601` with +05:30 converts to UTC."""
        rec = parse(
            '$time_iso8601 "$request" $status', '2026-11-28T10:00:00+05:30 "GET / HTTP/1.1" 200'
        )
        assert rec.ts == utc(2026, 11, 28, 4, 30, 0)


class TestUnusualFormats:
    def test_tab_separated_unquoted_format(self) -> None:
        """Tabs as separators and an unquoted `$request` with spaces still split right."""
        rec = parse(
            "$remote_addr\t$time_local\t$request\t$status\t$http_user_agent",
            f"1.2.3.4\t{T}\tGET /a b HTTP/1.1\t200\tMozilla/5.0 (X11)",
        )
        assert (rec.target, rec.status, rec.user_agent) == ("/a b", 200, "Mozilla/5.0 (X11)")

    def test_braced_variables_next_to_text(self) -> None:
        """`${status}` may touch letters; `|` separators work."""
        rec = parse(
            "${remote_addr}|${time_local}|${request}|${status}ok",
            f"1.2.3.4|{T}|GET / HTTP/1.1|204ok",
        )
        assert rec.status == 204 and rec.ip == "1.2.3.4"

    def test_repeated_variable_must_repeat_its_value(self) -> None:
        """A variable logged twice matches only when both places hold the same value."""
        parser = compile_nginx('$status [$time_local] "$request" $status')
        assert parser(f'200 [{T}] "GET / HTTP/1.1" 200') is not None
        assert parser(f'200 [{T}] "GET / HTTP/1.1" 404') is None

    def test_directive_strings_use_nginx_config_escapes(self) -> None:
        """In a pasted directive, `\\"` and `\\'` are the quote, `\\t` a tab; other
        backslashes stay."""
        parser = compile_nginx("log_format x '[$time_local]\\t\\'$request\\' $status \\\\d';")
        rec = parser(f"[{T}]\t'GET / HTTP/1.1' 200 \\d")
        assert rec is not None and rec.status == 200

    def test_request_parts_without_request_line(self) -> None:
        """`$request_method`, `$request_uri` and `$server_protocol` rebuild the request."""
        rec = parse(
            '[$time_local] $request_method "$request_uri" $server_protocol $status',
            f'[{T}] POST "/signup?plan=pro" HTTP/2.0 302',
        )
        assert (rec.method, rec.target, rec.protocol) == ("POST", "/signup?plan=pro", "HTTP/2.0")

    def test_explain_names_the_element_and_column(self) -> None:
        """explain() says which variable or text stopped matching, and where — not the line."""
        parser = compile_nginx('$remote_addr [$time_local] "$request" $status')
        reason = parser.explain(f'1.2.3.4 [{T}] "GET / HTTP/1.1" abc')
        assert "at $status (column 55)" in reason
        assert "GET" not in reason


def test_pasted_directive_may_hold_comments_and_bare_words() -> None:
    """A directive pasted from nginx.conf with `#` comment lines between its strings, and
    unquoted format pieces, compiles like nginx reads it."""
    parser = compile_nginx(
        "log_format main '$remote_addr [$time_local] '\n"
        "    # the request, then its status\n"
        "    '\"$request\" ' $status;  # trailing comment"
    )
    rec = parser('1.2.3.4 [28/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 204')
    assert rec is not None and rec.status == 204
