"""The Apache LogFormat compiler: directive forms, every directive, modifiers, escaping, times."""

from __future__ import annotations

import calendar

import pytest

from agent.parse.apache import ApacheFormatError, compile_apache, read_log_format
from agent.records import AccessRecord


def utc(*parts: int) -> float:
    return float(calendar.timegm((*parts, 0, 0, 0)))


def parse(fmt: str, line: str, tz: str = "UTC") -> AccessRecord:
    parser = compile_apache(fmt, tz)
    rec = parser(line)
    assert rec is not None, parser.explain(line)
    return rec


COMBINED = '%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-agent}i"'
# Debian's default for virtual hosts (/etc/apache2/apache2.conf).
VHOST_COMBINED = 'LogFormat "%v:%p %h %l %u %t \\"%r\\" %>s %O \\"%{Referer}i\\" \\"%{User-Agent}i\\"" vhost_combined'
LINE = (
    '127.0.0.1 - frank [10/Oct/2026:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326 '
    '"http://www.example.com/start.html" "Mozilla/4.08 [en] (Win98; I ;Nav)"'
)


class TestReadingTheFormat:
    @pytest.mark.parametrize(
        "pasted",
        [
            COMBINED,
            COMBINED.replace('"', '\\"'),
            f'LogFormat "{COMBINED.replace(chr(34), chr(92) + chr(34))}" combined',
            f'CustomLog ${{APACHE_LOG_DIR}}/access.log "{COMBINED.replace(chr(34), chr(92) + chr(34))}"',
            f"LogFormat '{COMBINED}' combined",
        ],
    )
    def test_every_way_of_pasting_gives_the_same_format(self, pasted: str) -> None:
        """The bare string, the string with `\\"`, and LogFormat/CustomLog directives agree."""
        assert read_log_format(pasted) == COMBINED

    def test_combined_line_round_trips(self) -> None:
        """Apache's documented combined line gives every field, its -0700 time in UTC."""
        rec = parse(COMBINED, LINE)
        assert (rec.ip, rec.method, rec.target, rec.protocol) == (
            "127.0.0.1",
            "GET",
            "/apache_pb.gif",
            "HTTP/1.0",
        )
        assert (rec.status, rec.bytes) == (200, 2326)
        assert rec.referrer == "http://www.example.com/start.html"
        assert rec.user_agent == "Mozilla/4.08 [en] (Win98; I ;Nav)"
        assert rec.ts == utc(2026, 10, 10, 20, 55, 36)
        assert rec.extra == {"remote_logname": "-", "remote_user": "frank"}

    def test_vhost_combined_directive(self) -> None:
        """Debian's vhost_combined: `%v:%p` gives host and port, `%O` the bytes, +0530 -> UTC."""
        rec = parse(
            VHOST_COMBINED,
            'www.example.com:443 203.0.113.9 - - [28/Nov/2026:10:00:00 +0530] "GET /a?b=1 '
            'HTTP/1.1" 200 3395 "-" "Mozilla/5.0"',
        )
        assert rec.host == "www.example.com" and rec.bytes == 3395
        assert rec.extra is not None and rec.extra["server_port"] == "443"
        assert rec.ts == utc(2026, 11, 28, 4, 30, 0)
        assert rec.referrer == ""


class TestDirectives:
    def test_final_status_outranks_the_original(self) -> None:
        """`%>s` is the status; `%s`/`%<s` (the original request's) stays an extra."""
        rec = parse('%t "%r" %<s %>s', '[28/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 302 200')
        assert rec.status == 200
        assert rec.extra == {"original_status": "302"}

    def test_sizes_dash_and_fallback(self) -> None:
        """`%b` logs `-` for 0 bytes; `%O` fills bytes when no `%b`/`%B`; `%I` is an extra."""
        assert (
            parse('%t "%r" %>s %b', '[28/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 304 -').bytes
            == 0
        )
        rec = parse(
            '%t "%r" %>s %I %O', '[28/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 431 5120'
        )
        assert rec.bytes == 5120 and rec.extra == {"bytes_received": "431"}

    @pytest.mark.parametrize(
        ("directive", "logged", "seconds"),
        [
            ("%D", "2500", 0.0025),
            ("%{us}T", "2500", 0.0025),
            ("%{ms}T", "12", 0.012),
            ("%T", "3", 3.0),
        ],
    )
    def test_request_time_units(self, directive: str, logged: str, seconds: float) -> None:
        """`%D` and `%{us}T` are µs, `%{ms}T` ms, `%T` seconds: request_time is seconds."""
        rec = parse(
            f'%t "%r" %>s {directive}',
            f'[28/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 {logged}',
        )
        assert rec.request_time == pytest.approx(seconds)

    def test_headers_cookies_and_forwarded_for(self) -> None:
        """`%{Cookie}i` is the header, `%{NAME}C` one cookie, X-Forwarded-For and Host have
        their fields, other headers become http_* extras."""
        rec = parse(
            '%a %t "%r" %>s "%{Cookie}i" %{km_ai}C "%{X-Forwarded-For}i" %{Host}i "%{Accept-Language}i"',
            '10.0.0.2 [28/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 "km_ai=abc; x=1" abc '
            '"198.51.100.7, 10.0.0.2" shop.example.com "de-DE,de;q=0.9"',
        )
        assert rec.cookie_header == "km_ai=abc; x=1" and rec.cookies == {"km_ai": "abc"}
        assert rec.forwarded_for == "198.51.100.7, 10.0.0.2"
        assert rec.host == "shop.example.com"
        assert rec.extra == {"http_accept_language": "de-DE,de;q=0.9"}

    def test_host_header_outranks_server_names(self) -> None:
        """host: the Host header, else `%V`, else `%v`."""
        fmt = '%v %V %t "%r" %>s %{Host}i'
        head = '[28/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200'
        assert parse(fmt, f"canon used {head} sent.example").host == "sent.example"
        assert parse(fmt, f"canon used {head} -").host == "used"

    def test_client_address_directives(self) -> None:
        """`%a` (client) outranks `%h` (remote host); `%{c}a` is the peer, kept as an extra."""
        rec = parse(
            '%h %a %{c}a %t "%r" %>s',
            'gw.example 198.51.100.7 10.0.0.1 [28/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200',
        )
        assert rec.ip == "198.51.100.7"
        assert rec.extra == {"remote_host": "gw.example", "peer_addr": "10.0.0.1"}

    def test_method_path_query_protocol_inside_one_quote(self) -> None:
        """`"%m %U%q %H"` (a common replacement for `%r`) rebuilds the request."""
        fmt = '%t "%m %U%q %H" %>s'
        rec = parse(fmt, '[28/Nov/2026:10:00:00 +0000] "POST /signup?plan=pro HTTP/1.1" 302')
        assert (rec.method, rec.target, rec.protocol) == ("POST", "/signup?plan=pro", "HTTP/1.1")
        assert parse(fmt, '[28/Nov/2026:10:00:00 +0000] "GET /a HTTP/1.1" 200').target == "/a"

    def test_the_rest_of_mod_log_config(self) -> None:
        """Every other directive compiles and lands in extras by name."""
        rec = parse(
            "%A %p %{remote}p %P %{tid}P %k %L %X %R %f %{UNIQUE_ID}e %{Content-Type}o %{note}n "
            '%t "%r" %>s',
            "10.0.0.5 443 51234 1234 140 2 AbC + proxy-server /srv/www/index.html Zx9 "
            'text/html n1 [28/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200',
        )
        assert rec.extra == {
            "server_addr": "10.0.0.5",
            "server_port": "443",
            "remote_port": "51234",
            "pid": "1234",
            "tid": "140",
            "keepalive_requests": "2",
            "log_id": "AbC",
            "connection_status": "+",
            "handler": "proxy-server",
            "filename": "/srv/www/index.html",
            "env_unique_id": "Zx9",
            "sent_http_content_type": "text/html",
            "note_note": "n1",
        }

    def test_status_conditions_allow_a_dash(self) -> None:
        """`%400,501{User-agent}i` logs `-` for other statuses; `%!200{Referer}i` likewise."""
        fmt = '%t "%r" %>s "%400,501{User-agent}i" "%!200{Referer}i"'
        rec = parse(fmt, '[28/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 "-" "-"')
        assert rec.user_agent == "" and rec.referrer == ""

    def test_percent_literal(self) -> None:
        """`%%` is a literal percent sign."""
        assert (
            parse(
                '%t "%r" %>s 100%%', '[28/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 100%'
            ).status
            == 200
        )


class TestEscaping:
    def test_backslash_escapes_are_undone(self) -> None:
        """Apache's `\\"`, `\\\\` and `\\xhh` (UTF-8 bytes) in a quoted field come back."""
        rec = parse(COMBINED, LINE.replace("Mozilla/4.08", 'Moz\\"illa\\\\ \\xd0\\xb0'))
        assert rec.user_agent.startswith('Moz"illa\\ а')

    def test_escaped_quote_in_the_request_line(self) -> None:
        """A request line holding `\\"` stays one field."""
        rec = parse(COMBINED, LINE.replace("/apache_pb.gif", '/a\\"b'))
        assert rec.target == '/a"b' and rec.status == 200


class TestTimes:
    def test_strftime_time_without_offset_uses_the_timezone(self) -> None:
        """`%{%Y-%m-%d %H:%M:%S}t` is the server's local time: `timezone` places it."""
        fmt = '[%{%Y-%m-%d %H:%M:%S}t] "%r" %>s'
        line = '[2026-11-28 10:00:00] "GET / HTTP/1.1" 200'
        assert parse(fmt, line, "America/New_York").ts == utc(2026, 11, 28, 15, 0, 0)
        assert parse(fmt, line, "Asia/Kolkata").ts == utc(2026, 11, 28, 4, 30, 0)

    def test_documented_time_in_pieces(self) -> None:
        """mod_log_config's own example `%{%d/%b/%Y %T}t.%{msec_frac}t %{%z}t`: the pieces
        make one time, its -0500 offset applied, with ms precision."""
        rec = parse(
            '[%{%d/%b/%Y %T}t.%{msec_frac}t %{%z}t] "%r" %>s',
            '[28/Nov/2026 10:00:00.250 -0500] "GET / HTTP/1.1" 200',
        )
        assert rec.ts == pytest.approx(utc(2026, 11, 28, 15, 0, 0) + 0.25)
        assert rec.precision == 0.001

    @pytest.mark.parametrize(
        ("directive", "logged", "ts", "precision"),
        [
            ("%{sec}t", "1795878000", 1795878000.0, 1.0),
            ("%{msec}t", "1795878000250", 1795878000.25, 0.001),
            ("%{usec}t", "1795878000250001", 1795878000.250001, 1e-6),
            ("%{end:msec}t", "1795878000250", 1795878000.25, 0.001),
        ],
    )
    def test_epoch_times(self, directive: str, logged: str, ts: float, precision: float) -> None:
        """`%{sec|msec|usec}t` (with begin:/end:) are epochs with their precision."""
        rec = parse(f'{directive} "%r" %>s', f'{logged} "GET / HTTP/1.1" 200')
        assert rec.ts == pytest.approx(ts) and rec.precision == precision

    def test_clf_strftime_equals_percent_t(self) -> None:
        """`%{%d/%b/%Y:%H:%M:%S %z}t` (no brackets) reads like `%t`."""
        rec = parse(
            '[%{%d/%b/%Y:%H:%M:%S %z}t] "%r" %>s',
            '[28/Nov/2026:10:00:00 -0500] "GET / HTTP/1.1" 200',
        )
        assert rec.ts == utc(2026, 11, 28, 15, 0, 0)


class TestErrors:
    @pytest.mark.parametrize(
        ("fmt", "needle"),
        [
            ('%h "%r" %>s', "no time"),
            ("%h %t %>s", "no request"),
            ('%t "%r" %Z', "unknown directive %Z"),
            ('%t "%r" %{Referer', "unclosed {"),
            ('%t "%r" %{nowhere}p', "unknown port"),
            ('%{%Q}t "%r"', "%Q"),
            ('%t "%r" %{}i', "needs a name"),
            ("just text", "no %directives"),
            ("LogFormat common", "no quoted format string"),
        ],
    )
    def test_unusable_formats_say_what_to_change(self, fmt: str, needle: str) -> None:
        """A LogFormat trackd cannot use is rejected with the reason."""
        with pytest.raises(ApacheFormatError, match=needle.replace("{", r"\{")):
            compile_apache(fmt)

    def test_explain_names_the_directive(self) -> None:
        """explain() names the directive where a line stops matching."""
        parser = compile_apache(COMBINED)
        assert "at %>s" in parser.explain(LINE.replace(" 200 ", " OK "))
