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


def access_log(path: Path, lines: int, *, visitors: int = 20_000, seed: int = 1) -> Path:
    """Write `lines` lines: 80% with km_ai (some with km_ni), 20% cookieless."""
    rng = random.Random(seed)
    with path.open("w") as fh:
        for i in range(lines):
            v = rng.randrange(visitors)
            ip = f"10.{v % 251}.{v // 251 % 251}.{v % 7 + 1}"
            sec = i // 50
            ts = (
                f"28/Nov/2026:{10 + sec // 3600 % 12:02d}:{sec // 60 % 60:02d}:{sec % 60:02d} +0000"
            )
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
