"""Parse throughput per format, on one core, next to a bare regex loop over the same file.

    .venv/bin/python bench/parse.py [--lines 100000] [--repeat 5] [--only NAME ...]

For each format a corpus is written (the same traffic rendered as each server writes it, see
`corpora.py`), then timed two ways, best of `--repeat`:
- trackd: `for line in f: parser(line.decode())` with the parser `trackd run` builds for that
  source config (the per-line work of the pipeline's parse stage, nothing else);
- bare:   `for line in f: m = rx.match(line); m.groupdict()` (+ a cookie split where the layout
  has a Cookie field) with a hand-written regex for the layout — the floor CONVENTIONS.md names;
  for JSON layouts also a bare `orjson.loads(line)` loop.
`matched` is the share of lines that gave a record (or, in app logs, a continuation).
The process is pinned to one CPU. Prints a table and writes bench/results/parse.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
if "agent" not in sys.modules:  # a caller may have imported another tree's `agent` to compare
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from corpora import app_lines, hits, render
from gen import NGINX_FORMAT, bare_loop

from agent.parse import build_parser

_HEAD = (
    rb'(?P<ip>\S+) \S+ (?P<user>\S+) \[(?P<time>[^\]]+)\] "(?P<req>[^"]*)" (?P<status>\d+) '
    rb"(?P<bytes>\S+)"
)
_COMBINED = _HEAD + rb' "(?P<ref>[^"]*)" "(?P<ua>[^"]*)"'
_COOKIE = _COMBINED + rb' "(?P<cookie>[^"]*)"'
_NGINX_RICH = (
    '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
    '"$http_referer" "$http_user_agent" "$http_x_forwarded_for" $host $request_time '
    "$upstream_response_time $upstream_addr $cookie_km_ai $time_iso8601"
)
_NGINX_JSON = (
    'log_format js escape=json \'{"time":"$time_iso8601","remote_addr":"$remote_addr",'
    '"request":"$request","status":"$status","body_bytes_sent":"$body_bytes_sent",'
    '"http_referer":"$http_referer","http_user_agent":"$http_user_agent",'
    '"http_cookie":"$http_cookie","request_time":"$request_time"}\';'
)
_APACHE_VHOST = '%v:%p %h %l %u %t "%r" %>s %O "%{Referer}i" "%{User-Agent}i" %D "%{km_ai}C"'
_REGEX = (
    r'^(?P<ip>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] "(?P<method>\S+) (?P<target>\S+) '
    r'(?P<protocol>[^"]*)" (?P<status>\d{3}) (?P<bytes>\d+|-) "(?P<referrer>[^"]*)" '
    r'"(?P<user_agent>[^"]*)" "(?P<cookie>[^"]*)"$'
)


@dataclass(frozen=True)
class Case:
    """A source config (the fields `build_parser` reads) and how to make and bare-parse its file."""

    name: str
    kind: str
    format: str
    lines: Callable[[int], Iterable[str]]
    bare: bytes
    cookie_group: bool = False
    is_json: bool = False
    log_format: str | None = None
    regex: str | None = None
    fields: dict[str, str] | None = None
    time_field: str | None = None
    time_format: str | None = None
    timezone: str = "UTC"


def _access(layout: str) -> Callable[[int], Iterable[str]]:
    return lambda n: (render(layout, h) for h in hits(n))


def _app(fmt: str) -> Callable[[int], Iterable[str]]:
    return lambda n: app_lines(n, fmt)


CASES = [
    Case("common", "access", "common", _access("common"), _HEAD),
    Case("combined", "access", "combined", _access("combined"), _COMBINED),
    Case(
        "combined_cookie",
        "access",
        "combined_cookie",
        _access("combined_cookie"),
        _COOKIE,
        cookie_group=True,
    ),
    Case(
        "nginx (combined+cookie+$request_time)",
        "access",
        "nginx",
        _access("nginx_main"),
        _COOKIE + rb" (?P<rt>\S+)",
        cookie_group=True,
        log_format=NGINX_FORMAT,
    ),
    Case(
        "nginx (14 vars, upstream, $cookie_)",
        "access",
        "nginx",
        _access("nginx_rich"),
        _COMBINED + rb' "(?P<xff>[^"]*)" (?P<host>\S+) (?P<rt>\S+) (?P<urt>\S+) (?P<ua2>\S+) '
        rb"(?P<km>\S+) (?P<iso>\S+)",
        log_format=_NGINX_RICH,
    ),
    Case(
        "nginx escape=json",
        "access",
        "nginx",
        _access("nginx_json"),
        rb'\{"time":"(?P<time>[^"]*)","remote_addr":"(?P<ip>[^"]*)","request":"(?P<req>[^"]*)",'
        rb'"status":"(?P<status>[^"]*)","body_bytes_sent":"(?P<bytes>[^"]*)",'
        rb'"http_referer":"(?P<ref>[^"]*)","http_user_agent":"(?P<ua>[^"]*)",'
        rb'"http_cookie":"(?P<cookie>[^"]*)","request_time":"(?P<rt>[^"]*)"\}',
        cookie_group=True,
        log_format=_NGINX_JSON,
    ),
    Case(
        "apache (combined+cookie)",
        "access",
        "apache",
        _access("combined_cookie"),
        _COOKIE,
        cookie_group=True,
        log_format='%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-Agent}i" "%{Cookie}i"',
    ),
    Case(
        "apache (vhost, %O, %D, %{km_ai}C)",
        "access",
        "apache",
        _access("apache_vhost"),
        rb"(?P<vhost>[^:]+):(?P<port>\d+) " + _HEAD + rb' "(?P<ref>[^"]*)" '
        rb'"(?P<ua>[^"]*)" (?P<us>\d+) "(?P<km>[^"]*)"',
        log_format=_APACHE_VHOST,
    ),
    Case(
        "json (Caddy-like, fields:)",
        "access",
        "json",
        _access("json"),
        rb'\{"ts":(?P<ts>[^,]*),"request":\{"remote_ip":"(?P<ip>[^"]*)","method":"(?P<m>[^"]*)",'
        rb'"uri":"(?P<uri>[^"]*)"',
        is_json=True,
        fields={
            "ip": "request.remote_ip",
            "method": "request.method",
            "target": "request.uri",
            "protocol": "request.proto",
            "host": "request.host",
            "user_agent": "request.headers.User-Agent",
            "cookie": "request.headers.Cookie",
            "status": "status",
            "bytes": "size",
            "request_time": "duration",
        },
        time_field="ts",
        time_format="unix",
    ),
    Case("regex", "access", "regex", _access("regex"), _COOKIE, cookie_group=True, regex=_REGEX),
    Case(
        "app json",
        "app",
        "json",
        _app("json"),
        rb'\{"ts": "(?P<ts>[^"]*)", "level": "(?P<level>[^"]*)", "event": "(?P<event>[^"]*)"',
        is_json=True,
        time_field="ts",
    ),
    Case(
        "app logfmt",
        "app",
        "logfmt",
        _app("logfmt"),
        rb"ts=(?P<ts>\S+) level=(?P<level>\S+) event=(?P<event>\S+) user_id=(?P<uid>\S+) "
        rb'email=(?P<email>\S+) msg="(?P<msg>[^"]*)" session_id=(?P<sid>\S+)',
        time_field="ts",
    ),
    Case(
        "app regex",
        "app",
        "regex",
        _app("regex"),
        rb"(?P<ts>\S+) (?P<level>[A-Z]+) \[(?P<event>\w+)\] user_id=(?P<uid>\d+) "
        rb"email=(?P<email>\S+)",
        regex=r"^(?P<ts>\S+) (?P<level>[A-Z]+) \[(?P<event>\w+)\] user_id=(?P<user_id>\d+) "
        r"email=(?P<email>\S+)$",
        time_field="ts",
    ),
]


def time_trackd(case: Case, path: Path) -> tuple[float, int]:
    """Lines/s through trackd's parser, and how many lines gave a record."""
    parser = build_parser(case)
    ok = 0
    start = time.perf_counter()
    n = 0
    with path.open("rb") as fh:
        for raw in fh:
            rec = parser(raw.rstrip(b"\n").decode("utf-8", "replace"))
            n += 1
            if rec is not None:
                ok += 1
    return n / (time.perf_counter() - start), ok


def time_orjson(path: Path) -> float:
    start = time.perf_counter()
    n = 0
    with path.open("rb") as fh:
        for line in fh:
            if line.startswith(b"{"):
                orjson.loads(line)
            n += 1
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument(
        "--only", nargs="*", default=None, help="cases named so, or with these words in the name"
    )
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    cases = [
        c
        for c in CASES
        if not args.only or any(w == c.name or w in c.name.split() for w in args.only)
    ]
    results = []
    header = (
        f"{'format':<38}{'matched':>8}{'trackd l/s':>12}{'bare rx l/s':>13}{'ratio':>7}"
        f"{'orjson l/s':>12}"
    )
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            path = Path(tmp) / "corpus.log"
            with path.open("w") as fh:
                fh.writelines(line + "\n" for line in case.lines(args.lines))
            runs = [time_trackd(case, path) for _ in range(args.repeat)]
            trackd = max(r[0] for r in runs)
            bare = max(
                bare_loop(path, re.compile(case.bare), cookie=case.cookie_group)
                for _ in range(args.repeat)
            )
            oj = max(time_orjson(path) for _ in range(args.repeat)) if case.is_json else None
            parsed = runs[0][1] / args.lines
            print(
                f"{case.name:<38}{parsed:>8.0%}{trackd:>12,.0f}{bare:>13,.0f}{trackd / bare:>7.2f}"
                + (f"{oj:>12,.0f}" if oj else "")
            )
            results.append(
                {
                    "format": case.name,
                    "trackd_lines_per_s": round(trackd),
                    "bare_regex_lines_per_s": round(bare),
                    "ratio": round(trackd / bare, 3),
                    "bare_orjson_lines_per_s": round(oj) if oj else None,
                    "records": runs[0][1],
                }
            )
    out = Path(__file__).resolve().parent / "results" / "parse.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "lines": args.lines,
                "repeat": args.repeat,
                "results": results,
                "python": platform.python_version(),
                "cpus_used": 1,
            },
            indent=2,
        )
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
