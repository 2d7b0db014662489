"""Deterministic log corpora in every format trackd parses, for `bench/parse.py`.

One stream of realistic hits (`hits()`) is rendered as each access format writes it, so the formats
are compared on the same traffic; app formats get a stream of login/page/error entries, some
followed by a traceback (continuation lines).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from gen import AGENTS, PATHS

_MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
_TZ = timezone(timedelta(hours=-5))


@dataclass(frozen=True, slots=True)
class Hit:
    ip: str
    when: datetime
    method: str
    target: str
    status: int
    size: int
    referrer: str
    agent: str
    cookie: str
    km_ai: str
    host: str
    request_time: float
    forwarded_for: str


def hits(n: int, *, seed: int = 1, visitors: int = 20_000) -> Iterator[Hit]:
    """`n` hits: 50 a second, 80% with km_ai (some with km_ni), 20% cookieless."""
    rng = random.Random(seed)
    start = datetime(2026, 11, 28, 10, 0, 0, tzinfo=_TZ)
    for i in range(n):
        v = rng.randrange(visitors)
        r = rng.random()
        km_ai = f"v{v:08d}AbCdEfGh" if r >= 0.2 else ""
        if r < 0.2:
            cookie = ""
        elif r < 0.3:
            cookie = f"km_ai={km_ai}; km_ni=user{v}%40example.com; _ga=GA1.2.{v}"
        else:
            cookie = f"km_ai={km_ai}; _ga=GA1.2.{v}; theme=dark"
        yield Hit(
            ip=f"10.{v % 251}.{v // 251 % 251}.{v % 7 + 1}",
            when=start + timedelta(seconds=i // 50),
            method="GET" if rng.random() < 0.9 else "POST",
            target=rng.choice(PATHS).format(n=rng.randrange(1000)),
            status=200 if rng.random() < 0.93 else rng.choice((301, 304, 404, 500)),
            size=rng.randrange(200, 90000),
            referrer="https://www.example.com/" if rng.random() < 0.7 else "",
            agent=rng.choice(AGENTS),
            cookie=cookie,
            km_ai=km_ai,
            host="www.example.com",
            request_time=rng.randrange(1, 900) / 1000,
            forwarded_for=f"198.51.100.{v % 250}" if rng.random() < 0.5 else "",
        )


def clf_time(dt: datetime) -> str:
    off = int(dt.utcoffset().total_seconds() // 60)  # type: ignore[union-attr]
    sign = "+" if off >= 0 else "-"
    off = abs(off)
    return (
        f"{dt.day:02d}/{_MONTHS[dt.month - 1]}/{dt.year}:{dt:%H:%M:%S} "
        f"{sign}{off // 60:02d}{off % 60:02d}"
    )


def d(value: str) -> str:
    """A value as nginx and Apache log an empty one."""
    return value or "-"


def render(fmt: str, h: Hit) -> str:
    """One hit as the line the named layout writes."""
    request = f"{h.method} {h.target} HTTP/1.1"
    head = f'{h.ip} - - [{clf_time(h.when)}] "{request}" {h.status} {h.size}'
    combined = f'{head} "{d(h.referrer)}" "{h.agent}"'
    if fmt == "common":
        return head
    if fmt == "combined":
        return combined
    if fmt in ("combined_cookie", "regex"):
        return f'{combined} "{d(h.cookie)}"'
    if fmt == "nginx_main":
        return f'{combined} "{d(h.cookie)}" {h.request_time:.3f}'
    if fmt == "nginx_rich":
        upstream = f"{h.request_time * 0.9:.3f}"
        return (
            f'{combined} "{d(h.forwarded_for)}" {h.host} {h.request_time:.3f} {upstream} '
            f"10.0.0.5:8080 {d(h.km_ai)} {h.when.isoformat()}"
        )
    if fmt == "nginx_json":
        doc = {
            "time": h.when.isoformat(),
            "remote_addr": h.ip,
            "request": request,
            "status": str(h.status),
            "body_bytes_sent": str(h.size),
            "http_referer": h.referrer,
            "http_user_agent": h.agent,
            "http_cookie": h.cookie,
            "request_time": f"{h.request_time:.3f}",
        }
        return json.dumps(doc, separators=(",", ":"))
    if fmt == "apache_vhost":
        micros = int(h.request_time * 1_000_000)
        return (
            f'{h.host}:443 {head[: head.rfind(" ")]} {h.size + 310} "{d(h.referrer)}" '
            f'"{h.agent}" {micros} "{d(h.km_ai)}"'
        )
    if fmt == "json":
        doc2 = {
            "ts": h.when.astimezone(UTC).timestamp(),
            "request": {
                "remote_ip": h.ip,
                "method": h.method,
                "uri": h.target,
                "proto": "HTTP/1.1",
                "host": h.host,
                "headers": {"User-Agent": [h.agent], "Cookie": [h.cookie] if h.cookie else []},
            },
            "status": h.status,
            "size": h.size,
            "duration": h.request_time,
        }
        return json.dumps(doc2, separators=(",", ":"))
    raise ValueError(fmt)


def app_lines(n: int, fmt: str, *, seed: int = 2) -> Iterator[str]:
    """`n` app log lines; about 2% are errors followed by a three-line traceback."""
    rng = random.Random(seed)
    start = datetime(2026, 11, 28, 10, 0, 0, tzinfo=UTC)
    emitted = 0
    i = 0
    while emitted < n:
        when = start + timedelta(milliseconds=i * 37)
        i += 1
        v = rng.randrange(20_000)
        event = rng.choice(("login", "page", "page", "page", "logout", "error"))
        stamp = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        fields = {"event": event, "user_id": str(v), "email": f"user{v}@example.com"}
        if fmt == "json":
            yield json.dumps({"ts": stamp, "level": "info", **fields, "session_id": f"s{v:x}"})
        elif fmt == "logfmt":
            yield (
                f"ts={stamp} level=info event={event} user_id={v} email=user{v}@example.com "
                f'msg="handled {event}" session_id=s{v:x}'
            )
        else:
            yield f"{stamp} INFO [{event}] user_id={v} email=user{v}@example.com"
        emitted += 1
        if event == "error":
            for line in (
                "Traceback (most recent call last):",
                '  File "app.py", line 42, in handler',
                "ValueError: boom",
            ):
                if emitted < n:
                    yield line
                    emitted += 1
