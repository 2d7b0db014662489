"""Deterministic access-log corpora for benchmarks (nginx combined + cookie, realistic mix)."""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

NGINX_FORMAT = (
    '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
    '"$http_referer" "$http_user_agent" "$http_cookie" $request_time'
)
AGENTS = [
    "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
]
PATHS = [
    "/",
    "/pricing",
    "/blog/how-we-ship",
    "/docs/start",
    "/account",
    "/orders/{n}",
    "/static/app.{n}.js",
    "/static/site.css",
    "/api/v1/items?page={n}",
    "/search?q=shoes+{n}",
]


def _visitor(
    rng: random.Random, visitors: int, i: int, *, first_hour: int, hours: int
) -> tuple[int, str, str]:
    """Line `i`'s visitor, its address, and its time (50 lines a second, 28 Nov 2026)."""
    v = rng.randrange(visitors)
    sec = i // 50
    hour = first_hour + sec // 3600 % hours
    ts = f"28/Nov/2026:{hour:02d}:{sec // 60 % 60:02d}:{sec % 60:02d} +0000"
    return v, f"10.{v % 251}.{v // 251 % 251}.{v % 7 + 1}", ts


def access_log(path: Path, lines: int, *, visitors: int = 20_000, seed: int = 1) -> Path:
    """Write `lines` lines: 80% with km_ai (some with km_ni), 20% cookieless."""
    rng = random.Random(seed)
    with path.open("w") as fh:
        for i in range(lines):
            v, ip, ts = _visitor(rng, visitors, i, first_hour=10, hours=12)
            target = rng.choice(PATHS).format(n=rng.randrange(1000))
            r = rng.random()
            if r < 0.2:
                cookie = "-"
            elif r < 0.3:
                cookie = f"km_ai=v{v:08d}AbCdEfGh; km_ni=user{v}%40example.com; _ga=GA1.2.{v}"
            else:
                cookie = f"km_ai=v{v:08d}AbCdEfGh; _ga=GA1.2.{v}; theme=dark"
            status = 200 if rng.random() < 0.93 else rng.choice((301, 304, 404, 500))
            fh.write(
                f'{ip} - - [{ts}] "GET {target} HTTP/1.1" {status} {rng.randrange(200, 90000)} '
                f'"https://www.example.com/" "{rng.choice(AGENTS)}" "{cookie}" 0.0{rng.randrange(10, 99)}\n'
            )
    return path


def bare_loop(path: Path, rx: re.Pattern[bytes], *, cookie: bool = True) -> float:
    """Lines/s of the floor CONVENTIONS.md names: `for line in f: m = rx.match(line);
    m.groupdict()` (+ a split of the `cookie` group)."""
    start = time.perf_counter()
    n = 0
    with path.open("rb") as fh:
        for line in fh:
            m = rx.match(line)
            if m is not None:
                d = m.groupdict()
                if cookie:
                    d["cookie"].split(b"; ")
            n += 1
    return n / (time.perf_counter() - start)


#: The issue-12 yardstick's pages and assets: with GET/2xx and a few bots, ~77% page views.
ISSUE_PAGES = [
    "/",
    "/pricing",
    "/blog/how-we-ship",
    "/blog/post-{n}",
    "/docs/start",
    "/docs/page-{n}",
    "/account",
    "/orders/{n}",
    "/search?q=shoes+{n}&utm_source=news",
    "/products/{n}?ref=home",
]
ISSUE_ASSETS = ["/static/app.{n}.js", "/static/site.css", "/img/p{n}.png", "/favicon.ico"]
BOT_AGENT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


def issue_log(
    path: Path, lines: int, *, visitors: int = 20_000, seed: int = 12, login_share: float = 0.12
) -> Path:
    """The issue-12 yardstick: nginx combined + cookie, `visitors` distinct km_ai, ~77% page
    views, `login_share` of the cookied hits also carrying km_ni (a login by cookie), 15%
    cookieless, 2% bots, some POSTs and non-2xx."""
    rng = random.Random(seed)
    with path.open("w") as fh:
        for i in range(lines):
            v, ip, ts = _visitor(rng, visitors, i, first_hour=0, hours=24)
            r = rng.random()
            target = (rng.choice(ISSUE_ASSETS) if r < 0.165 else rng.choice(ISSUE_PAGES)).format(
                n=rng.randrange(1000)
            )
            method = "POST" if rng.random() < 0.03 else "GET"
            status = 200 if rng.random() < 0.96 else rng.choice((301, 304, 404, 500))
            agent = BOT_AGENT if rng.random() < 0.02 else rng.choice(AGENTS)
            c = rng.random()
            if c < 0.15:
                cookie = "-"
            elif c < 0.15 + 0.85 * login_share:
                cookie = f"km_ai=v{v:08d}AbCdEfGh; km_ni=user{v}%40example.com; _ga=GA1.2.{v}"
            else:
                cookie = f"km_ai=v{v:08d}AbCdEfGh; _ga=GA1.2.{v}; theme=dark"
            ref = "https://www.example.com/" if rng.random() < 0.6 else "-"
            fh.write(
                f'{ip} - - [{ts}] "{method} {target} HTTP/1.1" {status} '
                f'{rng.randrange(200, 90000)} "{ref}" "{agent}" "{cookie}" '
                f"0.0{rng.randrange(10, 99)}\n"
            )
    return path
