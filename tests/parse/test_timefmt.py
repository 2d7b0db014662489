"""Event times: the fixed server layouts and the configurable `time_format`."""

from __future__ import annotations

import calendar
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.events.messages import Timestamps
from agent.parse.timefmt import ClfTime, TimeParser, check_strftime, strftime_regex


def utc(*parts: int) -> float:
    return float(calendar.timegm((*parts, 0, 0, 0)))


class TestTimeParser:
    @pytest.mark.parametrize(
        ("fmt", "value", "expected", "precision"),
        [
            ("iso8601", "2026-11-28T10:00:00-05:00", utc(2026, 11, 28, 15, 0, 0), 1.0),
            ("iso8601", "2026-11-28T10:00:00.5+05:30", utc(2026, 11, 28, 4, 30, 0) + 0.5, 0.001),
            (
                "iso8601",
                "2026-11-28T10:00:00.123456789Z",
                utc(2026, 11, 28, 10, 0, 0) + 0.123456,
                1e-6,
            ),
            ("unix", "1795860000", 1795860000.0, 1.0),
            ("unix", 1795860000.25, 1795860000.25, 0.01),
            ("unix_ms", 1795860000250, 1795860000.25, 0.001),
            (
                "%d/%b/%Y:%H:%M:%S %z",
                "28/Nov/2026:10:00:00 +0530",
                utc(2026, 11, 28, 4, 30, 0),
                1.0,
            ),
            ("%F %T", "2026-11-28 10:00:00", utc(2026, 11, 28, 10, 0, 0), 1.0),
        ],
    )
    def test_formats(self, fmt: str, value: object, expected: float, precision: float) -> None:
        """Each time_format reads its values into UTC seconds with their precision."""
        result = TimeParser(fmt)(value)
        assert result is not None
        assert result[0] == pytest.approx(expected) and result[1] == precision

    @pytest.mark.parametrize(
        "value", [None, True, "", "soon", "nan", float("nan"), float("inf"), 10**30, [], {}]
    )
    def test_unreadable_values_are_none(self, value: object) -> None:
        """Garbage, booleans, NaN, infinities and absurd epochs are None, never an error."""
        assert TimeParser(None)(value) is None
        assert TimeParser("unix")(value) is None

    def test_local_times_take_the_zone(self) -> None:
        """A time without an offset is read in the configured zone; one with an offset is not."""
        parser = TimeParser("iso8601", "Asia/Kolkata")
        assert parser("2026-11-28T10:00:00") == (utc(2026, 11, 28, 4, 30, 0), 1.0)
        assert parser("2026-11-28T10:00:00Z") == (utc(2026, 11, 28, 10, 0, 0), 1.0)

    def test_auto_reads_clf_iso_and_epochs(self) -> None:
        """Without a format: CLF times, ISO 8601 and epochs in s/ms/µs/ns."""
        auto = TimeParser(None)
        ts = utc(2026, 11, 28, 10, 0, 0)
        assert auto("28/Nov/2026:05:00:00 -0500") == (ts, 1.0)
        assert auto("2026-11-28T10:00:00Z") == (ts, 1.0)
        for scale in (1, 1000, 1_000_000, 1_000_000_000):
            result = auto(int(ts) * scale)
            assert result is not None and result[0] == ts

    def test_a_bad_strftime_pattern_is_refused(self) -> None:
        """A directive strptime cannot read back is a ValueError naming it."""
        with pytest.raises(ValueError, match="%k"):
            TimeParser("%k:%M")
        check_strftime("%Y-%m-%dT%H:%M:%S.%f%z")


class TestStrftimeRegex:
    @given(st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2090, 1, 1)))
    def test_regex_matches_what_strftime_writes(self, dt: datetime) -> None:
        """For Apache's common `%{…}t` patterns, the regex matches strftime's output exactly."""
        aware = dt.replace(tzinfo=timezone(timedelta(hours=5, minutes=30)))
        for fmt in (
            "%d/%b/%Y:%H:%M:%S %z",
            "%F %T",
            "%a, %d %b %Y %H:%M:%S %z",
            "%A %B %j %p %I %y",
        ):
            assert re.fullmatch(strftime_regex(fmt), aware.strftime(fmt)), fmt


@given(
    st.datetimes(min_value=datetime(2009, 1, 1), max_value=datetime(2090, 1, 1)),
    st.integers(min_value=-12 * 60, max_value=14 * 60),
)
def test_clf_round_trip_in_any_offset(dt: datetime, offset_minutes: int) -> None:
    """Any time rendered as CLF in any whole-minute offset reads back as the same instant."""
    aware = dt.replace(microsecond=0, tzinfo=timezone(timedelta(minutes=offset_minutes)))
    assert ClfTime()(aware.strftime("%d/%b/%Y:%H:%M:%S %z")) == aware.timestamp()


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
