"""Kissmetrics wire encoding (SPEC §4, ../shared/golden/kissmetrics.md)."""

from __future__ import annotations

import urllib.parse
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.sinks.km_wire import (
    KmEncoder,
    KmRequest,
    KmTooLong,
    clean_name,
    encode_component,
)

KEY = "KEY"
TS = "2026-11-27T08:00:47.120Z"
TS_SECOND = 1795766447


def encoder() -> KmEncoder:
    return KmEncoder(KEY)


def track(props: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "type": "track",
        "timestamp": TS,
        "userId": "bob",
        "event": "Signed Up",
        "properties": props if props is not None else {},
    }
    message.update(fields)
    return message


def page(props: dict[str, Any], **fields: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "type": "page",
        "timestamp": TS,
        "anonymousId": "qFq2LweZugFNE4o49hLhmRPBW34",
        "properties": props,
    }
    message.update(fields)
    return message


def request(
    message: dict[str, Any], t: int | None = None, enc: KmEncoder | None = None
) -> KmRequest:
    result = (enc or encoder()).encode(message, t)
    assert isinstance(result, KmRequest), result
    return result


def pairs(message: dict[str, Any], t: int | None = None) -> list[tuple[str, str]]:
    req = request(message, t)
    return urllib.parse.parse_qsl(req.query or req.body.decode(), keep_blank_values=True)


def props_of(message: dict[str, Any]) -> list[tuple[str, str]]:
    """The (name, value) pairs after the fixed `_k _p _n _t _d` head."""
    return [(k, v) for k, v in pairs(message) if k not in ("_k", "_p", "_n", "_t", "_d")]


def unix_iso(seconds: float) -> str:
    return (
        datetime.fromtimestamp(seconds, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


# --- golden data ---------------------------------------------------------------------------------

# (row, input message fields, other client's request, trackd's request) — transcribed from
# ../shared/golden/kissmetrics.md, one entry per table row.
GOLDEN: list[tuple[int, dict[str, Any], str, str]] = [
    (
        1,
        {
            "type": "track",
            "userId": "bob",
            "event": "Signed Up",
            "properties": {"gender": "male"},
            "at": 1262304000,
        },
        "/e?_k=KEY&_p=bob&_n=Signed+Up&gender=male&_t=1262304000&_d=1",
        "/e?_k=KEY&_p=bob&_n=Signed%20Up&_t=1262304000&_d=1&gender=male",
    ),
    (
        2,
        {"type": "identify", "userId": "bob", "traits": {"gender": "male"}, "at": 1262304000},
        "/s?_k=KEY&_p=bob&gender=male&_t=1262304000&_d=1",
        "/s?_k=KEY&_p=bob&_t=1262304000&_d=1&gender=male",
    ),
    (
        3,
        {"type": "alias", "previousId": "User 12345", "userId": "bob@bob.com"},
        "/a?_k=KEY&_p=User+12345&_n=bob%40bob.com",
        "/a?_k=KEY&_p=User%2012345&_n=bob%40bob.com",
    ),
    (
        4,
        {
            "type": "track",
            "userId": "bob",
            "event": "Signup",
            "properties": {"age": 26},
            "at": 1297105499,
        },
        "/e?_t=1297105499&_n=Signup&_p=bob&_k=KEY&age=26",
        "/e?_k=KEY&_p=bob&_n=Signup&_t=1297105499&_d=1&age=26",
    ),
    (
        5,
        {
            "type": "track",
            "userId": "bob",
            "event": "Signup",
            "properties": {"age": 26, "city of residence": "eug ene"},
            "at": 1297105499,
        },
        "/e?age=26&city%20of%20residence=eug%20ene&_t=1297105499&_n=Signup&_p=bob&_k=KEY&_d=1",
        "/e?_k=KEY&_p=bob&_n=Signup&_t=1297105499&_d=1&age=26&city%20of%20residence=eug%20ene",
    ),
    (
        6,
        {
            "type": "track",
            "userId": "bob",
            "event": "Signup",
            "properties": {"age": 26, "_p": "billybob", "_k": "foo", "_n": "something else"},
            "at": 1297105499,
        },
        "/e?age=26&_p=bob&_k=KEY&_n=Signup&_t=1297105499&_d=1",
        "/e?_k=KEY&_p=bob&_n=Signup&_t=1297105499&_d=1&age=26",
    ),
    (
        7,
        {
            "type": "track",
            "userId": "bob",
            "event": "prop_with_@_in",
            "properties": {},
            "at": 1297105499,
        },
        "/e?_t=1297105499&_n=prop_with_%40_in&_p=bob&_k=KEY&_d=1",
        "/e?_k=KEY&_p=bob&_n=prop_with_%40_in&_t=1297105499&_d=1",
    ),
    (
        8,
        {"type": "track", "userId": "bar", "event": "fizzed", "properties": {}, "at": 1381849312.5},
        "/e?_k=KEY&_p=bar&_d=1&_t=1381849312&_n=fizzed",
        "/e?_k=KEY&_p=bar&_n=fizzed&_t=1381849312&_d=1",
    ),
    (
        9,
        {"type": "alias", "previousId": "bar", "userId": "baz"},
        "/a?_k=KEY&_p=bar&_n=baz",
        "/a?_k=KEY&_p=bar&_n=baz",
    ),
    (
        10,
        {"type": "identify", "userId": "bar", "traits": {"cool": "1"}, "at": 1381849312},
        "/s?_k=KEY&_p=bar&_d=1&_t=1381849312&cool=1",
        "/s?_k=KEY&_p=bar&_t=1381849312&_d=1&cool=1",
    ),
    (
        11,
        {"type": "alias", "previousId": "previous-id", "userId": "user-id"},
        "/a?_k=KEY&_p=previous-id&_n=user-id",
        "/a?_k=KEY&_p=previous-id&_n=user-id",
    ),
]

_RESERVED = frozenset(("_k", "_p", "_n", "_t", "_d"))


def golden_message(fields: dict[str, Any]) -> dict[str, Any]:
    message = {k: v for k, v in fields.items() if k != "at"}
    if "at" in fields:
        message["timestamp"] = unix_iso(fields["at"])
    return message


def split_target(target: str) -> tuple[str, list[tuple[str, str]]]:
    path, _, query = target.partition("?")
    return path, urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=True)


def other_modulo_deliberate(path: str, other: list[tuple[str, str]]) -> Counter[tuple[str, str]]:
    """The other client's pairs adjusted by the golden file's listed deliberate differences."""
    adjusted = [
        (k, v)
        for k, v in other
        # trackd sends no `_t` on /a, and drops `_` properties instead of letting them override.
        if not (path == "/a" and k == "_t") and (k in _RESERVED or not k.startswith("_"))
    ]
    # trackd always sends `_d=1` on /e and /s (history is sent late).
    if path in ("/e", "/s") and ("_d", "1") not in adjusted:
        adjusted.append(("_d", "1"))
    return Counter(adjusted)


class TestGolden:
    @pytest.mark.parametrize(
        ("fields", "other", "ours"),
        [pytest.param(f, o, s, id=f"row{n}") for n, f, o, s in GOLDEN],
    )
    def test_path_matches_other_client(self, fields: dict[str, Any], other: str, ours: str) -> None:
        """trackd's request goes to the same path as the other client's."""
        assert request(golden_message(fields)).path == split_target(other)[0]

    @pytest.mark.parametrize(
        ("fields", "other", "ours"),
        [pytest.param(f, o, s, id=f"row{n}") for n, f, o, s in GOLDEN],
    )
    def test_decoded_pairs_match_other_client(
        self, fields: dict[str, Any], other: str, ours: str
    ) -> None:
        """The decoded (key, value) multiset equals the other client's, modulo the documented
        deliberate differences."""
        path, other_pairs = split_target(other)
        _, our_pairs = split_target(request(golden_message(fields)).target)
        assert Counter(our_pairs) == other_modulo_deliberate(path, other_pairs)

    @pytest.mark.parametrize(
        ("fields", "other", "ours"),
        [pytest.param(f, o, s, id=f"row{n}") for n, f, o, s in GOLDEN],
    )
    def test_bytes_match_spec_column(self, fields: dict[str, Any], other: str, ours: str) -> None:
        """trackd's request target is byte for byte the golden file's SPEC column."""
        assert request(golden_message(fields)).target == ours

    def test_spec_column_differs_only_deliberately(self) -> None:
        """Only rows the golden file explains (row 4 lacks `_d=1`) need the adjustment at all."""
        differing = [
            n
            for n, _f, other, ours in GOLDEN
            if Counter(split_target(other)[1]) != Counter(split_target(ours)[1])
        ]
        assert differing == [4]

    def test_underscore_properties_of_row6_are_counted(self) -> None:
        """Row 6's `_p`, `_k`, `_n` properties are dropped and each counted."""
        enc = encoder()
        request(golden_message(GOLDEN[5][1]), enc=enc)
        assert enc.properties_dropped == 3


# --- components ----------------------------------------------------------------------------------


class TestCleanName:
    def test_comma_and_colon_become_spaces(self) -> None:
        """`,` and `:` are replaced by spaces, nothing else changes."""
        assert clean_name("a,b:c d_E") == "a b c d_E"

    def test_cut_to_255_characters(self) -> None:
        """Names are cut to 255 characters (not bytes)."""
        assert clean_name("é" * 300) == "é" * 255


class TestEncodeComponent:
    def test_space_is_percent20(self) -> None:
        """A space is `%20`, never `+`."""
        assert encode_component("a b+c") == "a%20b%2Bc"

    def test_unreserved_unchanged(self) -> None:
        """`[A-Za-z0-9-._~]` pass through."""
        assert encode_component("Az09-._~") == "Az09-._~"

    def test_utf8_uppercase_hex(self) -> None:
        """Non-ASCII is UTF-8 bytes with uppercase hex."""
        assert encode_component("é/") == "%C3%A9%2F"

    @given(st.text())
    def test_same_as_urllib_quote(self, s: str) -> None:
        """Equal to `urllib.parse.quote(s, safe="")` for any text."""
        assert encode_component(s) == urllib.parse.quote(s, safe="")

    @given(st.text())
    def test_round_trips_and_emits_only_unreserved_or_escapes(self, s: str) -> None:
        """Unquoting gives the text back, and the output is only unreserved chars and `%XX`."""
        out = encode_component(s)
        assert urllib.parse.unquote(out, errors="strict") == s
        rest = out
        while "%" in rest:
            head, _, tail = rest.partition("%")
            assert all(c.isascii() and (c.isalnum() or c in "-._~") for c in head)
            assert len(tail) >= 2 and all(c in "0123456789ABCDEF" for c in tail[:2])
            rest = tail[2:]
        assert all(c.isascii() and (c.isalnum() or c in "-._~") for c in rest)


class TestRequestShape:
    def test_track_head_order(self) -> None:
        """A track is `/e` with `_k _p _n _t _d` first, in that order."""
        req = request(track({"plan": "pro"}))
        assert req.target == f"/e?_k=KEY&_p=bob&_n=Signed%20Up&_t={TS_SECOND}&_d=1&plan=pro"

    def test_given_t_is_used(self) -> None:
        """The caller's `_t` replaces the event second."""
        assert ("_t", "123") in pairs(track(), t=123)

    def test_userid_preferred_over_anonymousid(self) -> None:
        """`_p` is userId when present."""
        assert ("_p", "bob") in pairs(track(anonymousId="dev1"))

    def test_anonymousid_when_no_userid(self) -> None:
        """`_p` falls back to anonymousId."""
        message = track(anonymousId="dev1")
        del message["userId"]
        assert ("_p", "dev1") in pairs(message)

    def test_identify_without_traits_still_sent(self) -> None:
        """An identify with no traits is still `/s` with `_k _p _t _d`."""
        req = request({"type": "identify", "timestamp": TS, "userId": "bob"})
        assert req.target == f"/s?_k=KEY&_p=bob&_t={TS_SECOND}&_d=1"

    def test_alias_has_no_t_or_d(self) -> None:
        """An alias is `/a` with `_k _p _n` only."""
        req = request({"type": "alias", "timestamp": TS, "previousId": "dev1", "userId": "bob"})
        assert req.target == "/a?_k=KEY&_p=dev1&_n=bob"

    def test_event_name_cleaned_and_cut(self) -> None:
        """`_n` of /e is cleaned and cut to 255 characters."""
        assert ("_n", "a b" + "x" * 252) in pairs(track(event="a:b" + "x" * 400))

    def test_api_key_is_encoded(self) -> None:
        """The api key is percent-encoded like any other value."""
        assert request(track(), enc=KmEncoder("k&y")).query.startswith("_k=k%26y&")

    def test_fractional_timestamp_floors(self) -> None:
        """`_t` without an assignment is the floor of the event second."""
        assert ("_t", "1381849312") in pairs(track(timestamp="2013-10-15T15:01:52.999Z"))

    def test_unknown_type_is_invalid(self) -> None:
        """A message type with no Kissmetrics request is refused as `invalid`, not raised."""
        result = encoder().encode({"type": "group", "userId": "bob", "timestamp": TS}, None)
        assert isinstance(result, KmTooLong) and result.reason == "invalid"

    def test_missing_identity_is_invalid(self) -> None:
        """A page without userId or anonymousId is refused as `invalid`."""
        message = page({"path": "/"})
        del message["anonymousId"]
        result = encoder().encode(message, None)
        assert isinstance(result, KmTooLong) and result.reason == "invalid"

    def test_encode_body_decodes_json(self) -> None:
        """`encode_body` gives the same request as `encode` on the decoded message."""
        message = track({"plan": "pro"})
        assert encoder().encode_body(orjson.dumps(message), 7) == request(message, 7)

    def test_encode_body_not_json_is_invalid(self) -> None:
        """Bytes that are not a JSON object are refused as `invalid`."""
        result = encoder().encode_body(b"[1]", None)
        assert isinstance(result, KmTooLong) and result.reason == "invalid"


class TestPost:
    def test_long_query_becomes_post(self) -> None:
        """An /e query over 2000 bytes is a POST with the exact query as body and no URL query."""
        message = track({"note": "x" * 2000})
        get_query = f"_k=KEY&_p=bob&_n=Signed%20Up&_t={TS_SECOND}&_d=1&note=" + "x" * 2000
        req = request(message)
        assert (req.method, req.path, req.query, req.body) == ("POST", "/e", "", get_query.encode())
        assert req.target == "/e"

    def test_exactly_2000_stays_get(self) -> None:
        """A query of exactly 2000 bytes is still a GET."""
        head = f"_k=KEY&_p=bob&_n=Signed%20Up&_t={TS_SECOND}&_d=1&note="
        req = request(track({"note": "x" * (2000 - len(head))}))
        assert req.method == "GET" and len(req.query) == 2000 and req.body == b""

    def test_long_identify_becomes_post(self) -> None:
        """An /s over 2000 bytes is a POST to /s."""
        req = request(
            {"type": "identify", "timestamp": TS, "userId": "bob", "traits": {"bio": "é" * 400}}
        )
        assert (req.method, req.path, req.query) == ("POST", "/s", "")

    def test_alias_always_get(self) -> None:
        """/a stays a GET even when its query is over 2000 bytes."""
        req = request({"type": "alias", "previousId": "é" * 255, "userId": "ü" * 255})
        assert len(req.query) > 2000
        assert (req.method, req.body) == ("GET", b"")


class TestIdentityLength:
    def test_255_characters_is_fine(self) -> None:
        """An identity of exactly 255 characters is sent whole."""
        assert ("_p", "é" * 255) in pairs(track(userId="é" * 255))

    def test_256_characters_is_too_long(self) -> None:
        """`_p` over 255 characters is refused `too_long`, naming the field, not the value."""
        result = encoder().encode(track(userId="secret" * 50), None)
        assert isinstance(result, KmTooLong)
        assert result.reason == "too_long"
        assert "_p" in result.detail and "300" in result.detail and "secret" not in result.detail

    def test_alias_userid_too_long(self) -> None:
        """`_n` of /a over 255 characters is refused `too_long`."""
        result = encoder().encode({"type": "alias", "previousId": "d", "userId": "u" * 256}, None)
        assert isinstance(result, KmTooLong) and result.reason == "too_long"
        assert "_n" in result.detail

    def test_alias_previousid_too_long(self) -> None:
        """`_p` of /a over 255 characters is refused `too_long`."""
        result = encoder().encode({"type": "alias", "previousId": "d" * 256, "userId": "u"}, None)
        assert isinstance(result, KmTooLong) and result.reason == "too_long"

    @given(st.text(min_size=1, max_size=400))
    def test_identity_never_cut(self, ident: str) -> None:
        """Any identity is either sent whole or refused: never cut."""
        for message, field in (
            (track(userId=ident), "_p"),
            ({"type": "alias", "previousId": "dev", "userId": ident}, "_n"),
        ):
            result = encoder().encode(message, 1)
            if len(ident) > 255:
                assert isinstance(result, KmTooLong) and result.reason == "too_long"
            else:
                assert isinstance(result, KmRequest)
                query = result.query or result.body.decode()
                decoded = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
                assert decoded[field] == ident


class TestProperties:
    def test_sorted_by_cleaned_name_bytes(self) -> None:
        """Properties are in UTF-8 byte order of their cleaned names."""
        names = [k for k, _ in props_of(track({"b": 1, "a,z": 1, "😀": 1, "é": 1, "C": 1, "a": 1}))]
        assert names == ["C", "a", "a z", "b", "é", "😀"]

    def test_case_collision_first_wins_and_counts(self) -> None:
        """`Plan` and `plan` collide: the first in sort order is kept, the other counted."""
        enc = encoder()
        req = request(track({"plan": "b", "Plan": "a"}), enc=enc)
        assert req.query.endswith("&_d=1&Plan=a")
        assert enc.properties_dropped == 1

    def test_collision_after_cleaning(self) -> None:
        """`a,b` and `a:b` clean to the same name: one is kept."""
        enc = encoder()
        kept = props_of_with(enc, {"a:b": "2", "a,b": "1"})
        assert kept == [("a b", "1")]
        assert enc.properties_dropped == 1

    def test_underscore_names_dropped_and_counted(self) -> None:
        """Names starting with `_` are dropped and each counted."""
        enc = encoder()
        assert props_of_with(enc, {"_t": "1", "_private": "x", "ok": "y"}) == [("ok", "y")]
        assert enc.properties_dropped == 2

    def test_nested_flattened_to_dotted_keys(self) -> None:
        """Nested objects become dotted keys."""
        assert props_of(track({"a": {"b": {"c": 1}, "d": "x"}})) == [("a.b.c", "1"), ("a.d", "x")]

    def test_lists_joined_with_comma(self) -> None:
        """Lists are joined with `,`; null elements are skipped."""
        assert props_of(track({"tags": ["a", 2, True, None, "b"]})) == [("tags", "a,2,true,b")]

    def test_json_rendering_of_scalars(self) -> None:
        """Booleans and numbers are rendered as JSON renders them."""
        got = props_of(track({"b": True, "f": False, "i": 26, "x": 1.5}))
        assert got == [("b", "true"), ("f", "false"), ("i", "26"), ("x", "1.5")]

    def test_absent_and_empty_omitted(self) -> None:
        """None, empty strings, empty lists and empty objects are not sent, nor counted."""
        enc = encoder()
        assert props_of_with(enc, {"n": None, "e": "", "l": [], "d": {}, "z": 0}) == [("z", "0")]
        assert enc.properties_dropped == 0

    def test_empty_value_does_not_win_a_collision(self) -> None:
        """An omitted empty value leaves its case-twin to be sent."""
        assert props_of(track({"Plan": "", "plan": "pro"})) == [("plan", "pro")]

    def test_property_name_cut_to_255(self) -> None:
        """Property names are cut to 255 characters."""
        assert props_of(track({"n" * 300: "v"})) == [("n" * 255, "v")]

    def test_value_cut_at_8kib_character_boundary(self) -> None:
        """A value over 8 KiB is cut to at most 8192 bytes without splitting a character."""
        value = "a" + "€" * 3000  # 1 + 3*3000 bytes; 8191 = 1 + 3*2730 is the last boundary
        ((_, got),) = props_of(track({"v": value}))
        assert got == "a" + "€" * 2730
        assert len(got.encode()) == 8191

    def test_value_of_exactly_8kib_kept_whole(self) -> None:
        """A value of exactly 8192 bytes is not cut."""
        value = "é" * 4096
        assert props_of(track({"v": value})) == [("v", value)]


def props_of_with(enc: KmEncoder, props: dict[str, Any]) -> list[tuple[str, str]]:
    query = request(track(props), enc=enc).query
    head = ("_k", "_p", "_n", "_t", "_d")
    return [
        (k, v) for k, v in urllib.parse.parse_qsl(query, keep_blank_values=True) if k not in head
    ]


class TestPage:
    def test_page_event_and_viewed_url(self) -> None:
        """A page is `_n` = the page event with `Viewed URL` and `Referrer`; path/search/url/
        referrer are not sent."""
        message = page(
            {
                "path": "/p",
                "search": "?q=1",
                "url": "https://x.test/p?q=1",
                "referrer": "https://r/",
            }
        )
        req = request(message)
        assert req.target == (
            "/e?_k=KEY&_p=qFq2LweZugFNE4o49hLhmRPBW34&_n=Viewed%20Page"
            f"&_t={TS_SECOND}&_d=1&Referrer=https%3A%2F%2Fr%2F"
            "&Viewed%20URL=https%3A%2F%2Fx.test%2Fp%3Fq%3D1"
        )

    def test_configured_page_event(self) -> None:
        """`page_event` names the page's `_n`."""
        req = request(page({"path": "/"}), enc=KmEncoder(KEY, page_event="Visited"))
        assert ("_n", "Visited") in urllib.parse.parse_qsl(req.query)

    def test_no_url_uses_path_and_search(self) -> None:
        """Without a url, `Viewed URL` is the path and search."""
        assert ("Viewed URL", "/p?q=1") in pairs(
            page({"path": "/p", "search": "?q=1", "referrer": ""})
        )

    @pytest.mark.parametrize("referrer", ["", "-"])
    def test_referrer_omitted(self, referrer: str) -> None:
        """`Referrer` is omitted when the log has none or `-`."""
        got = props_of(page({"path": "/", "search": "", "referrer": referrer}))
        assert got == [("Viewed URL", "/")]

    def test_rule_properties_also_sent(self) -> None:
        """Page properties other than the four page fields are sent too."""
        got = props_of(page({"path": "/", "search": "", "campaign": "x", "URL": "u"}))
        assert got == [("URL", "u"), ("Viewed URL", "/"), ("campaign", "x")]

    def test_own_viewed_url_beats_rule_property_of_same_name(self) -> None:
        """A rule property named exactly `Viewed URL` loses to the page's own and is counted."""
        enc = encoder()
        req = request(page({"path": "/real", "Viewed URL": "fake"}), enc=enc)
        assert ("Viewed URL", "/real") in urllib.parse.parse_qsl(req.query)
        assert enc.properties_dropped == 1


class TestStampKey:
    def test_track(self) -> None:
        """A track's key is (`_p`, cleaned lower-cased event, event second)."""
        assert encoder().stamp_key(track(event="Signed:Up")) == ("bob", "signed up", TS_SECOND)

    def test_page(self) -> None:
        """A page's key names the page event."""
        key = KmEncoder(KEY, page_event="Viewed Page").stamp_key(page({"path": "/"}))
        assert key == ("qFq2LweZugFNE4o49hLhmRPBW34", "viewed page", TS_SECOND)

    def test_identify(self) -> None:
        """An identify's key names the literal `/s`."""
        message = {"type": "identify", "timestamp": TS, "userId": "bob", "anonymousId": "d"}
        assert encoder().stamp_key(message) == ("bob", "/s", TS_SECOND)

    def test_alias_has_none(self) -> None:
        """An alias has no `_t` and so no key."""
        message = {"type": "alias", "timestamp": TS, "previousId": "d", "userId": "bob"}
        assert encoder().stamp_key(message) is None

    def test_offset_timestamp_in_utc(self) -> None:
        """A timestamp with an offset is converted to UTC seconds."""
        key = encoder().stamp_key(track(timestamp="2026-11-27T09:00:47.999+01:00"))
        assert key == ("bob", "signed up", TS_SECOND)


class TestSecrets:
    def test_encoder_repr_hides_api_key(self) -> None:
        """The encoder's repr never shows the api key."""
        text = repr(KmEncoder("s3cr3t-key"))
        assert "s3cr3t" not in text and "Viewed Page" in text

    def test_request_repr_hides_api_key(self) -> None:
        """A request's repr masks `_k`, in the query and in a POST body."""
        enc = KmEncoder("s3cr3t-key")
        assert "s3cr3t" not in repr(request(track(), enc=enc))
        assert "s3cr3t" not in repr(request(track({"v": "x" * 3000}), enc=enc))


class TestRobustness:
    def test_lone_surrogate_is_replaced_not_raised(self) -> None:
        """A lone surrogate (impossible from JSON, possible in a dict) is sent as U+FFFD."""
        assert props_of(track({"v": "a\ud800b"})) == [("v", "a\ufffdb")]

    @given(
        st.dictionaries(
            st.text(max_size=8),
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                lambda inner: (
                    st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=4), inner, max_size=3)
                ),
                max_leaves=8,
            ),
            max_size=6,
        )
    )
    def test_any_properties_encode_sorted_and_unique(self, props: dict[str, Any]) -> None:
        """Any JSON-like properties encode without raising, sorted, with no case-twin names."""
        names = [k for k, _ in props_of_with(encoder(), props)]
        assert names == sorted(names, key=lambda n: n.encode())
        assert len({n.lower() for n in names}) == len(names)
        assert not any(n.startswith("_") for n in names)
