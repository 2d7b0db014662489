"""Segment request encoding throughput on one core: `split_requests` + `SegmentEnvelope.encode`.

    .venv/bin/python bench/segment_encode.py [--messages 100000] [--repeat 5] [--sample PATH]

Messages are made demo-like: the lines of `--sample` (default /tmp/demo_sample.jsonl, as `make
demo` writes it; a built-in page message when it is missing) with fresh messageId, anonymousId,
timestamp and offset each, so gzip sees realistic entropy, not 12 lines repeated. They are cut
into requests by `split_requests` (max 2,500 messages / 500,000 bytes) and each request encoded,
gzip off and at zlib levels 1, 3 and 6; best of `--repeat`. The target is ≥ 50,000 messages/s
including compression. The process is pinned to one CPU. Prints a table and writes
bench/results/segment_encode.json.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

if "agent" not in sys.modules:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from agent.sinks import segment_wire
from agent.sinks.segment_wire import MAX_REQUEST_MESSAGES, SegmentEnvelope, sent_at, split_requests
from bench.common import write_results

_FALLBACK = (
    b'{"type":"page","messageId":"9c327094-e176-588f-9fd5-1574c0df55a3","timestamp":'
    b'"2026-11-27T08:00:00.000Z","anonymousId":"qFq2LweZugFNE4o49hLhmRPBW34","properties":'
    b'{"path":"/","search":"","url":"https://shop.example.com/","referrer":'
    b'"https://www.google.com/"},"context":{"ip":"203.0.113.0","userAgent":"Mozilla/5.0 (X11; '
    b'Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0","page":{"path":"/","search":"",'
    b'"url":"https://shop.example.com/","referrer":"https://www.google.com/"},"identity":'
    b'{"resolution":"device","contested":false},"source":{"name":"web","file":'
    b'"/var/log/nginx/access.log","offset":0}}}'
)
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_USER_AGENTS = (
    "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
)


def _vary_page(page: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """A page block (properties or context.page) at a random product path with a campaign query."""
    path = f"/products/{rng.choice(('shoes', 'bags', 'coats'))}/{rng.randrange(10**6)}"
    search = f"?utm_campaign=c{rng.randrange(500)}"
    varied = {**page, "path": path, "search": search}
    if "url" in page:
        varied["url"] = f"https://shop.example.com{path}{search}"
    return varied


def make_messages(sample: Path, n: int, rng: random.Random) -> list[bytes]:
    """`n` compact-JSON messages shaped like the sample's, with per-message ids and offsets."""
    lines = sample.read_bytes().splitlines() if sample.exists() else [_FALLBACK]
    templates: list[dict[str, Any]] = [orjson.loads(line) for line in lines if line.strip()]
    devices = ["".join(rng.choices(_ALPHABET, k=27)) for _ in range(max(1, n // 20))]
    out = []
    offset = 0
    base = 1_795_766_400  # 2026-11-27T00:00:00Z
    for i in range(n):
        message = dict(templates[i % len(templates)])
        message["messageId"] = str(uuid.UUID(int=rng.getrandbits(128), version=5))
        message["timestamp"] = sent_at(base + i * 0.01)
        if "anonymousId" in message:
            message["anonymousId"] = rng.choice(devices)
        context = dict(message.get("context", {}))
        if message.get("type") == "page":
            message["properties"] = _vary_page(message["properties"], rng)
        if "page" in context:
            context["page"] = _vary_page(context["page"], rng)
        if "userAgent" in context:
            context["userAgent"] = rng.choice(_USER_AGENTS)
        if "source" in context:
            context["source"] = {**context["source"], "offset": offset}
        message["context"] = context
        body = orjson.dumps(message)
        offset += len(body) - 80
        out.append(body)
    return out


def run(messages: list[bytes], level: int | None, repeat: int) -> dict[str, Any]:
    """Best-of-`repeat` throughput of split + encode over all `messages` at zlib `level`."""
    envelope = SegmentEnvelope(
        "0.1.0",
        None,
        gzip=level is not None,
        gzip_level=segment_wire.GZIP_LEVEL if level is None else level,
    )
    sizes = [len(m) for m in messages]
    best = float("inf")
    wire = raw = requests = 0
    for _ in range(repeat):
        wire = raw = 0
        start = time.perf_counter()
        slices = split_requests(sizes, envelope.overhead(), MAX_REQUEST_MESSAGES)
        stamp = sent_at(time.time())
        for a, b in slices:
            data, _headers = envelope.encode(messages[a:b], stamp)
            wire += len(data)
        best = min(best, time.perf_counter() - start)
        requests = len(slices)
    for a, b in split_requests(sizes, envelope.overhead(), MAX_REQUEST_MESSAGES):
        raw += len(envelope.body(messages[a:b], sent_at(0.0)))
    return {
        "gzip_level": level,
        "messages": len(messages),
        "requests": requests,
        "seconds": round(best, 4),
        "messages_per_s": round(len(messages) / best),
        "mb_per_s_uncompressed": round(raw / best / 1e6, 1),
        "ratio": round(raw / wire, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sample", type=Path, default=Path("/tmp/demo_sample.jsonl"))
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    messages = make_messages(args.sample, args.messages, random.Random(7))
    mean = sum(map(len, messages)) / len(messages)
    default_level = segment_wire.GZIP_LEVEL
    results = [run(messages, level, args.repeat) for level in (None, 1, 3, 6)]

    print(f"{len(messages):,} messages, mean {mean:.0f} bytes, best of {args.repeat}, one core")
    print(f"{'gzip':>6} {'requests':>9} {'msg/s':>10} {'MB/s raw':>9} {'ratio':>6}")
    for r in results:
        label = "off" if r["gzip_level"] is None else f"lvl {r['gzip_level']}"
        print(
            f"{label:>6} {r['requests']:>9} {r['messages_per_s']:>10,} "
            f"{r['mb_per_s_uncompressed']:>9} {r['ratio']:>6}"
        )

    write_results(
        "segment_encode",
        mean_message_bytes=round(mean),
        default_gzip_level=default_level,
        results=results,
    )


if __name__ == "__main__":
    main()
