"""Delivery scenarios (SCENARIOS 19-23, 43-45; SPEC §4 "All HTTP sinks", §5.2, §5.4, §7) against
the REAL sinks: the `SegmentSink` / `KissmetricsSink` that `build_sink` makes from the config,
talking to the real loopback `Receiver` (tests/receiver.py).

The daemon runs in process (`Daemon(config, rt=Runtime(config)).run(signals=False)`, the default
sink factory); the secrets test runs `trackd run` as a subprocess, since what it checks is the
product's own logging setup. Time is real and kept short: backoff 10 to 200 ms, linger 50 ms.
Every access line carries a sequence number (`/p/<seq>`), so exactly-once is checked by
messageId at the receiver (Segment: each request's `batch`; Kissmetrics: `/e` requests by their
`Viewed URL`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from agent.state import outbox
from agent.state.db import StatePaths, connect
from agent.supervisor import Daemon
from tests.harness import real_daemon
from tests.helpers import (
    free_port,
    http_get,
    make_config,
    metric,
    run_trackd,
    wait_until,
    write_access_log,
)
from tests.receiver import Receiver, Request, Response
from tests.sources.tailing import Agent

WRITE_KEY = "wk-DELIVERY-s3cr3t-7f3a9c"
API_KEY = "km-DELIVERY-s3cr3t-51d2e8"
KEY_ENV = {"TRACKD_TEST_WRITE_KEY": WRITE_KEY, "TRACKD_TEST_API_KEY": API_KEY}
_SEQ = re.compile(r"/p/(\d+)")
FIVE_XX = 'trackd_send_failures_total{reason="http_5xx",sink="segment"}'


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sink secrets come from `${ENV}` (SPEC §4); subprocesses inherit them."""
    for name, value in KEY_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def rx() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


# -- configs ---------------------------------------------------------------------------------


def sink_settings(kind: str, url: str, **over: Any) -> dict[str, Any]:
    """A segment or kissmetrics sink at `url` with short timeouts; `over` replaces keys."""
    sink: dict[str, Any] = {
        "batch": {"max_events": 10, "max_wait": "50ms"},
        "retry": {"initial_backoff": "10ms", "max_backoff": "200ms"},
        "concurrency": 2,
        "timeout": "5s",
    }
    if kind == "segment":
        sink |= {
            "type": "segment",
            "url": url + "/v1/batch",
            "write_key": "${TRACKD_TEST_WRITE_KEY}",
        }
    else:
        sink |= {"type": "kissmetrics", "url": url, "api_key": "${TRACKD_TEST_API_KEY}"}
    sink.update(over)
    return sink


def config(
    tmp_path: Path,
    log: Path,
    url: str,
    kind: str = "segment",
    *,
    metrics_port: int | None = None,
    unhealthy_after: str = "5m",
    **over: Any,
) -> Path:
    extra: dict[str, Any] = {"sink": sink_settings(kind, url, **over), "shutdown_timeout": "2s"}
    if metrics_port is not None:
        extra["metrics"] = {
            "listen": f"127.0.0.1:{metrics_port}",
            "unhealthy_after": unhealthy_after,
        }
    return make_config(tmp_path, paths=[str(log)], extra=extra)


# -- the daemon in process -------------------------------------------------------------------


@contextlib.asynccontextmanager
async def daemon(cfg_path: Path) -> AsyncIterator[Daemon]:
    """The real daemon (real sink from the config) as a task, yielded once it is up; on exit
    `request_stop()` (SIGTERM's drain) and its exit code must be 0."""
    async with real_daemon(cfg_path) as d:
        yield d


async def until(pred: Callable[[], bool], what: str, within: float = 20) -> None:
    """`wait_until` off the event loop (the daemon runs on it)."""
    await asyncio.to_thread(wait_until, pred, within, what, 0.02)


def depth(tmp_path: Path) -> int:
    """Messages in the outbox now (a read-only connection to the state)."""
    conn = connect(StatePaths(str(tmp_path / "state")).db, readonly=True)
    try:
        return outbox.depth(conn).messages
    finally:
        conn.close()


# -- what the receiver saw -------------------------------------------------------------------


def seq_of(path: str) -> int:
    m = _SEQ.search(path)
    assert m is not None, path
    return int(m.group(1))


def ok(req: Request) -> bool:
    """The receiver answered this request with a success (the sink saw an acknowledgement,
    unless the answer came after its timeout)."""
    r = req.response
    return r is not None and r.action == "respond" and 200 <= r.status < 300


def batch(req: Request) -> list[dict[str, Any]]:
    """The messages of a Segment request."""
    if not isinstance(req.json, dict):
        return []
    return list(req.json.get("batch", []))


def received(rx: Receiver, *, acked: bool = False) -> list[tuple[int, str, bytes]]:
    """(seq, messageId, message bytes) of every page message the receiver got (`acked`: only in
    requests it answered 2xx), repeats included."""
    return [
        (seq_of(m["properties"]["path"]), m["messageId"], orjson.dumps(m))
        for req in rx.requests
        if ok(req) or not acked
        for m in batch(req)
        if m.get("type") == "page"
    ]


def acked_seqs(rx: Receiver) -> set[int]:
    return {s for s, _, _ in received(rx, acked=True)}


def assert_at_least_once(rx: Receiver, expected: range) -> None:
    """Every line arrived in an acknowledged request; a line received twice (acknowledged or
    not) carried the same messageId and the same bytes both times."""
    assert acked_seqs(rx) >= set(expected), sorted(set(expected) - acked_seqs(rx))[:10]
    ids: dict[int, set[str]] = {}
    bodies: dict[int, set[bytes]] = {}
    for seq, mid, body in received(rx):
        ids.setdefault(seq, set()).add(mid)
        bodies.setdefault(seq, set()).add(body)
    assert all(len(v) == 1 for v in ids.values()), "a line re-sent under another messageId"
    assert all(len(v) == 1 for v in bodies.values()), "a line re-sent with other bytes"


def assert_exactly_once(rx: Receiver, expected: range | set[int]) -> None:
    """Every line acknowledged exactly once (by messageId), nothing unexpected."""
    got = received(rx, acked=True)
    twice = [m for m, n in Counter(mid for _, mid, _ in got).items() if n > 1]
    assert twice == [], f"{len(twice)} messages acknowledged twice"
    assert sorted(s for s, _, _ in got) == sorted(expected)


def km_pages(rx: Receiver) -> list[Request]:
    return [r for r in rx.requests if r.path == "/e"]


# -- S19: endpoint down, then back -----------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.anyio
async def test_endpoint_down_then_back_delivers_every_line(tmp_path: Path, rx: Receiver) -> None:
    """S19: lines read while the endpoint refuses connections wait in the outbox and are all
    delivered once it is back, none lost, repeats only under the same messageId."""
    log = tmp_path / "access.log"
    write_access_log(log, 0, 10)
    async with daemon(config(tmp_path, log, rx.url)) as d:
        await until(lambda: acked_seqs(rx) >= set(range(10)), "the first 10 lines delivered")
        rx.stop()
        write_access_log(log, 10, 50)
        await until(lambda: depth(tmp_path) == 50, "50 messages held in the outbox")
        sender = d.rt.sender
        assert sender is not None
        await until(lambda: sender.stats.failures["connect"] > 0, "a refused connection")
        rx.start()
        await until(lambda: acked_seqs(rx) >= set(range(60)), "every line delivered")
        await until(lambda: depth(tmp_path) == 0, "an empty outbox")
    assert_at_least_once(rx, range(60))


# -- S19 / §5.4: backpressure ----------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.anyio
async def test_full_outbox_pauses_reading_and_health_says_so(tmp_path: Path, rx: Receiver) -> None:
    """§5.4: with the endpoint answering 503 the outbox stops at max_events (plus what one read
    step committed), /healthz answers 503 "outbox full", and after recovery every line is
    delivered exactly once."""
    burst, bursts, cap = 20, 10, 50
    rx.default = Response(503)
    log = tmp_path / "access.log"
    log.touch()
    port = free_port()
    cfg = config(tmp_path, log, rx.url, metrics_port=port, outbox={"max_events": cap})
    peak = 0
    sampling = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not sampling.is_set():
            peak = max(peak, depth(tmp_path))
            time.sleep(0.01)

    def read_up_to(n: int) -> bool:
        return depth(tmp_path) >= n

    def full() -> bool:
        status, body = http_get(port, "/healthz")
        return status == 503 and "outbox full" in body

    async with daemon(cfg):
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        written = 0
        # One burst at a time, each read before the next: a read step commits at most one.
        while not await asyncio.to_thread(full):
            assert written < bursts * burst, "the outbox never filled"
            write_access_log(log, written, burst)
            written += burst
            await until(functools.partial(read_up_to, min(written, cap)), f"{written} lines read")
        write_access_log(log, written, bursts * burst - written)
        seen = len(rx.requests)
        await asyncio.to_thread(rx.wait_for, seen + 20)  # 503s keep coming; reading stays paused
        assert depth(tmp_path) < cap + burst
        assert await asyncio.to_thread(full)
        sampling.set()
        sampler.join(5)
        assert cap <= peak <= cap + burst, peak
        rx.default = Response(200)
        await until(lambda: len(acked_seqs(rx)) == bursts * burst, "every line delivered", 40)
        await until(lambda: http_get(port, "/healthz")[0] == 200, "healthy again")
    assert_exactly_once(rx, range(bursts * burst))


# -- S20: 429 + Retry-After ------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.anyio
async def test_retry_after_holds_the_next_request(tmp_path: Path, rx: Receiver) -> None:
    """S20: after a 429 with `Retry-After: 2` no request reaches the endpoint for 2 s."""
    rx.script(Response(429, headers={"Retry-After": "2"}))
    log = tmp_path / "access.log"
    write_access_log(log, 0, 30)
    cfg = config(
        tmp_path,
        log,
        rx.url,
        concurrency=1,
        retry={"initial_backoff": "10ms", "max_backoff": "5s"},
    )
    async with daemon(cfg):
        await until(lambda: acked_seqs(rx) >= set(range(30)), "every line delivered")
    first, *rest = rx.requests
    assert first.response is not None and first.response.status == 429
    gaps = [r.received_at - first.received_at for r in rest]
    assert rest and min(gaps) >= 2.0, gaps
    assert gaps[0] < 4.0, gaps  # the hold ends: not a backoff storm's worth of waiting
    assert_exactly_once(rx, range(30))


# -- S21: a 400 batch and a 500 batch --------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.anyio
async def test_400_naming_one_message_dead_letters_it_and_delivers_the_rest(
    tmp_path: Path, rx: Receiver
) -> None:
    """S21: a 400 whose errors body names one messageId dead-letters that message (reason
    http_400, the endpoint's reason in the detail, shown by `trackd deadletters list`); the next
    batch's 500 is retried; every other line is delivered once."""
    bad: list[str] = []
    count = [0]

    def answer(req: Request) -> Response | None:
        n, count[0] = count[0], count[0] + 1
        if n == 0:
            msg = batch(req)[3]
            bad.append(msg["messageId"])
            errors = [{"index": 3, "messageId": msg["messageId"], "reason": "bogus timestamp x7"}]
            return Response.json({"errors": errors}, status=400)
        if n == 1:
            return Response(500)
        return None

    rx.respond_with(answer)
    log = tmp_path / "access.log"
    write_access_log(log, 0, 30)
    cfg = config(tmp_path, log, rx.url, concurrency=1)
    async with daemon(cfg):
        await until(lambda: len(acked_seqs(rx)) == 29, "29 lines delivered")
        listing = await asyncio.to_thread(
            run_trackd, "deadletters", "list", "--json", "-c", str(cfg)
        )
    assert listing.returncode == 0, listing.stderr
    data = orjson.loads(listing.stdout)
    assert data["total"] == 1
    (dead,) = data["dead_letters"]
    assert dead["messageId"] == bad[0] and dead["reason"] == "http_400"
    assert "bogus timestamp x7" in dead["detail"]
    assert rx.requests[1].response is not None and rx.requests[1].response.status == 500
    assert_exactly_once(rx, set(range(30)) - {3})
    assert bad[0] not in {mid for _, mid, _ in received(rx, acked=True)}


# -- S22: a slow endpoint --------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.anyio
async def test_slow_endpoint_runs_concurrency_requests_at_once(
    tmp_path: Path, rx: Receiver
) -> None:
    """S22: 1 s per answer, concurrency 4, 80 messages in batches of 10: about 8 x 1 s / 4, never
    more than 4 in flight, no acknowledged batch sent again."""
    rx.default = Response(200, delay=1.0)
    log = tmp_path / "access.log"
    write_access_log(log, 0, 80)
    cfg = config(tmp_path, log, rx.url, concurrency=4)
    async with daemon(cfg):
        await asyncio.to_thread(rx.wait_for, 1, 10)
        started = time.monotonic()
        await until(lambda: len(acked_seqs(rx)) == 80 and rx.in_flight == 0, "80 delivered")
        took = time.monotonic() - started
    assert took < 4.0, took
    assert rx.max_in_flight == 4
    assert_exactly_once(rx, range(80))
    assert all(n == 1 for n in Counter(mid for _, mid, _ in received(rx)).values())


# -- S23: reset mid-response -----------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.anyio
async def test_reset_mid_response_resends_the_same_segment_batch(
    tmp_path: Path, rx: Receiver
) -> None:
    """S23: a connection reset mid-response re-sends the batch with the same messageIds and
    bytes, marked `X-Retry-Count`."""
    rx.script(Response(200, action="reset"))
    log = tmp_path / "access.log"
    write_access_log(log, 0, 10)
    async with daemon(config(tmp_path, log, rx.url)):
        await until(lambda: acked_seqs(rx) >= set(range(10)), "every line delivered")
    first, second = rx.requests[:2]
    assert batch(first) and batch(second) == batch(first)
    assert "x-retry-count" not in first.headers and second.headers["x-retry-count"] == "1"
    assert_at_least_once(rx, range(10))


@pytest.mark.timeout(60)
@pytest.mark.anyio
async def test_reset_mid_response_resends_the_same_kissmetrics_query(
    tmp_path: Path, rx: Receiver
) -> None:
    """S23: Kissmetrics: the message whose response was reset is sent again with the very same
    query bytes, `_t` included, so Kissmetrics drops the repeat."""
    rx.script(Response(200, action="reset"))
    log = tmp_path / "access.log"
    write_access_log(log, 0, 5)
    async with daemon(config(tmp_path, log, rx.url, "kissmetrics", concurrency=1)):
        await until(lambda: len(km_pages(rx)) >= 6 and rx.in_flight == 0, "6 /e requests")
    pages = km_pages(rx)
    by_url: dict[str, list[str]] = {}
    for r in pages:
        by_url.setdefault(r.params["Viewed URL"], []).append(r.query)
    assert sorted(by_url) == sorted(f"/p/{i}" for i in range(5))
    reset = pages[0].params["Viewed URL"]
    assert len(by_url[reset]) == 2 and by_url[reset][0] == by_url[reset][1]
    assert "_t=" in by_url[reset][0]
    assert all(len(q) == 1 for url, q in by_url.items() if url != reset)


# -- S43: garbage, and an answer after the timeout -------------------------------------------


class GarbageServer:
    """A raw TCP endpoint: the first request gets bytes that are not HTTP (`garbage\\r\\n\\r\\n`,
    then a close); later ones `200 OK` on a kept-alive connection. Records each request's body.
    (tests/receiver.py only speaks HTTP.)"""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.bodies: list[bytes] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                length = int(m.group(1)) if m else 0
                while len(buf) < length:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                body, buf = buf[:length], buf[length:]
                with self._lock:
                    self.bodies.append(body)
                    first = len(self.bodies) == 1
                if first:
                    conn.sendall(b"garbage\r\n\r\n")
                    return
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    def close(self) -> None:
        self._sock.close()


@pytest.mark.timeout(60)
@pytest.mark.anyio
async def test_garbage_answer_is_retried_then_delivered(tmp_path: Path) -> None:
    """S43: an answer that is not HTTP is retried (as a reset), and the batch is then delivered
    with the same messageIds."""
    server = GarbageServer()
    try:
        log = tmp_path / "access.log"
        write_access_log(log, 0, 10)
        url = server.url
        async with daemon(config(tmp_path, log, url, gzip=False)) as d:
            await until(lambda: len(server.bodies) >= 2, "the re-sent batch")
            await until(lambda: depth(tmp_path) == 0, "an empty outbox")
            sender = d.rt.sender
            assert sender is not None
            assert sender.stats.failures["reset"] >= 1 and sender.stats.sent == 10
    finally:
        server.close()
    first, second = (orjson.loads(b)["batch"] for b in server.bodies[:2])
    assert [m["messageId"] for m in first] == [m["messageId"] for m in second]
    assert sorted(seq_of(m["properties"]["path"]) for m in second) == list(range(10))


@pytest.mark.timeout(60)
@pytest.mark.anyio
async def test_answer_after_the_timeout_is_retried_under_the_same_ids(
    tmp_path: Path, rx: Receiver
) -> None:
    """S43: a 200 that comes after `sink.timeout` counts as a timeout and is sent again; the
    receiver can dedupe by messageId."""
    rx.script(Response(200, delay=1.0))
    log = tmp_path / "access.log"
    write_access_log(log, 0, 10)
    async with daemon(config(tmp_path, log, rx.url, timeout="500ms")) as d:
        await until(lambda: any(ok(r) for r in rx.requests[1:]), "the re-sent batch")
        await until(lambda: depth(tmp_path) == 0, "an empty outbox")
        sender = d.rt.sender
        assert sender is not None
        assert sender.stats.failures["timeout"] >= 1
    first, second = rx.requests[:2]
    assert [m["messageId"] for m in batch(first)] == [m["messageId"] for m in batch(second)]
    assert second.received_at - first.received_at >= 0.5  # not before the timeout
    assert_at_least_once(rx, range(10))


# -- S44-ish: a wrong key --------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.anyio
async def test_401_holds_delivery_without_dead_letters(tmp_path: Path, rx: Receiver) -> None:
    """SPEC §4: a 401 pauses the sink: nothing is dead-lettered, `trackd status` shows delivery
    held with the reason, /healthz turns 503 after `metrics.unhealthy_after`; a fixed key then
    delivers everything."""
    rx.default = Response(401)
    log = tmp_path / "access.log"
    write_access_log(log, 0, 20)
    port = free_port()
    cfg = config(tmp_path, log, rx.url, metrics_port=port, unhealthy_after="1s")

    def unhealthy() -> bool:
        status, body = http_get(port, "/healthz")
        return status == 503 and "401" in body

    async with daemon(cfg):
        await asyncio.to_thread(rx.wait_for, 3)
        await until(unhealthy, "/healthz 503 naming the 401")
        proc = await asyncio.to_thread(run_trackd, "status", "--json", "-c", str(cfg))
        assert proc.returncode == 0, proc.stderr
        status = orjson.loads(proc.stdout)
        assert status["running"] is True
        assert status["dead_letters"] == 0 and status["outbox"]["messages"] == 20
        assert "401" in (status["delivery"]["held_because"] or "")
        rx.default = Response(200)
        await until(lambda: len(acked_seqs(rx)) == 20, "every line delivered once the key works")
    assert_exactly_once(rx, range(20))
    listing = run_trackd("deadletters", "list", "--json", "-c", str(cfg))
    assert orjson.loads(listing.stdout)["total"] == 0


# -- S45: secrets ----------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["segment", "kissmetrics"])
def test_secrets_never_appear_in_logs_status_metrics_or_dead_letters(
    tmp_path: Path, rx: Receiver, kind: str
) -> None:
    """S45: the write key / api key from `${ENV}` reach the endpoint but no byte of the daemon's
    logs (debug level), `trackd status`, `/metrics` or a dead letter's detail."""
    secret = WRITE_KEY if kind == "segment" else API_KEY
    forms = {secret, base64.b64encode(f"{secret}:".encode()).decode(), secret[4:-4]}
    count = [0]

    def answer(req: Request) -> Response | None:
        count[0] += 1
        if count[0] <= 2:
            return Response(503, body=b"try later")
        if count[0] == 3:
            if kind == "segment":
                mid = batch(req)[0]["messageId"]
                return Response.json({"errors": [{"messageId": mid, "reason": "nope"}]}, 400)
            return Response(400, body=b"bad request")
        return None

    rx.respond_with(answer)
    log = tmp_path / "access.log"
    write_access_log(log, 0, 20)
    port = free_port()
    extra = {
        "sink": sink_settings(kind, rx.url, concurrency=1),
        "metrics": {"listen": f"127.0.0.1:{port}"},
        "log": {"format": "json", "level": "debug"},
    }
    agent = Agent(tmp_path, [str(log)], extra)
    try:
        agent.start()
        cfg = str(agent.cfg)

        def delivered() -> bool:
            if kind == "segment":
                return len(acked_seqs(rx)) == 19
            return len([r for r in km_pages(rx) if ok(r)]) == 19

        wait_until(delivered, 30, "19 lines delivered")
        wait_until(lambda: (metric(port, "trackd_dead_letters_total") or 0) >= 1, 10, "metrics")
        outputs = {
            "/metrics": http_get(port, "/metrics")[1],
            "/healthz": http_get(port, "/healthz")[1],
        }
        for args in (
            ("status",),
            ("status", "--json"),
            ("deadletters", "list"),
            ("deadletters", "list", "--json"),
            ("check",),
        ):
            proc = run_trackd(*args, "-c", cfg)
            assert proc.returncode == 0, (args, proc.stderr)
            outputs[" ".join(args)] = proc.stdout + proc.stderr
        assert orjson.loads(outputs["deadletters list --json"])["total"] == 1
        assert agent.stop() == 0
        outputs["daemon stderr"] = agent.stderr()
    finally:
        agent.close()
    assert '"event":"messages_dead_lettered"' in outputs["daemon stderr"]
    for where, text in outputs.items():
        for form in forms:
            assert form not in text, f"the {kind} secret appears in {where}"
    # The endpoint did get the key: the test would pass vacuously otherwise.
    first = rx.requests[0]
    if kind == "segment":
        scheme, token = first.headers["authorization"].split()
        assert scheme == "Basic" and base64.b64decode(token) == f"{secret}:".encode()
    else:
        assert first.params["_k"] == secret


# -- metrics ---------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.anyio
async def test_metrics_count_failures_dead_letters_and_deliveries(
    tmp_path: Path, rx: Receiver
) -> None:
    """SPEC §7: after two 503s and one 400 naming a message, /metrics counts http_5xx failures,
    one dead letter, every delivered message in `trackd_sent_total`, and an empty outbox."""
    count = [0]
    rejected: list[int] = []

    def answer(req: Request) -> Response | None:
        count[0] += 1
        if count[0] <= 2:
            return Response(503)
        if count[0] == 3:
            first = batch(req)[0]
            rejected.append(seq_of(first["properties"]["path"]))
            return Response.json(
                {"errors": [{"messageId": first["messageId"], "reason": "bad"}]}, 400
            )
        return None

    rx.respond_with(answer)
    log = tmp_path / "access.log"
    write_access_log(log, 0, 30)
    port = free_port()
    cfg = config(tmp_path, log, rx.url, metrics_port=port, concurrency=1)
    sent = 'trackd_sent_total{sink="segment"}'
    async with daemon(cfg):
        await until(lambda: len(acked_seqs(rx)) == 29, "29 lines delivered")
        await until(lambda: metric(port, sent) == 29, "trackd_sent_total at 29")
        await until(lambda: metric(port, "trackd_outbox_messages") == 0, "an empty outbox gauge")
        failures = await asyncio.to_thread(metric, port, FIVE_XX)
        dead = await asyncio.to_thread(metric, port, "trackd_dead_letters_total")
    assert failures is not None and failures > 0
    assert dead == 1
    assert_exactly_once(rx, set(range(30)) - set(rejected))
