"""Message encoding: fixed key order and UTC timestamps."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.events.messages import (
    Timestamps,
    alias_fields,
    alias_message,
    context_bytes,
    context_head,
    encode,
    identify_fields,
    identify_message,
    message_bytes,
    page_fields,
    page_message,
    source_head,
    track_fields,
    track_message,
)


def test_page_keys_in_spec_order() -> None:
    """A page message's keys follow SPEC §3.1's order; absent ids are left out."""
    msg = page_message("m", "t", "u", None, None, {"path": "/"}, {"source": {}})
    assert list(orjson.loads(encode(msg))) == [
        "type",
        "messageId",
        "timestamp",
        "userId",
        "properties",
        "context",
    ]


def test_alias_has_previous_id_and_no_anonymous_id() -> None:
    """An alias carries userId and previousId, never anonymousId."""
    msg = orjson.loads(encode(alias_message("m", "t", "bob@x.com", "dev~1", {})))
    assert msg["previousId"] == "dev~1" and msg["userId"] == "bob@x.com"
    assert "anonymousId" not in msg


def test_timestamps_are_utc_with_milliseconds() -> None:
    """Event times format as ISO 8601 UTC with exactly three fraction digits."""
    stamps = Timestamps()
    assert stamps(1795766400.0) == "2026-11-27T08:00:00.000Z"
    assert stamps(1795766400.1234) == "2026-11-27T08:00:00.123Z"
    assert stamps(1795766400.9996) == "2026-11-27T08:00:01.000Z"


# -- the spliced builders are byte-identical to the dict builders (the reference) -----------

#: Any code point but lone surrogates (orjson refuses those, in both forms alike).
_texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
_opt = st.none() | _texts
_props = st.dictionaries(
    _texts, _texts | st.integers(-(2**63), 2**63 - 1) | st.booleans() | st.none(), max_size=4
)


@st.composite
def _contexts(draw: st.DrawFn) -> tuple[dict[str, Any], bytes]:
    """A context as the dict builders get it, and as the pipeline encodes it."""
    ip, agent = draw(_opt), draw(_texts)
    page = draw(st.none() | st.dictionaries(_texts, _texts, max_size=4))
    resolution, contested = draw(_texts), draw(st.booleans())
    name, file, offset = draw(_texts), draw(_texts), draw(st.integers(0, 2**62))
    ctx: dict[str, Any] = {}
    if ip is not None:
        ctx["ip"] = ip
    if agent:
        ctx["userAgent"] = agent
    if page is not None:
        ctx["page"] = page
    ctx["identity"] = {"resolution": resolution, "contested": contested}
    ctx["source"] = {"name": name, "file": file, "offset": offset}
    encoded = context_bytes(
        context_head(ip, agent),
        None if page is None else orjson.dumps(page),
        resolution,
        contested,
        source_head(name, file),
        offset,
    )
    return ctx, encoded


@pytest.mark.timeout(60)
@settings(max_examples=300)
@given(_texts, _texts, _opt, _opt, _opt, st.dictionaries(_texts, _texts, max_size=4), _contexts())
def test_page_bytes_equal_the_encoded_dict(
    mid: str,
    ts: str,
    user: str | None,
    anon: str | None,
    name: str | None,
    page: dict[str, str],
    context: tuple[dict[str, Any], bytes],
) -> None:
    """A page from encoded parts (`message_bytes`) is exactly `encode(page_message(...))`."""
    ctx, encoded = context
    want = encode(page_message(mid, ts, user, anon, name, page, ctx))
    fields = page_fields(name, orjson.dumps(page))
    assert message_bytes("page", mid, ts, user, anon, fields, encoded) == want


@pytest.mark.timeout(60)
@settings(max_examples=300)
@given(_texts, _texts, _opt, _opt, _texts, _props, _texts, _contexts())
def test_track_identify_alias_bytes_equal_the_encoded_dicts(
    mid: str,
    ts: str,
    user: str | None,
    anon: str | None,
    event: str,
    props: dict[str, Any],
    previous: str,
    context: tuple[dict[str, Any], bytes],
) -> None:
    """track, identify and alias messages from encoded parts are exactly what the dict
    builders encode to, whichever ids are present."""
    ctx, encoded = context
    track = message_bytes("track", mid, ts, user, anon, track_fields(event, props), encoded)
    assert track == encode(track_message(mid, ts, user, anon, event, props, ctx))
    named = user if user is not None else event
    identify = message_bytes("identify", mid, ts, named, anon, identify_fields(props), encoded)
    assert identify == encode(identify_message(mid, ts, named, anon, props, ctx))
    alias = message_bytes("alias", mid, ts, named, None, alias_fields(previous), encoded)
    assert alias == encode(alias_message(mid, ts, named, previous, ctx))
