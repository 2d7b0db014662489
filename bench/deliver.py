"""Delivery throughput of an HTTP sink through the real `Sender`, into a real nginx answering 204.

    .venv/bin/python bench/deliver.py [--sink segment] [--messages 200000]
                                      [--max-events 500 2500] [--concurrency 8]

For each `--max-events`: a fresh state database in a temp dir (`open_state`), `--messages`
demo-like messages (`segment_encode.make_messages`) enqueued with `outbox.enqueue` in one
`transaction` (stamped first when the sink has a stamper), then `Sender(...).run(finish, 600)`
with `finish` already set — the drain path of `run --once` — and `on_db` on a single-thread
executor holding the sender's own connection, as agent/runtime.py does. Measured around `run`
only: wall seconds, delivered messages/s, and CPU seconds of this process (all threads: event
loop, sender DB thread, httpx). nginx (`bench/receiver.py`) runs in its own processes and is
not counted. Checks that everything was delivered and the outbox is empty. Prints a table and
writes bench/results/deliver.json (one file for every sink; rows are keyed by sink).

Adding a sink is one function in `SINKS`: it gets the receiver's URL and a `Case` and returns
the `HttpSink` (and its `Stamper`, if it has one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(_BENCH))
sys.path.insert(0, str(_BENCH.parent))

from pydantic import SecretStr  # noqa: E402
from receiver import NGINX, NginxReceiver  # noqa: E402 - bench/ on sys.path first
from segment_encode import make_messages  # noqa: E402

from agent.config.schema import (  # noqa: E402
    BatchConfig,
    KissmetricsSinkConfig,
    RetryConfig,
    SegmentSinkConfig,
)
from agent.sinks.base import HttpSink, Stamper  # noqa: E402
from agent.sinks.kissmetrics import KissmetricsSink, SecondAllocator  # noqa: E402
from agent.sinks.km_wire import KmEncoder  # noqa: E402
from agent.sinks.segment import SegmentSink  # noqa: E402
from agent.sinks.sender import Sender  # noqa: E402
from agent.state import outbox  # noqa: E402
from agent.state.db import StatePaths, connect, open_state, transaction  # noqa: E402
from bench.common import RESULTS, write_results  # noqa: E402


@dataclass(frozen=True)
class Case:
    """One benchmark run's settings."""

    messages: int
    max_events: int
    concurrency: int
    gzip: bool = True

    @property
    def batch(self) -> BatchConfig:
        return BatchConfig(max_events=self.max_events, max_wait=0.05)

    @property
    def retry(self) -> RetryConfig:
        return RetryConfig(initial_backoff=0.05, max_backoff=1.0)

    def fields(self, url: str) -> dict[str, Any]:
        """The sink settings every sink of the bench takes from the case (and the URL)."""
        return {
            "url": url,
            "batch": self.batch,
            "retry": self.retry,
            "concurrency": self.concurrency,
        }


#: What a sink function returns: the sink, and the stamper that writes its field into outbox rows.
Built = tuple[HttpSink, Stamper | None]


# --- sinks: one function each ---------------------------------------------------------------------


def segment_sink(url: str, case: Case) -> Built:
    """Segment, `/v1/batch` appended to nginx's base URL, basic auth, gzip per `case`."""
    cfg = SegmentSinkConfig(
        type="segment", write_key=SecretStr("bench-write-key"), gzip=case.gzip, **case.fields(url)
    )
    return SegmentSink(cfg), None


def kissmetrics_sink(url: str, case: Case) -> Built:
    """Kissmetrics: one request per message (GET, or POST past 2,000 bytes), `_t` stamped into
    the outbox rows as the pipeline does."""
    cfg = KissmetricsSinkConfig(
        type="kissmetrics", api_key=SecretStr("bench-api-key"), **case.fields(url)
    )
    return KissmetricsSink(cfg), SecondAllocator(KmEncoder("bench-api-key"))


SINKS: dict[str, Callable[[str, Case], Built]] = {
    "segment": segment_sink,
    "kissmetrics": kissmetrics_sink,
}


# --- the run ------------------------------------------------------------------------------------


def _enqueue(state_dir: str, bodies: list[bytes], stamper: Stamper | None) -> None:
    conn = open_state(state_dir)
    try:
        if stamper is not None:
            stamper.load(conn)
        chunk = 10_000
        for start in range(0, len(bodies), chunk):
            part = bodies[start : start + chunk]
            stamps = stamper.stamp(part) if stamper is not None else None
            with transaction(conn):
                outbox.enqueue(conn, part, stamps, time.time())
                if stamper is not None:
                    stamper.save(conn)
            if stamper is not None:
                stamper.committed()
    finally:
        conn.close()


async def _deliver(sink: HttpSink, db: str, case: Case) -> dict[str, Any]:
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-sender")
    loop = asyncio.get_running_loop()

    async def on_db(fn: Callable[..., Any], *args: Any) -> Any:
        return await loop.run_in_executor(pool, fn, *args)

    conn = await on_db(connect, db)
    try:
        sender = Sender(
            sink,
            conn,
            on_db,
            batch=case.batch,
            retry=case.retry,
            concurrency=case.concurrency,
        )
        finish = asyncio.Event()
        finish.set()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        left = await sender.run(finish, 600)
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        depth = await sender.depth()
    finally:
        await sink.aclose()
        await on_db(conn.close)
        pool.shutdown(wait=True)
    stats = sender.stats
    if left or depth.messages or stats.sent != case.messages:
        raise SystemExit(
            f"not everything was delivered: sent {stats.sent} of {case.messages}, "
            f"{depth.messages} left in the outbox, failures {dict(stats.failures)}, "
            f"dead letters {dict(stats.dead_by_reason)}"
        )
    return {
        "requests": stats.requests,
        "seconds": round(wall, 3),
        "messages_per_s": round(case.messages / wall),
        "cpu_seconds": round(cpu, 3),
        "cpu_us_per_message": round(cpu / case.messages * 1e6, 2),
        "failures": dict(stats.failures),
    }


def run_case(sink_name: str, url: str, case: Case, bodies: list[bytes]) -> dict[str, Any]:
    sink, stamper = SINKS[sink_name](url, case)
    with tempfile.TemporaryDirectory(prefix="trackd-bench-deliver-") as state_dir:
        _enqueue(state_dir, bodies, stamper)
        result = asyncio.run(_deliver(sink, StatePaths(state_dir).db, case))
    return {
        "sink": sink_name,
        "messages": case.messages,
        "max_events": case.max_events,
        "concurrency": case.concurrency,
        "gzip": case.gzip,
        **result,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sink", choices=sorted(SINKS), default="segment")
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--max-events", type=int, nargs="+", default=[500, 2500])
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--no-gzip", action="store_true")
    ap.add_argument(
        "--skip-without-nginx",
        action="store_true",
        help="without nginx installed, say so and exit 0 (make bench on a bare machine)",
    )
    args = ap.parse_args()
    if args.skip_without_nginx and NGINX is None:
        print(f"{args.sink}: delivery not measured: nginx is not installed (apt-get install nginx)")
        stale = RESULTS / "deliver.json"
        if stale.exists():  # an older figure must not pass for this run's (bench/summary.py)
            data = json.loads(stale.read_text())
            data.get("sinks", {}).pop(args.sink, None)
            stale.write_text(json.dumps(data, indent=2))
        return

    bodies = make_messages(Path("/tmp/demo_sample.jsonl"), args.messages, random.Random(11))
    mean = sum(map(len, bodies)) / len(bodies)
    rows = []
    with NginxReceiver() as rx:
        for max_events in args.max_events:
            case = Case(args.messages, max_events, args.concurrency, gzip=not args.no_gzip)
            rows.append(run_case(args.sink, rx.url, case, bodies))

    print(
        f"{args.sink}: {args.messages:,} messages, mean {mean:.0f} bytes, nginx 204, "
        f"gzip {'off' if args.no_gzip else 'on'}, concurrency {args.concurrency}"
    )
    print(
        f"{'max_events':>10} {'requests':>9} {'seconds':>8} {'msg/s':>9} {'CPU s':>7} "
        f"{'CPU µs/msg':>10}"
    )
    for r in rows:
        print(
            f"{r['max_events']:>10} {r['requests']:>9} {r['seconds']:>8} "
            f"{r['messages_per_s']:>9,} {r['cpu_seconds']:>7} {r['cpu_us_per_message']:>10}"
        )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    previous_file = RESULTS / "deliver.json"
    previous: dict[str, Any] = (
        json.loads(previous_file.read_text()) if previous_file.exists() else {}
    )
    by_sink: dict[str, Any] = previous.get("sinks", {})
    by_sink[args.sink] = {
        "mean_message_bytes": round(mean),
        "peak_rss_mb": round(peak_mb),
        "results": rows,
    }
    write_results("deliver", receiver="nginx 204", sinks=by_sink)


if __name__ == "__main__":
    main()
