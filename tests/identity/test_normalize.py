"""Identifier intake: normalisation and the junk filter (SPEC §1.1)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.identity.normalize import JUNK_WORDS, Normalizer, percent_decode_once


class TestNormalise:
    def test_percent_decoded_exactly_once(self) -> None:
        """`%2540` becomes `%40`, not `@`; `+` stays `+`; a malformed `%` stays literal."""
        assert percent_decode_once("a%2540b") == "a%40b"
        assert percent_decode_once("a+b%zz%4") == "a+b%zz%4"

    def test_json_string_literal_is_decoded(self) -> None:
        """A value that is a JSON string literal loses its quotes (after percent-decoding)."""
        assert Normalizer().device("%22abcdef123%22") == "abcdef123"

    def test_emails_are_lowercased_when_named(self) -> None:
        """Email-like named values are folded; device values keep their case."""
        n = Normalizer()
        assert n.named("Alice%40Example.COM") == "alice@example.com"
        assert n.device("AbCdEfGh") == "AbCdEfGh"
        assert Normalizer(lowercase_emails=False).named("Alice@Example.com") == "Alice@Example.com"

    @pytest.mark.parametrize(
        "raw",
        [
            "",
            "-",
            "0",
            "000-000",
            "undefined",
            "NULL",
            '"null"',
            "%22undefined%22",
            "guest",
            "[object Object]",
            "abc",
            "x" * 300,
            "ab\x01cdef",
            "00000000-0000-0000-0000-000000000000",
        ],
    )
    def test_junk_device_values_are_discarded(self, raw: str) -> None:
        """Placeholders, too short/long values and control characters never become devices."""
        n = Normalizer()
        assert n.device(raw) is None
        assert n.junk["device"] == 1

    def test_blocklist_and_short_named(self) -> None:
        """Named ids may be short, but the blocklist and junk words still apply."""
        n = Normalizer(blocklist=("ops@example.com",))
        assert n.named("bob") == "bob"
        assert n.named("OPS@example.com") is None
        assert n.named("guest") is None

    def test_junk_is_counted_by_kind_on_every_hit(self) -> None:
        """Cached verdicts still count each occurrence."""
        n = Normalizer()
        for _ in range(3):
            n.session("-")
        assert n.junk["session"] == 3


@given(st.text(max_size=300))
def test_never_raises_and_result_is_clean(raw: str) -> None:
    """Any input gives None or a stripped value without control characters."""
    for value in (Normalizer().device(raw), Normalizer().named(raw)):
        if value is not None:
            assert value == value.strip()
            assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)
            assert 0 < len(value) <= 255


def test_rendered_values_are_not_decoded_twice() -> None:
    """A rule template's text (already decoded by its field) is not percent-decoded again."""
    n = Normalizer()
    assert n.rendered("named", "50%25off@x.com") == "50%25off@x.com"
    assert n.value("named", "50%25off@x.com") == "50%off@x.com"
    assert n.rendered("device", "undefined") is None and n.junk["device"] == 1


PLAIN = re.compile(r"[A-Za-z0-9._~+\-]+").fullmatch
plain_values = st.one_of(
    st.text(alphabet="0123456789-._~+aAbBzZ", max_size=300),
    # The junk words made of the plain alphabet, as written (user_id, distinct_id, -1 ...),
    # some in capitals.
    st.sampled_from(sorted(w for w in JUNK_WORDS if PLAIN(w))).map(
        lambda w: w.upper() if len(w) % 2 else w
    ),
    st.sampled_from(["NULL", "Guest", "0000-00", "abcd", "abcde", "Ops.Example"]),
)


@settings(max_examples=1500, deadline=None)
@given(
    raw=plain_values,
    kind=st.sampled_from(["device", "named", "session"]),
    percent=st.booleans(),
)
def test_the_plain_value_shortcut_gives_what_every_step_gives(
    raw: str, kind: str, percent: bool
) -> None:
    """For a value of only letters, digits and `-._~+`, the shortcut (length, zeros, junk words,
    blocklist) decides exactly as the full intake does."""
    n = Normalizer(blocklist=("ops.example", "abcde"))
    assert n._normalize(kind, raw, percent=percent) == n.normalize_fully(kind, raw, percent=percent)
