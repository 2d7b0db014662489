"""The fields access records offer to rules (`access_field`, SPEC §2)."""

from __future__ import annotations

from agent.parse import build_access_parser
from agent.parse.accessor import access_field
from agent.parse.apache import compile_apache
from agent.parse.nginx import compile_nginx
from agent.records import AccessRecord

LINE = (
    '198.51.100.7 - - [28/Nov/2026:10:00:00 +0000] "POST /signup?plan=pro&ref=a%20b&plan=x '
    'HTTP/1.1" 302 0 "https://ex.com/p?q=1" "Mozilla/5.0" "km_ai=abc%2540def; sid=\\"q\\""'
)


def test_named_fields() -> None:
    """Every SPEC §2 field name resolves on a combined_cookie record."""
    rec = build_access_parser("combined_cookie")(LINE)
    assert rec is not None
    assert access_field(rec, "method") == "POST"
    assert access_field(rec, "path") == "/signup"
    assert access_field(rec, "status") == 302
    assert access_field(rec, "ip") == "198.51.100.7"
    assert access_field(rec, "referrer") == "https://ex.com/p?q=1"
    assert access_field(rec, "host") is None  # not logged
    assert access_field(rec, "protocol") == "HTTP/1.1"


def test_query_parameters_decoded_once_first_wins() -> None:
    """`query.NAME` is decoded once; a repeated parameter keeps its first value."""
    rec = build_access_parser("combined_cookie")(LINE)
    assert rec is not None
    assert access_field(rec, "query.plan") == "pro"
    assert access_field(rec, "query.ref") == "a b"
    assert access_field(rec, "query.none") is None


def test_cookie_values_decoded_exactly_once() -> None:
    """`cookie.NAME` percent-decodes once: `%2540` stays `%40`."""
    rec = build_access_parser("combined_cookie")(LINE)
    assert rec is not None
    assert access_field(rec, "cookie.km_ai") == "abc%40def"


NGINX = (
    '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
    '"$http_user_agent" "$http_cookie" $cookie_pref $upstream_status $arg_plan $request_time'
)
NGINX_LINE = (
    '10.0.0.1 - - [28/Nov/2026:10:00:00 +0000] "GET http://shop.example.com/cart?x=1 HTTP/1.1" '
    '200 0 "Mozilla/5.0" "km_ai=\\x22q%2540x\\x22; a=1; a=2" dark 502, 200 pro%20plus 0.010'
)


def nginx_record() -> AccessRecord:
    rec = compile_nginx(NGINX)(NGINX_LINE)
    assert rec is not None
    return rec


class TestCapturedNames:
    def test_extras_by_variable_name(self) -> None:
        """A variable without a record field reads by its name; `-` reads as None."""
        rec = nginx_record()
        assert access_field(rec, "upstream_status") == "502, 200"
        assert access_field(rec, "remote_user") is None

    def test_names_that_fed_a_field_read_that_field(self) -> None:
        """`remote_addr`, `http_user_agent`, `request_uri`, `args` read ip, agent, target, query."""
        rec = nginx_record()
        assert access_field(rec, "remote_addr") == "10.0.0.1"
        assert access_field(rec, "http_user_agent") == "Mozilla/5.0"
        assert access_field(rec, "request_method") == "GET"
        assert access_field(rec, "target") == "http://shop.example.com/cart?x=1"
        assert access_field(rec, "args") == "x=1"

    def test_the_raw_cookie_header_is_never_offered(self) -> None:
        """`cookie` / `http_cookie` read as None: only single cookies reach rules (SPEC §8)."""
        rec = nginx_record()
        assert access_field(rec, "cookie") is None
        assert access_field(rec, "http_cookie") is None

    def test_unknown_names_read_as_none(self) -> None:
        """A name the record does not have is None, never an error."""
        assert access_field(nginx_record(), "no_such_field") is None


class TestValues:
    def test_absolute_form_target_gives_its_path(self) -> None:
        """`path` of `GET http://host/cart?x=1` is `/cart`."""
        assert access_field(nginx_record(), "path") == "/cart"

    def test_captured_cookie_and_header_cookie(self) -> None:
        """`$cookie_pref` and the Cookie header both answer `cookie.NAME`; first wins."""
        rec = nginx_record()
        assert access_field(rec, "cookie.pref") == "dark"
        assert access_field(rec, "cookie.a") == "1"

    def test_quoted_cookie_loses_its_quotes_and_is_decoded_once(self) -> None:
        """RFC 6265's `"value"` form reads without the quotes; `%2540` reads as `%40`."""
        assert access_field(nginx_record(), "cookie.km_ai") == "q%40x"

    def test_query_falls_back_to_arg_variables(self) -> None:
        """`query.plan` reads `$arg_plan` (decoded once) when the target has no such parameter."""
        rec = nginx_record()
        assert access_field(rec, "query.plan") == "pro plus"
        assert access_field(rec, "query.x") == "1"

    def test_status_zero_is_missing_but_zero_bytes_are_not(self) -> None:
        """nginx's `-` status (0) reads as None; a 0-byte response is 0."""
        rec = nginx_record()
        assert access_field(rec._replace(status=0), "status") is None
        assert access_field(rec, "bytes") == 0
        assert access_field(rec, "request_time") == 0.01


class TestOtherFormats:
    def test_apache_directive_names(self) -> None:
        """Apache captures read by their names: headers as http_*, %D as request_time."""
        parser = compile_apache('%h %l %u %t "%r" %>s %b %D "%{Accept-Language}i" %{UNIQUE_ID}e')
        rec = parser(
            '1.2.3.4 - bob [28/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 - 2500 "de-DE" Zx9'
        )
        assert rec is not None
        assert access_field(rec, "http_accept_language") == "de-DE"
        assert access_field(rec, "env_unique_id") == "Zx9"
        assert access_field(rec, "remote_user") == "bob"
        assert access_field(rec, "remote_host") == "1.2.3.4"
        assert access_field(rec, "request_time") == 0.0025

    def test_json_nested_keys_are_dotted(self) -> None:
        """Unmapped nested JSON keys read by dotted name."""
        parser = build_access_parser("json")
        rec = parser(
            '{"time": "2026-11-28T10:00:00Z", "request": "GET / HTTP/1.1", "status": 200, '
            '"tls": {"version": "1.3", "alpn": ["h2", "http/1.1"]}}'
        )
        assert rec is not None
        assert access_field(rec, "tls.version") == "1.3"
        assert access_field(rec, "tls.alpn") == "h2, http/1.1"
