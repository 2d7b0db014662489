"""The `regex` access format: named groups are our fields; time via time_field/time_format."""

from __future__ import annotations

import calendar

import pytest

from agent.parse import FormatError, build_access_parser
from agent.records import AccessRecord


def utc(*parts: int) -> float:
    return float(calendar.timegm((*parts, 0, 0, 0)))


# A load balancer's own layout: `time=… client=… "METHOD target PROTO" status bytes rt`.
LB = (
    r'^time=(?P<time>\S+) client=(?P<ip>\S+) "(?P<method>\S+) (?P<target>\S+) '
    r'(?P<protocol>[^"]*)" (?P<status>\d{3}) (?P<bytes>\d+) (?P<request_time>[\d.]+)'
    r"(?: host=(?P<host>\S+))?(?: ab=(?P<cookie_ab>\S+))?(?: (?P<trace_id>[0-9a-f]+))?$"
)


def parse(regex: str, line: str, **kw: str) -> AccessRecord:
    parser = build_access_parser("regex", regex=regex, **kw)
    rec = parser(line)
    assert rec is not None, parser.explain(line)
    return rec


class TestGroups:
    def test_named_groups_fill_the_record(self) -> None:
        """Groups named after our fields fill them; an ISO time with -05:00 becomes UTC."""
        rec = parse(
            LB,
            'time=2026-11-28T10:00:00.120-05:00 client=198.51.100.7 "GET /a?b=1 HTTP/2.0" 200 '
            "512 0.031 host=shop.example.com ab=B 4bf92f35",
        )
        assert (rec.ip, rec.method, rec.target, rec.protocol) == (
            "198.51.100.7",
            "GET",
            "/a?b=1",
            "HTTP/2.0",
        )
        assert (rec.status, rec.bytes, rec.request_time) == (200, 512, 0.031)
        assert rec.ts == pytest.approx(utc(2026, 11, 28, 15, 0, 0) + 0.12)
        assert rec.precision == 0.001
        assert rec.host == "shop.example.com" and rec.cookies == {"ab": "B"}
        assert rec.extra == {"trace_id": "4bf92f35"}

    def test_optional_groups_that_did_not_match_are_empty(self) -> None:
        """A group that took no part in the match reads as empty, never as an error."""
        rec = parse(LB, 'time=2026-11-28T10:00:00Z client=1.2.3.4 "GET / HTTP/1.1" 200 5 0.001')
        assert rec.host == "" and rec.cookies == {} and rec.extra == {"trace_id": ""}

    def test_nginx_variable_names_work_as_group_names(self) -> None:
        """`remote_addr`, `time_local`, `request`, `http_user_agent` groups need no renaming."""
        rec = parse(
            r'^(?P<remote_addr>\S+) \[(?P<time_local>[^\]]+)\] "(?P<request>[^"]*)" '
            r'(?P<status>\d+) "(?P<http_user_agent>[^"]*)"',
            '1.2.3.4 [28/Nov/2026:10:00:00 +0530] "GET /x HTTP/1.1" 200 "curl/8"',
        )
        assert (rec.ip, rec.target, rec.user_agent) == ("1.2.3.4", "/x", "curl/8")
        assert rec.ts == utc(2026, 11, 28, 4, 30, 0)

    def test_path_and_query_groups_rebuild_the_target(self) -> None:
        """Separate `path` and `query` groups make `path?query`."""
        rec = parse(
            r"^(?P<ts>\d+) (?P<method>\w+) (?P<path>\S+) (?P<query>\S*) (?P<status>\d+)$",
            "1795856400 GET /search q=shoes 200",
            time_field="ts",
            time_format="unix",
        )
        assert rec.target == "/search?q=shoes" and rec.ts == 1795856400.0

    def test_strftime_time_in_a_zone(self) -> None:
        """`time_format` strftime without an offset is read in `timezone` (+05:30 here)."""
        rec = parse(
            r"^(?P<when>\S+ \S+) (?P<request>.+) (?P<status>\d{3})$",
            "2026/11/28 10:00:00 GET / HTTP/1.1 200",
            time_field="when",
            time_format="%Y/%m/%d %H:%M:%S",
            timezone="Asia/Kolkata",
        )
        assert rec.ts == utc(2026, 11, 28, 4, 30, 0)

    def test_values_are_taken_verbatim(self) -> None:
        """The regex format does not undo server escaping: it reads what the regex captures."""
        rec = parse(
            r'^(?P<time>\S+) "(?P<request>[^"]*)" "(?P<user_agent>[^"]*)"$',
            '2026-11-28T10:00:00Z "GET / HTTP/1.1" "a\\x22b"',
        )
        assert rec.user_agent == "a\\x22b"

    def test_unmatched_line_and_bad_time_are_explained(self) -> None:
        """explain() tells a non-matching line from an unreadable time."""
        parser = build_access_parser("regex", regex=LB)
        assert "does not match the regex" in parser.explain("nope")
        line = 'time=yesterday client=1.2.3.4 "GET / HTTP/1.1" 200 5 0.001'
        assert parser(line) is None
        assert "time" in parser.explain(line)


class TestErrors:
    @pytest.mark.parametrize(
        ("regex", "options", "key", "needle"),
        [
            ("(unclosed", {}, "regex", "invalid regular expression"),
            (r"(\S+) (\S+)", {}, "regex", "no named groups"),
            (r"(?P<path>\S+)", {}, "regex", "no time group"),
            (r"(?P<time>\S+) (?P<status>\d+)", {}, "regex", "no request"),
            (r"(?P<ts>\S+) (?P<path>\S+)", {"time_field": "when"}, "time_field", "'when'"),
            (r"(?P<time>\S+) (?P<path>\S+)", {"time_format": "%Q"}, "time_format", "%Q"),
        ],
    )
    def test_unusable_regexes_name_the_key_at_fault(
        self, regex: str, options: dict[str, str], key: str, needle: str
    ) -> None:
        """A regex source that cannot work says why, and which config key to change."""
        with pytest.raises(FormatError, match=needle) as err:
            build_access_parser("regex", regex=regex, **options)
        assert err.value.key == key
