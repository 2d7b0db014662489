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
