"""Cookie header extraction as browsers send it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.parse.cookies import CookieExtractor, parse_cookie_header


def test_first_occurrence_wins() -> None:
    """With a duplicated name, the first value is the one servers see."""
    assert CookieExtractor(["km_ai"])("km_ai=first; x=1; km_ai=second") == {"km_ai": "first"}


def test_names_match_exactly() -> None:
    """`xkm_ai` is not `km_ai`; whitespace around `;` is tolerated."""
    jar = CookieExtractor(["km_ai", "km_ni"])("xkm_ai=no;km_ai=yes ;  km_ni=bob%40x.com")
    assert jar == {"km_ai": "yes", "km_ni": "bob%40x.com"}


def test_values_stay_raw_for_normalisation() -> None:
    """Quotes and %XX are left for identity normalisation, which decodes exactly once."""
    assert CookieExtractor(["km_ai"])('km_ai="%22abc%22"') == {"km_ai": '"%22abc%22"'}


def test_dash_and_empty_mean_no_cookies() -> None:
    """nginx's `-` and an empty header give nothing."""
    extractor = CookieExtractor(["km_ai"])
    assert extractor("-") == {} and extractor("") == {}
    assert parse_cookie_header("-") == {}


@given(st.text(max_size=200))
def test_garbage_headers_never_raise(header: str) -> None:
    """Any header text is tolerated."""
    CookieExtractor(["km_ai", "km_ni"])(header)
    parse_cookie_header(header)


class TestBrowserHeaders:
    def test_values_keep_their_equals_signs(self) -> None:
        """A value runs to the next `;` (base64 padding survives)."""
        header = "km_ai=YWJj==; km_ni=a=b"
        assert CookieExtractor(["km_ai", "km_ni"])(header) == {"km_ai": "YWJj==", "km_ni": "a=b"}
        assert parse_cookie_header(header) == {"km_ai": "YWJj==", "km_ni": "a=b"}

    def test_nameless_and_valueless_pieces_are_skipped(self) -> None:
        """Chrome sends a nameless cookie as its bare value; it names nothing."""
        assert parse_cookie_header("orphan; =x; km_ai=abc; ;") == {"km_ai": "abc"}

    def test_empty_value_is_kept_for_the_junk_filter(self) -> None:
        """`km_ai=` is extracted as "" (identity intake counts it as junk, SPEC §1.1)."""
        assert CookieExtractor(["km_ai"])("km_ai=; x=1") == {"km_ai": ""}

    def test_names_are_case_sensitive(self) -> None:
        """`KM_AI` is another cookie (RFC 6265 compares names octet by octet)."""
        assert CookieExtractor(["km_ai"])("KM_AI=no; km_ai=yes") == {"km_ai": "yes"}

    def test_legacy_attributes_do_not_hide_cookies(self) -> None:
        """An RFC 2965 `$Version` prefix and tabs around separators are tolerated."""
        jar = CookieExtractor(["km_ai"])('$Version=1;\tkm_ai="abc"; $Path=/')
        assert jar == {"km_ai": '"abc"'}

    def test_non_ascii_and_control_bytes_are_tolerated(self) -> None:
        """Mojibake and control characters in other cookies do not disturb extraction."""
        header = "x=\ufffd\x01\x7f; km_ai=abcdef; y=é"
        assert CookieExtractor(["km_ai"])(header) == {"km_ai": "abcdef"}
        assert parse_cookie_header(header)["y"] == "é"
