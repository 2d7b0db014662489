"""`trackd run --once` with the apache, json and regex access formats and a logfmt app source:
page views come out, and malformed lines are counted per source and reason, never fatal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from tests.helpers import UA, make_config, read_messages, run_trackd

T = "28/Nov/2026:10:00:00 -0500"
APACHE = '%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-Agent}i" %{km_ai}C'
REGEX = r'^(?P<ip>\S+) (?P<time>\S+) (?P<method>\S+) (?P<target>\S+) (?P<status>\d+) "(?P<user_agent>[^"]*)"$'
GARBAGE = ["this is not a log line", "\x00\x01\x02", '{"half": ']


def sources(tmp: Path) -> list[dict[str, Any]]:
    apache = tmp / "apache.log"
    apache.write_text(
        "\n".join(
            [
                f'198.51.100.{i} - - [{T}] "GET /a/{i} HTTP/1.1" 200 512 "-" "{UA}" visitor{i:04d}x'
                for i in range(3)
            ]
            + GARBAGE
        )
        + "\n"
    )
    jsonl = tmp / "caddy.log"
    jsonl.write_text(
        "\n".join(
            [
                orjson.dumps(
                    {
                        "ts": 1795878000 + i,
                        "request": {
                            "remote_ip": f"198.51.100.{i}",
                            "method": "GET",
                            "uri": f"/j/{i}",
                            "headers": {"User-Agent": [UA]},
                        },
                        "status": 200,
                    }
                ).decode()
                for i in range(2)
            ]
            + GARBAGE
        )
        + "\n"
    )
    regex = tmp / "lb.log"
    regex.write_text(
        f'198.51.100.9 2026-11-28T15:00:05Z GET /r/1 200 "{UA}"\n' + "\n".join(GARBAGE) + "\n"
    )
    app = tmp / "app.log"
    app.write_text(
        "ts=2026-11-28T15:00:01Z event=login user=alice\n"
        "Traceback (most recent call last):\n"
        '  File "app.py", line 1, in <module>\n'
        "ValueError: boom\n"
        "event=no-time\n"
    )
    return [
        {
            "name": "ap",
            "kind": "access",
            "paths": [str(apache)],
            "format": "apache",
            "log_format": APACHE,
        },
        {
            "name": "js",
            "kind": "access",
            "paths": [str(jsonl)],
            "format": "json",
            "fields": {
                "ip": "request.remote_ip",
                "method": "request.method",
                "target": "request.uri",
                "user_agent": "request.headers.User-Agent",
            },
            "time_field": "ts",
            "time_format": "unix",
        },
        {"name": "rx", "kind": "access", "paths": [str(regex)], "format": "regex", "regex": REGEX},
        {"name": "app", "kind": "app", "paths": [str(app)], "format": "logfmt"},
    ]


def test_new_formats_run_end_to_end_and_count_what_they_skip(tmp_path: Path) -> None:
    """Every good access line is a page view with its UTC time; every malformed line (of every
    format) is counted as parse_error for its source; traceback lines are not errors."""
    cfg = make_config(tmp_path, sources=sources(tmp_path))
    proc = run_trackd("run", "--once", "-c", str(cfg))
    assert proc.returncode == 0, proc.stderr
    pages = read_messages(tmp_path / "out.jsonl")
    assert sorted(p["properties"]["path"] for p in pages) == [
        "/a/0",
        "/a/1",
        "/a/2",
        "/j/0",
        "/j/1",
        "/r/1",
    ]
    by_path = {p["properties"]["path"]: p for p in pages}
    assert by_path["/a/0"]["anonymousId"] == "visitor0000x"
    assert by_path["/a/0"]["timestamp"] == "2026-11-28T15:00:00.000Z"
    assert by_path["/j/1"]["timestamp"] == "2026-11-28T15:00:01.000Z"
    skipped = {
        (e["source"], e["reason"]): e["count"]
        for e in (orjson.loads(line) for line in proc.stderr.splitlines() if line[:1] == "{")
        if e.get("event") == "lines_skipped"
    }
    assert skipped == {
        ("ap", "parse_error"): 3,
        ("js", "parse_error"): 3,
        ("rx", "parse_error"): 3,
        ("app", "parse_error"): 1,
    }
