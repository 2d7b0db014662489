"""The fields access records offer to rules."""

from __future__ import annotations

from agent.parse import build_access_parser
from agent.parse.accessor import access_field

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
