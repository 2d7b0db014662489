"""`trackd check --sample`: match rate, unparsed lines with reasons, the first record masked —
for every access and app format, as text and as JSON."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from agent.commands.check import check_sources
from agent.config import load_config
from tests.helpers import run_trackd

T = "28/Nov/2026:10:00:00 -0500"
COOKIE = "km_ai=qFq2LweZugFNE4o49hLhmRPBW34; km_ni=alice%40example.com"
GOOD_COMBINED = f'198.51.100.7 - - [{T}] "GET /a?token=s3cr3t&x=1 HTTP/1.1" 200 5 "-" "curl/8"'

#: format -> (source options, sample lines (3 good, 1 bad; app formats add a traceback line)).
CASES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "common": ({}, [f'198.51.100.7 - - [{T}] "GET / HTTP/1.1" 200 5'] * 3 + ["nope"]),
    "combined": ({}, [GOOD_COMBINED] * 3 + ["nope"]),
    "combined_cookie": ({}, [f'{GOOD_COMBINED} "{COOKIE}"'] * 3 + [GOOD_COMBINED + ' "x" y']),
    "nginx": (
        {"log_format": '$remote_addr [$time_local] "$request" $status "$http_cookie"'},
        [f'198.51.100.7 [{T}] "GET / HTTP/1.1" 200 "{COOKIE}"'] * 3
        + [f'198.51.100.7 [{T}] "GET / HTTP/1.1" OK "-"'],
    ),
    "apache": (
        {"log_format": '%a %t "%r" %>s %{km_ai}C'},
        [f'198.51.100.7 [{T}] "GET / HTTP/1.1" 200 qFq2LweZugFNE4o49hLhmRPBW34'] * 3
        + ["198.51.100.7 [yesterday] GET 200"],
    ),
    "json": (
        {"fields": {"ip": "client", "request": "req"}, "time_field": "at"},
        ['{"at": "2026-11-28T10:00:00Z", "client": "198.51.100.7", "req": "GET / HTTP/1.1"}'] * 3
        + ['{"req": "GET /"}'],
    ),
    "regex": (
        {"regex": r'^(?P<ip>\S+) \[(?P<time>[^\]]+)\] "(?P<request>[^"]*)" (?P<status>\d+)$'},
        [f'198.51.100.7 [{T}] "GET / HTTP/1.1" 200'] * 3 + ["garbage"],
    ),
}
APP_CASES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "json": (
        {"time_field": "ts"},
        ['{"ts": "2026-11-28T10:00:00Z", "event": "login", "session_id": "9f8e7d6c5b4a"}'] * 3
        + ['{"event": "x"}', "Traceback (most recent call last):"],
    ),
    "logfmt": (
        {},
        ["ts=2026-11-28T10:00:00Z event=login email=alice@example.com"] * 3
        + ["event=x", "  continuing detail"],
    ),
    "regex": (
        {"regex": r"^(?P<ts>\S+) (?P<event>\w+) (?P<client>\S+)$"},
        ["2026-11-28T10:00:00Z login 198.51.100.7"] * 3 + ["not an entry", "ValueError: boom"],
    ),
}


def write_config(tmp: Path, kind: str, fmt: str, options: dict[str, Any]) -> Path:
    source = {"name": "src", "kind": kind, "paths": [str(tmp / "none.log")], "format": fmt}
    cfg = tmp / "trackd.yaml"
    cfg.write_text(
        yaml.safe_dump({"state_dir": str(tmp / "state"), "sources": [{**source, **options}]})
    )
    return cfg


def report(tmp: Path, kind: str, fmt: str, options: dict[str, Any], lines: list[str]) -> Any:
    sample = tmp / "sample.log"
    sample.write_text("\n".join(lines) + "\n")
    (rep,) = check_sources(load_config(str(write_config(tmp, kind, fmt, options))), str(sample))
    return rep


@pytest.mark.parametrize("fmt", sorted(CASES))
def test_every_access_format_reports_rate_reasons_and_first_record(
    tmp_path: Path, fmt: str
) -> None:
    """For each access format: 3 of 4 lines parse, line 4's reason is given, the first record
    is shown with the client address truncated and no cookie value."""
    options, lines = CASES[fmt]
    rep = report(tmp_path, "access", fmt, options, lines)
    assert (rep.parsed, rep.lines) == (3, 4)
    assert [n for n, _ in rep.unparsed] == [4] and rep.unparsed[0][1]
    assert rep.first_fields["ip"] == "198.51.100.0/24"
    assert "qFq2LweZugFNE4o49hLhmRPBW34" not in json.dumps(rep.as_dict())


@pytest.mark.parametrize("fmt", sorted(APP_CASES))
def test_every_app_format_counts_continuations_apart(tmp_path: Path, fmt: str) -> None:
    """For each app format: entries parse, the bad line is explained, the traceback line is a
    continuation (neither parsed nor failed)."""
    options, lines = APP_CASES[fmt]
    rep = report(tmp_path, "app", fmt, options, lines)
    assert (rep.parsed, rep.lines, rep.continuations) == (3, 4, 1)
    assert [n for n, _ in rep.unparsed] == [4]
    assert rep.first_fields["time"] == "2026-11-28T10:00:00Z"


class TestMasking:
    def test_cookies_tokens_and_addresses_never_shown(self, tmp_path: Path) -> None:
        """Cookie values, redacted query parameters and full addresses stay out (SPEC §8)."""
        options, lines = CASES["combined_cookie"]
        rep = report(tmp_path, "access", "combined_cookie", options, lines)
        shown = json.dumps(rep.as_dict())
        for secret in (
            "qFq2LweZugFNE4o49hLhmRPBW34",
            "alice%40example.com",
            "s3cr3t",
            "198.51.100.7",
        ):
            assert secret not in shown
        assert rep.first_fields["target"] == "/a?token=REDACTED&x=1"
        assert rep.first_fields["cookie"] == {"km_ai": "qF…(27 chars)", "km_ni": "al…(19 chars)"}

    def test_app_identifiers_and_addresses_are_masked(self, tmp_path: Path) -> None:
        """App fields named like sessions, emails or cookies are masked; addresses truncated."""
        for fmt, case in APP_CASES.items():
            rep = report(tmp_path, "app", fmt, *case)
            shown = json.dumps(rep.as_dict())
            for secret in ("9f8e7d6c5b4a", "alice@example.com", "198.51.100.7"):
                assert secret not in shown, fmt


class TestSamples:
    def test_compressed_sample_is_read(self, tmp_path: Path) -> None:
        """A gzip sample (detected by content, whatever its name) is read like a plain one."""
        options, lines = CASES["common"]
        sample = tmp_path / "rotated.1"
        sample.write_bytes(gzip.compress(("\n".join(lines) + "\r\n").encode()))
        cfg = load_config(str(write_config(tmp_path, "access", "common", options)))
        (rep,) = check_sources(cfg, str(sample))
        assert (rep.parsed, rep.lines) == (3, 4)

    def test_lines_the_pipeline_would_skip_are_explained(self, tmp_path: Path) -> None:
        """Too-long lines and non-UTF-8 app entries fail as the pipeline fails them."""
        sample = tmp_path / "app.log"
        sample.write_bytes(
            b'{"ts": "2026-11-28T10:00:00Z", "x": "\xff"}\n{"ts": "2026-11-28T10:00:00Z", "p": "'
            + b"a" * 70_000
            + b'"}\n'
        )
        cfg = load_config(str(write_config(tmp_path, "app", "json", {})))
        (rep,) = check_sources(cfg, str(sample))
        reasons = [r for _, r in rep.unparsed]
        assert "not UTF-8" in reasons[0] and "longer than max_line_bytes" in reasons[1]

    def test_unreadable_sample_is_a_warning(self, tmp_path: Path) -> None:
        """A sample that cannot be read is reported, not raised."""
        cfg = load_config(str(write_config(tmp_path, "access", "common", {})))
        (rep,) = check_sources(cfg, str(tmp_path / "missing.log"))
        assert rep.lines == 0 and any("cannot read sample" in w for w in rep.warnings)


class TestCommandLine:
    def test_text_output(self, tmp_path: Path) -> None:
        """`trackd check --sample` prints the rate, the unparsed line with its reason and the
        first parsed line's fields."""
        options, lines = CASES["nginx"]
        sample = tmp_path / "sample.log"
        sample.write_text("\n".join(lines) + "\n")
        cfg = write_config(tmp_path, "access", "nginx", options)
        proc = run_trackd("check", "-c", str(cfg), "--sample", str(sample))
        assert proc.returncode == 0, proc.stderr
        assert "3/4 lines parsed (75.0%)" in proc.stdout
        assert "line 4: the line stops matching the format at $status (column" in proc.stdout
        assert "ip: 198.51.100.0/24" in proc.stdout
        assert "qFq2LweZugFNE4o49hLhmRPBW34" not in proc.stdout

    def test_json_output(self, tmp_path: Path) -> None:
        """`--json` gives the same report as data: match_rate, unparsed, first_record."""
        options, lines = APP_CASES["logfmt"]
        sample = tmp_path / "sample.log"
        sample.write_text("\n".join(lines) + "\n")
        cfg = write_config(tmp_path, "app", "logfmt", options)
        proc = run_trackd("check", "-c", str(cfg), "--sample", str(sample), "--json")
        assert proc.returncode == 0, proc.stderr
        (src,) = orjson.loads(proc.stdout)["sources"]
        assert src["match_rate"] == 0.75 and src["continuation_lines"] == 1
        assert src["unparsed"] == [
            {
                "line": 4,
                "reason": "no time field (ts or time or "
                "timestamp or @timestamp or datetime or date)",
            }
        ]
        assert src["first_record"]["event"] == "login"

    def test_a_bad_log_format_is_a_config_error_at_its_path(self, tmp_path: Path) -> None:
        """A log_format trackd cannot compile fails `check` with exit 3 at its YAML path."""
        cfg = write_config(
            tmp_path, "access", "nginx", {"log_format": '$remote_addr "$request" $status'}
        )
        proc = run_trackd("check", "-c", str(cfg))
        assert proc.returncode == 3
        assert "sources[0].log_format: the format has no time variable" in proc.stderr


class TestSinkChecks:
    def test_segment_base_url_and_limits_are_described(self, tmp_path: Path) -> None:
        """`check` says where a Segment sink posts (a base URL gets /v1/batch), its auth and
        limits, and never the write key."""
        from tests.helpers import run_trackd

        cfg = tmp_path / "t.yaml"
        cfg.write_text(
            "state_dir: st\n"
            'sink: {type: segment, url: "https://api.example.com/", write_key: "${SEGK}"}\n'
        )
        done = run_trackd("check", "-c", str(cfg), env={"SEGK": "sekret-write-key-123"})
        assert done.returncode == 0, done.stderr
        assert "trackd posts to https://api.example.com/v1/batch" in done.stdout
        assert "auth: basic, gzip: on" in done.stdout
        assert "sekret-write-key-123" not in done.stdout + done.stderr

    def test_segment_batch_over_2500_is_a_config_error(self, tmp_path: Path) -> None:
        """sink.batch.max_events above Segment's 2,500 messages per request: exit 3, naming the
        YAML path and line."""
        from tests.helpers import run_trackd

        cfg = tmp_path / "t.yaml"
        cfg.write_text(
            "state_dir: st\nsink: {type: segment, write_key: k, batch: {max_events: 3000}}\n"
        )
        done = run_trackd("check", "-c", str(cfg))
        assert done.returncode == 3
        assert f"{cfg}:2: sink.batch.max_events: 3000 is over Segment's 2500" in done.stderr
