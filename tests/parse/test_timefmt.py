"""Fast timestamp parsing agrees with the standard library."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from agent.events.messages import Timestamps
from agent.parse.timefmt import ClfTime

moments = st.datetimes(min_value=datetime(2009, 1, 1), max_value=datetime(2099, 12, 31))
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: m - m % 15)


@given(moments, offsets)
def test_clf_time_matches_strptime(moment: datetime, offset_minutes: int) -> None:
    """Any CLF timestamp in any zone gives the same UTC time as datetime.strptime."""
    tz = timezone(timedelta(minutes=offset_minutes))
    text = moment.replace(microsecond=0, tzinfo=tz).strftime("%d/%b/%Y:%H:%M:%S %z")
    expected = datetime.strptime(text, "%d/%b/%Y:%H:%M:%S %z").timestamp()
    parse = ClfTime()
    assert parse(text) == expected
    assert parse(text) == expected  # and again from the cache


@given(st.text(max_size=30))
def test_clf_time_rejects_garbage_without_raising(text: str) -> None:
    """Anything that is not a CLF timestamp gives None."""
    result = ClfTime()(text)
    if result is not None:
        assert datetime.strptime(text, "%d/%b/%Y:%H:%M:%S %z")


def test_clf_time_rejects_impossible_dates() -> None:
    """31 February and hour 25 are not times."""
    parse = ClfTime()
    assert parse("31/Feb/2026:10:00:00 +0000") is None
    assert parse("28/Feb/2026:25:00:00 +0000") is None


@given(st.floats(min_value=1230768000, max_value=4102444800, allow_nan=False))
def test_timestamps_match_strftime(ts: float) -> None:
    """Formatting by day + arithmetic equals strftime of the rounded millisecond."""
    text = Timestamps()(ts)
    second = int(ts)
    millis = round((ts - second) * 1000)
    if millis >= 1000:
        second, millis = second + 1, millis - 1000
    expected = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    assert text == f"{expected}.{millis:03d}Z"
