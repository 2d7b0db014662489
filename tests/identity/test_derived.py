"""Derived anonymous ids (SPEC §1.3): the formula, and the per-day cache in front of it."""

from __future__ import annotations

import base64
import hashlib
import hmac

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.identity.derived import DerivedIds, base32_head, utc_day

SECRET = b"k" * 32
DAY = 86400.0


def formula(ip: str, agent: str, ts: float, site: str = "shop") -> str:
    """SPEC §1.3 written out, without any cache."""
    msg = f"v1\n{site}\n{ip}\n{agent}\n{utc_day(ts)}".encode("utf-8", "surrogateescape")
    digest = hmac.new(SECRET, msg, hashlib.sha256).digest()
    return "anon-" + base64.b32encode(digest).decode().lower().rstrip("=")[:26]


@settings(max_examples=500, deadline=None)
@given(digest=st.binary(min_size=17, max_size=32))
def test_base32_head_is_the_start_of_base32(digest: bytes) -> None:
    """The table-driven encoder gives the first 26 characters of RFC 4648 base32, lower case."""
    assert base32_head(digest) == base64.b32encode(digest).decode().lower()[:26]


@settings(max_examples=200, deadline=None)
@given(
    hits=st.lists(
        st.tuples(
            st.sampled_from(["203.0.113.9", "198.51.100.7", "2001:db8:1:2"]),
            st.sampled_from(["Mozilla/5.0", "curl/8.0", ""]),
            st.floats(min_value=1.7e9, max_value=1.7e9 + 10 * DAY),
        ),
        max_size=40,
    )
)
def test_cached_ids_equal_the_formula_in_any_order(hits: list[tuple[str, str, float]]) -> None:
    """Whatever the order of days (late hits included), every id is the SPEC's formula."""
    ids = DerivedIds(SECRET, "shop")
    for ip, agent, ts in hits:
        assert ids(ip, agent, ts) == formula(ip, agent, ts)


def test_old_days_are_dropped_from_the_cache() -> None:
    """A backfill over a year keeps at most the two newest days cached, and a late hit on a
    dropped day still gets its (same) id."""
    ids = DerivedIds(SECRET, "shop")
    t0 = 1.7e9
    first = ids("203.0.113.9", "UA", t0)
    for day in range(1, 365):
        ids("203.0.113.9", "UA", t0 + day * DAY)
    assert ids.days_cached <= 2
    assert ids("203.0.113.9", "UA", t0) == first
