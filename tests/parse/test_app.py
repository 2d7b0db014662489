"""Application log formats (json, logfmt, regex): times, zones, multi-line entries."""

from __future__ import annotations

import calendar

import pytest
from hypothesis import given

from agent.parse import AppParser, FormatError, build_app_parser
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


class TestLogfmt:
    def test_pairs_quoted_values_and_bare_keys(self) -> None:
        """`k=v`, `k="quoted \\" value"`, `k=` and a bare `k` (true) all read."""
        parser = build_app_parser("logfmt", time_field=None, time_format=None)
        rec = parser(
            'ts=2026-11-28T10:00:00.120Z level=info msg="signed in \\"ok\\"" user.email=a@x '
            "empty= debug"
        )
        assert isinstance(rec, AppRecord)
        assert rec.fields == {
            "ts": "2026-11-28T10:00:00.120Z",
            "level": "info",
            "msg": 'signed in "ok"',
            "user.email": "a@x",
            "empty": "",
            "debug": True,
        }
        assert rec.ts == utc(2026, 11, 28, 10, 0, 0) + 0.12
        assert get_field(rec.fields, "user.email") == "a@x"

    def test_first_occurrence_of_a_key_wins(self) -> None:
        """A repeated key keeps its first value."""
        rec = build_app_parser("logfmt", time_field="t", time_format="unix")("t=1795860000 a=1 a=2")
        assert isinstance(rec, AppRecord) and rec.fields["a"] == "1"

    def test_unix_ms_time_as_text(self) -> None:
        """Epoch times written as text read with unix / unix_ms."""
        parser = build_app_parser("logfmt", time_field="at", time_format="unix_ms")
        rec = parser("at=1795860000250 event=login")
        assert isinstance(rec, AppRecord) and rec.ts == 1795860000.25

    def test_go_style_traceback_and_blank_lines_are_continuations(self) -> None:
        """Indented frames, exception lines and blank lines continue the entry before them."""
        parser = build_app_parser("logfmt", time_field=None, time_format=None)
        for line in ("", "   ", "\tat com.example.Handler(Handler.java:42)", "RuntimeError: x"):
            assert parser(line) is CONTINUATION

    def test_a_line_without_time_is_explained(self) -> None:
        """Pairs without a readable time do not parse, and explain() says which key."""
        parser = build_app_parser("logfmt", time_field="ts", time_format=None)
        assert parser("level=info msg=hi") is None
        assert "no time field (ts)" in parser.explain("level=info msg=hi")
        assert "no key=value pairs" in parser.explain("plain words")


class TestRegex:
    PY = r"^(?P<ts>\S+ \S+) (?P<level>[A-Z]+) (?P<logger>[\w.]+): (?P<message>.*)$"

    def parser(self, **kw: str) -> AppParser:
        return build_app_parser(
            "regex", regex=self.PY, time_field=None, time_format="%Y-%m-%d %H:%M:%S,%f", **kw
        )

    def test_python_logging_line_in_a_zone(self) -> None:
        """A Python `logging` line (comma milliseconds) in Europe/Paris becomes UTC."""
        rec = self.parser(timezone="Europe/Paris")(
            "2026-11-28 10:00:00,250 INFO app.auth: login ok"
        )
        assert isinstance(rec, AppRecord)
        assert rec.ts == pytest.approx(utc(2026, 11, 28, 9, 0, 0) + 0.25)
        assert rec.fields["logger"] == "app.auth" and rec.fields["message"] == "login ok"

    def test_a_traceback_after_an_error_line_never_makes_records(self) -> None:
        """The whole multi-line entry: one record, then only continuations."""
        entry = [
            "2026-11-28 10:00:01,000 ERROR app.views: boom",
            "Traceback (most recent call last):",
            '  File "/srv/app/views.py", line 3, in handler',
            "    raise ValueError('bad')",
            "ValueError: bad",
            "",
            "During handling of the above exception, another exception occurred:",
            "KeyError: 'x'",
        ]
        out = [self.parser()(line) for line in entry]
        assert isinstance(out[0], AppRecord)
        assert all(o is CONTINUATION for o in out[1:])

    def test_java_stack_trace_lines_are_continuations(self) -> None:
        """`\\tat …`, `Caused by: …` and `... 12 more` continue the entry."""
        parser = self.parser()
        for line in ("\tat x.Y.z(Y.java:1)", "Caused by: java.io.IOException: x", "... 12 more"):
            assert parser(line) is CONTINUATION

    def test_an_unmatched_ordinary_line_is_not_a_continuation(self) -> None:
        """A line of another shape is a parse error (counted), not swallowed."""
        assert self.parser()("random text that is not an entry") is None

    def test_time_field_must_name_a_group(self) -> None:
        """time_field naming no group is an error at time_field."""
        with pytest.raises(FormatError) as err:
            build_app_parser("regex", regex=self.PY, time_field="when", time_format=None)
        assert err.value.key == "time_field"


class TestJsonMore:
    def test_dotted_time_field_and_epoch_number(self) -> None:
        """`time_field: meta.at` reaches into the object; a JSON number with unix is seconds."""
        rec = build_app_parser("json", time_field="meta.at", time_format="unix")(
            '{"meta": {"at": 1795860000.5}, "event": "login"}'
        )
        assert isinstance(rec, AppRecord) and rec.ts == 1795860000.5

    def test_a_json_line_that_is_not_an_object(self) -> None:
        """`[1,2]` and broken JSON are parse errors with a reason."""
        parser = build_app_parser("json", time_field=None, time_format=None)
        assert parser("[1, 2]") is None and parser('{"a": ') is None
        assert "invalid JSON" in parser.explain('{"a": ')

    def test_dst_gap_and_overlap_in_local_time(self) -> None:
        """Local times in New York around DST changes: the repeated hour takes its first
        occurrence (EDT), times after the change use EST."""
        parser = build_app_parser(
            "json", time_field="t", time_format="%Y-%m-%d %H:%M:%S", timezone="America/New_York"
        )
        before = parser('{"t": "2026-11-01 01:30:00"}')
        after = parser('{"t": "2026-11-01 03:00:00"}')
        assert isinstance(before, AppRecord) and before.ts == utc(2026, 11, 1, 5, 30, 0)
        assert isinstance(after, AppRecord) and after.ts == utc(2026, 11, 1, 8, 0, 0)


@given(line_bytes)
def test_arbitrary_bytes_never_raise_in_any_app_format(data: bytes) -> None:
    """Any bytes into the logfmt and regex app parsers give a record, a continuation or None."""
    text = data.decode("utf-8", "replace")
    for parser in (
        build_app_parser("logfmt", time_field=None, time_format=None),
        build_app_parser("regex", regex=TestRegex.PY, time_field=None, time_format=None),
    ):
        if parser(text) is None:
            assert isinstance(parser.explain(text), str)
