"""The daemon and `run --once` in process (tests/harness.py): real access logs in tmp_path, the
real pipeline, state and sender, and a `ScriptedSink` in place of the HTTP endpoint.

Real time, kept short: backoff 10 to 50 ms, `shutdown_timeout: 1s`.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest

from agent.sinks.base import OutboxMessage, Retry
from tests.harness import ScriptedSink, outbox_depth_at, run_daemon, run_once
from tests.helpers import make_config, write_access_log

SHUTDOWN_TIMEOUT = 1.0
_PATH = re.compile(rb'"path":"/p/(\d+)"')


#: Every test here is async and bounded the same way.
pytestmark = [pytest.mark.anyio, pytest.mark.timeout(15)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def config(tmp_path: Path, log: Path, *, concurrency: int = 2, max_events: int = 20) -> Path:
    """A config tailing `log`, with fast retries; the scripted sink replaces the file sink."""
    return make_config(
        tmp_path,
        paths=[str(log)],
        extra={
            "sink": {
                "type": "file",
                "path": "unused.jsonl",
                "batch": {"max_events": max_events, "max_wait": "20ms"},
                "retry": {"initial_backoff": "10ms", "max_backoff": "50ms"},
                "concurrency": concurrency,
            },
            "shutdown_timeout": "1s",
        },
    )


def seq(message: OutboxMessage) -> int:
    """The sequence number of the access line a page message came from."""
    m = _PATH.search(message.body)
    assert m is not None, message.body
    return int(m.group(1))


def line(n: int) -> Any:
    """A predicate: the message made from access line `n`."""
    return lambda m: seq(m) == n


def delivered_seqs(sink: ScriptedSink) -> list[int]:
    """Sequence numbers of the messages the sink acknowledged, one entry per acknowledgement."""
    by_id = {}
    for request in sink.requests:
        for m in request:
            by_id[orjson.loads(m.body)["messageId"]] = seq(m)
    return sorted(by_id[i] for i, n in sink.delivered.items() for _ in range(n))


async def within(seconds: float, awaitable: Any) -> None:
    async with asyncio.timeout(seconds):
        await awaitable


def exactly_once(sink: ScriptedSink, seqs: Iterable[int]) -> None:
    assert delivered_seqs(sink) == sorted(seqs)
    assert all(n == 1 for n in sink.delivered.values()), sink.delivered


class TestDaemon:
    async def test_every_page_view_delivered_exactly_once(self, tmp_path: Path) -> None:
        """Lines present at start and lines appended while running each reach the sink once."""
        log = tmp_path / "access.log"
        write_access_log(log, 0, 30)
        sink = ScriptedSink()
        async with run_daemon(config(tmp_path, log), sink) as d:
            await within(5, sink.wait_for_delivered(30))
            write_access_log(log, 30, 25)
            await within(5, sink.wait_for_delivered(55))
            assert await d.stop() == 0
        exactly_once(sink, range(55))
        assert outbox_depth_at(tmp_path / "state") == 0

    async def test_outage_fills_the_outbox_then_drains_exactly_once(self, tmp_path: Path) -> None:
        """While the sink fails, the rows are really in the outbox; once it recovers they are
        all delivered, each once, and the outbox is empty."""
        log = tmp_path / "access.log"
        sink = ScriptedSink()
        sink.fail_requests(Retry("http_5xx", "503 Service Unavailable"), times=6)
        async with run_daemon(config(tmp_path, log), sink) as d:
            write_access_log(log, 0, 40)
            await within(5, sink.wait_for_answered(1))
            assert sink.delivered == {}
            assert await d.outbox_depth() > 0
            await within(5, sink.wait_for_delivered(40))
            assert await d.stop() == 0
        assert outbox_depth_at(tmp_path / "state") == 0
        exactly_once(sink, range(40))
        assert max(sink.seen.values()) >= 2  # the outage really made it retry
        assert d.daemon.rt.sender is not None
        assert d.daemon.rt.sender.stats.failures["http_5xx"] >= 6

    async def test_a_rejected_message_is_dead_lettered_alone(self, tmp_path: Path) -> None:
        """The one message the sink refuses goes to the dead letters with the reason; every other
        one is delivered once."""
        log = tmp_path / "access.log"
        write_access_log(log, 0, 12)
        sink = ScriptedSink()
        sink.reject(line(7), "http_400", "properties.path is invalid")
        async with run_daemon(config(tmp_path, log), sink) as d:
            await within(5, sink.wait_for_delivered(11))
            assert await d.stop() == 0
            [dead] = await d.deadletters()
        [refused] = [m for r in sink.requests for m in r if seq(m) == 7]
        assert (dead.reason, dead.detail) == ("http_400", "properties.path is invalid")
        assert dead.message_id == orjson.loads(refused.body)["messageId"]
        assert dead.body == refused.body
        exactly_once(sink, [n for n in range(12) if n != 7])
        assert outbox_depth_at(tmp_path / "state") == 0

    async def test_stop_with_a_hanging_sink_keeps_the_rows(self, tmp_path: Path) -> None:
        """request_stop() with a sink that never answers returns within shutdown_timeout, exit 0,
        and every message that was not acknowledged is still in the outbox."""
        log = tmp_path / "access.log"
        write_access_log(log, 0, 15)
        sink = ScriptedSink()
        sink.hang()
        async with run_daemon(config(tmp_path, log), sink) as d:
            await within(5, sink.wait_for_in_flight(1))
            assert await d.outbox_depth() > 0
            started = time.monotonic()
            assert await d.stop() == 0
            took = time.monotonic() - started
        assert took < SHUTDOWN_TIMEOUT + 1.0, took
        assert sink.delivered == {}
        assert outbox_depth_at(tmp_path / "state") == 15

    async def test_stop_deletes_only_what_was_acknowledged(self, tmp_path: Path) -> None:
        """At stop, the messages of the one request that never got an answer stay in the outbox
        and every acknowledged one is gone (SCENARIOS 29)."""
        log = tmp_path / "access.log"
        write_access_log(log, 0, 25)
        sink = ScriptedSink(max_request_messages=5)
        sink.hang(line(0))
        async with run_daemon(config(tmp_path, log), sink) as d:
            await within(5, sink.wait_for_delivered(20))
            assert await d.stop() == 0
            left = await d.outbox_ids()
        [hung] = [r for r in sink.requests if any(seq(m) == 0 for m in r)]
        assert left == [orjson.loads(m.body)["messageId"] for m in hung]
        exactly_once(sink, [n for n in range(25) if n not in {seq(m) for m in hung}])


class TestRunOnce:
    async def test_everything_accepted_exits_0_with_an_empty_outbox(self, tmp_path: Path) -> None:
        """run --once reads the file, delivers each message once, exits 0, leaves no row."""
        log = tmp_path / "access.log"
        write_access_log(log, 0, 50)
        sink = ScriptedSink()
        assert await run_once(config(tmp_path, log), sink, deliver_timeout=5.0) == 0
        exactly_once(sink, range(50))
        assert outbox_depth_at(tmp_path / "state") == 0
        assert sink.closed == 1

    async def test_undelivered_messages_wait_for_the_next_run(self, tmp_path: Path) -> None:
        """A sink that keeps failing: run --once gives up after --deliver-timeout with exit 1
        and the rows stay in the outbox; the next run delivers them with the same messageIds."""
        log = tmp_path / "access.log"
        write_access_log(log, 0, 20)
        cfg = config(tmp_path, log)
        failing = ScriptedSink(default=Retry("http_5xx", "503"))
        started = time.monotonic()
        assert await run_once(cfg, failing, deliver_timeout=0.5) == 1
        assert time.monotonic() - started < 4.0
        assert outbox_depth_at(tmp_path / "state") == 20
        assert failing.delivered == {}
        first_ids = set(failing.seen)
        assert len(first_ids) == 20

        healthy = ScriptedSink()
        assert await run_once(cfg, healthy, deliver_timeout=5.0) == 0
        assert set(healthy.delivered) == first_ids
        exactly_once(healthy, range(20))
        assert outbox_depth_at(tmp_path / "state") == 0
