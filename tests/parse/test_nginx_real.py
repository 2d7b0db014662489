"""A real nginx writes its access logs; trackd's compiled parsers (and `trackd run --once`) read
them back: cookies, `$request_time`, X-Forwarded-For, upstream lists, escaping, time zones."""

from __future__ import annotations

import calendar
import http.client
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.parse import build_access_parser
from agent.parse.nginx import compile_nginx
from agent.parse.timefmt import ClfTime
from agent.records import AccessRecord
from tests.helpers import NGINX, NginxServer, make_config, read_messages, run_trackd

pytestmark = pytest.mark.skipif(
    NGINX is None,
    reason="nginx is not installed (CI installs it in .ci/run: apt-get install nginx)",
)

MAIN = """log_format trackd '$remote_addr - $remote_user [$time_local] "$request" $status '
                  '$body_bytes_sent "$http_referer" "$http_user_agent" "$http_cookie" '
                  '$request_time "$http_x_forwarded_for" $host $cookie_km_ai $msec '
                  '$upstream_addr $upstream_status $upstream_response_time "$uri$is_args$args"';"""
JSON = """log_format trackd_json escape=json '{"t":"$time_iso8601","ip":"$remote_addr",'
    '"req":"$request","st":$status,"ua":"$http_user_agent","ck":"$http_cookie",'
    '"rt":$request_time,"xff":"$http_x_forwarded_for","km":"$cookie_km_ai",'
    '"up":"$upstream_status"}';"""
SERVERS = """
  server {
    listen 127.0.0.1:{port};
    server_name shop.example.com;
    access_log {prefix}/access.log trackd;
    access_log {prefix}/access.json trackd_json;
    location / { return 200 "ok\\n"; }
    location /missing { return 404; }
    location /app/ {
      proxy_pass http://127.0.0.1:{port}/backend/;
      proxy_set_header Host backend.local;
    }
  }
  server {
    listen 127.0.0.1:{port};
    server_name backend.local;
    location / { return 200 "backend\\n"; }
  }
"""
COOKIE = "km_ai=qFq2LweZugFNE4o49hLhmRPBW34; km_ni=alice%40example.com; theme=dark"
# A user agent with a double quote and UTF-8 bytes: nginx escapes both (\x22, \xD0\xB0).
AGENT = 'Mozilla/5.0 (X11; Linux x86_64) "quoted" \u0430'
XFF = "198.51.100.7, 10.0.0.2"
#: (method, target, extra headers) sent in this order.
REQUESTS: list[tuple[str, str, dict[str, str]]] = [
    ("GET", "/pricing?plan=pro&utm_source=x", {"Cookie": COOKIE, "X-Forwarded-For": XFF}),
    ("GET", "/static/app.js", {"Cookie": COOKIE}),
    ("HEAD", "/", {}),
    ("POST", "/signup", {"Cookie": COOKIE}),
    ("GET", "/missing", {}),
    ("GET", "/app/x?id=7", {"Cookie": COOKIE}),
    ("GET", "/d%20e", {}),
]


def send(port: int, method: str, target: str, headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", "shop.example.com")
        conn.putheader("User-Agent", AGENT.encode())  # raw UTF-8 bytes on the wire
        conn.putheader("Referer", "https://www.google.com/search?q=a+b")
        for name, value in headers.items():
            conn.putheader(name, value)
        body = b"email=a%40b.c" if method == "POST" else None
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


@pytest.fixture(scope="module", params=["Asia/Kolkata", "America/New_York"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, float, float]]:
    """nginx (in a +0530 or -0500 zone) served REQUESTS; its logs are complete. Yields the prefix
    and the wall-clock window in which the requests were made."""
    prefix = tmp_path_factory.mktemp("nginx")
    server = NginxServer(prefix, f"{MAIN}\n{JSON}\n{SERVERS}", tz=request.param)
    server.start()
    try:
        before = time.time()
        statuses = [send(server.port, *r) for r in REQUESTS]
        after = time.time()
    finally:
        server.stop()
    assert statuses == [200, 200, 200, 200, 404, 200, 200], server.stderr.decode()
    yield prefix, before, after


def records(path: Path, parser: Any) -> list[AccessRecord]:
    lines = path.read_text().splitlines()
    assert len(lines) == len(REQUESTS)
    recs = [parser(line) for line in lines]
    assert None not in recs, [parser.explain(line) for line in lines]
    return recs


class TestMainFormat:
    def test_every_line_parses_to_the_request_sent(self, served: tuple[Path, float, float]) -> None:
        """Each logged line parses, with the method, target and status of its request."""
        recs = records(served[0] / "access.log", compile_nginx(MAIN))
        assert [(r.method, r.target) for r in recs] == [(m, t) for m, t, _ in REQUESTS]
        assert [r.status for r in recs] == [200, 200, 200, 200, 404, 200, 200]
        assert all(r.ip == "127.0.0.1" and r.host == "shop.example.com" for r in recs)

    def test_cookies_forwarded_for_and_escaped_agent(
        self, served: tuple[Path, float, float]
    ) -> None:
        """The Cookie header, $cookie_km_ai, X-Forwarded-For and an agent nginx escaped as
        \\x22/\\xD0\\xB0 come back as sent."""
        rec = records(served[0] / "access.log", compile_nginx(MAIN))[0]
        assert rec.cookie_header == COOKIE
        assert rec.cookies == {"km_ai": "qFq2LweZugFNE4o49hLhmRPBW34"}
        assert rec.forwarded_for == XFF
        assert rec.user_agent == AGENT
        assert rec.referrer == "https://www.google.com/search?q=a+b"
        assert rec.bytes == 3

    def test_times_are_utc_whatever_the_server_zone(
        self, served: tuple[Path, float, float]
    ) -> None:
        """$msec (chosen: ms precision) lies in the request window, and $time_local in the
        server's zone (+0530 or -0500) gives the same second in UTC."""
        _prefix, before, after = served
        clf = ClfTime()
        for rec in records(served[0] / "access.log", compile_nginx(MAIN)):
            assert rec.precision == 0.001
            assert before - 1 <= rec.ts <= after + 1
            assert rec.extra is not None
            assert clf(rec.extra["time_local"]) == float(int(rec.ts))

    def test_request_time_and_upstream_lists(self, served: tuple[Path, float, float]) -> None:
        """$request_time is seconds; a proxied request logs its upstream address, status and
        time; others log `-`."""
        recs = records(served[0] / "access.log", compile_nginx(MAIN))
        assert all(r.request_time is not None and 0 <= r.request_time < 10 for r in recs)
        proxied = recs[5].extra
        assert proxied is not None
        assert proxied["upstream_status"] == "200"
        assert proxied["upstream_addr"].startswith("127.0.0.1:")
        assert float(proxied["upstream_response_time"]) >= 0
        assert recs[0].extra is not None and recs[0].extra["upstream_status"] == "-"


class TestJsonEscaping:
    def test_escape_json_format_round_trips(self, served: tuple[Path, float, float]) -> None:
        """The same requests logged with escape=json parse to the same fields."""
        recs = records(served[0] / "access.json", compile_nginx(JSON))
        assert [r.target for r in recs] == [t for _, t, _ in REQUESTS]
        assert recs[0].user_agent == AGENT
        assert recs[0].cookies == {"km_ai": "qFq2LweZugFNE4o49hLhmRPBW34"}
        assert recs[0].forwarded_for == XFF
        assert recs[0].request_time is not None

    def test_json_access_format_reads_the_same_file(
        self, served: tuple[Path, float, float]
    ) -> None:
        """The `json` access format with a fields: mapping reads nginx's JSON lines too, and its
        times match the regex-compiled parser's."""
        parser = build_access_parser(
            "json",
            fields={
                "time": "t",
                "ip": "ip",
                "request": "req",
                "status": "st",
                "user_agent": "ua",
                "cookie": "ck",
                "request_time": "rt",
                "forwarded_for": "xff",
                "cookie.km_ai": "km",
            },
        )
        recs = records(served[0] / "access.json", parser)
        compiled = records(served[0] / "access.json", compile_nginx(JSON))
        assert [(r.ts, r.target, r.status) for r in recs] == [
            (c.ts, c.target, c.status) for c in compiled
        ]
        assert recs[0].user_agent == AGENT and recs[0].cookie_header == COOKIE


def test_run_once_turns_the_log_into_page_views(
    served: tuple[Path, float, float], tmp_path: Path
) -> None:
    """`trackd run --once` on nginx's log: GET 2xx pages only (no asset, HEAD, POST or 404),
    the km_ni person named, the client address taken from X-Forwarded-For through the trusted proxies."""
    source = {
        "name": "web",
        "kind": "access",
        "paths": [str(served[0] / "access.log")],
        "format": "nginx",
        "log_format": MAIN,
    }
    cfg = make_config(
        tmp_path, sources=[source], identity={"trusted_proxies": ["127.0.0.0/8", "10.0.0.0/8"]}
    )
    proc = run_trackd("run", "--once", "-c", str(cfg))
    assert proc.returncode == 0, proc.stderr
    pages = [m for m in read_messages(tmp_path / "out.jsonl") if m["type"] == "page"]
    assert [p["properties"]["path"] for p in pages] == ["/pricing", "/app/x", "/d%20e"]
    first = pages[0]
    assert first["userId"] == "alice@example.com"
    assert first["anonymousId"] == "qFq2LweZugFNE4o49hLhmRPBW34"
    assert first["context"]["ip"] == "198.51.100.0"
    assert first["properties"]["url"] == "https://shop.example.com/pricing?plan=pro&utm_source=x"
    stamp = calendar.timegm(time.strptime(first["timestamp"][:19], "%Y-%m-%dT%H:%M:%S"))
    assert served[1] - 1 <= stamp <= served[2] + 1
