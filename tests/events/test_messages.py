"""Message encoding: fixed key order and UTC timestamps."""

from __future__ import annotations

import orjson

from agent.events.messages import Timestamps, alias_message, encode, page_message


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
