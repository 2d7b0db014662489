"""Application log parsing (json so far): times, zones, continuation lines."""

from __future__ import annotations

import calendar

import pytest
from hypothesis import given

from agent.parse import build_app_parser
from agent.parse.app import get_field
from agent.records import CONTINUATION, AppRecord
from tests.strategies import line_bytes


def utc(*parts: int) -> float:
    return float(calendar.timegm((*parts, 0, 0, 0)))


class TestJson:
    def test_iso_time_with_offset_and_nested_fields(self) -> None:
        """An ISO time with an offset converts to UTC; nested keys stay reachable by dotted name."""
        parser = build_app_parser("json", time_field="ts", time_format="iso8601")
        rec = parser(
            '{"ts": "2026-11-28T10:00:00.250+05:30", "event": "login", "user": {"email": "a@x"}}'
        )
        assert isinstance(rec, AppRecord)
        assert rec.ts == utc(2026, 11, 28, 4, 30, 0) + 0.25
        assert rec.precision == 0.001
        assert get_field(rec.fields, "user.email") == "a@x"

    def test_naive_time_uses_the_configured_zone(self) -> None:
        """A time without an offset is read in `timezone`."""
        parser = build_app_parser(
            "json", time_field="t", time_format="%Y-%m-%d %H:%M:%S", timezone="America/New_York"
        )
        rec = parser('{"t": "2026-11-28 10:00:00"}')
        assert isinstance(rec, AppRecord) and rec.ts == utc(2026, 11, 28, 15, 0, 0)

    @pytest.mark.parametrize(
        ("fmt", "value", "expected"),
        [("unix", 1795860000, 1795860000.0), ("unix_ms", 1795860000250, 1795860000.25)],
    )
    def test_epoch_formats(self, fmt: str, value: int, expected: float) -> None:
        """unix and unix_ms times."""
        rec = build_app_parser("json", time_field="ts", time_format=fmt)(f'{{"ts": {value}}}')
        assert isinstance(rec, AppRecord) and rec.ts == expected

    def test_time_field_is_found_without_configuration(self) -> None:
        """Without time_field, the usual names (ts, time, timestamp, @timestamp) are tried."""
        rec = build_app_parser("json", time_field=None, time_format=None)(
            '{"@timestamp": "2026-11-28T10:00:00Z"}'
        )
        assert isinstance(rec, AppRecord) and rec.ts == utc(2026, 11, 28, 10, 0, 0)

    def test_traceback_lines_are_continuations(self) -> None:
        """A traceback after an entry is a continuation, not a parse error."""
        parser = build_app_parser("json", time_field="ts", time_format=None)
        for line in (
            "Traceback (most recent call last):",
            '  File "app.py", line 3, in h',
            "ValueError: boom",
        ):
            assert parser(line) is CONTINUATION

    def test_missing_time_is_explained(self) -> None:
        """An object without its time field does not parse, and explain() says why."""
        parser = build_app_parser("json", time_field="ts", time_format=None)
        assert parser('{"event": "login"}') is None
        assert "no time field (ts)" in parser.explain('{"event": "login"}')


@given(line_bytes)
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    """Any bytes into the json app parser give a record, a continuation or None."""
    parser = build_app_parser("json", time_field=None, time_format=None)
    text = data.decode("utf-8", "replace")
    if parser(text) is None:
        assert isinstance(parser.explain(text), str)
