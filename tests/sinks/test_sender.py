"""The sender of agent/sinks/sender.py on a real state database: acknowledgements, dead letters,
retries and their backoff, `Retry-After` holds, pauses, concurrency, linger, request limits and the
drain — with a `ScriptedSink` (tests/harness.py) and, where time matters, a `FakeClock`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest

from agent.config.schema import BatchConfig, RetryConfig
from agent.sinks.backoff import Backoff, FakeClock
from agent.sinks.base import Reject, Retry
from agent.sinks.sender import Sender
from agent.state import deadletters, outbox
from agent.state.db import open_state, transaction
from tests.harness import ScriptedSink, mid

T = TypeVar("T")

#: Backoff delays are `HALF * ceiling(attempt)`: attempt 0 waits 0.5 s, attempt 1 waits 1 s, ...
HALF = 0.5
INITIAL = 1.0


#: Every test here is async and bounded the same way.
pytestmark = [pytest.mark.anyio, pytest.mark.timeout(10)]


def body(n: int) -> bytes:
    """A message as the pipeline commits it: compact JSON, messageId second (SPEC §3.1)."""
    return orjson.dumps(
        {
            "type": "page",
            "messageId": f"msg-{n:04d}",
            "timestamp": "2026-11-28T10:00:00.000Z",
            "anonymousId": f"visitor{n:05d}x",
            "properties": {"path": f"/p/{n}", "search": ""},
        }
    )


def msg_id(n: int) -> str:
    return f"msg-{n:04d}"


@dataclass
class DbCalls:
    """Calls in progress on the database thread: real work the fake clock does not see."""

    pending: int = 0
    #: Calls started so far.
    started: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    #: Called on the event loop after each call returns, before its caller resumes.
    after: Callable[[Callable[..., Any], Any], Awaitable[None]] | None = None

    def __post_init__(self) -> None:
        self.idle.set()


@dataclass
class Bench:
    """A sender over a real state database, its database thread, its sink and its clock."""

    sender: Sender
    sink: ScriptedSink
    clock: FakeClock
    on_db: Callable[..., Any]
    conn: Any
    db: DbCalls

    def _enqueue(self, bodies: list[bytes], stamps: list[int | None] | None) -> None:
        with transaction(self.conn):
            outbox.enqueue(self.conn, bodies, stamps, self.clock.time())

    async def enqueue(self, ns: range | list[int], *, stamps: bool = False) -> None:
        """Commit messages `ns` to the outbox (with stamp 1_800_000_000 + n if `stamps`)."""
        bodies = [body(n) for n in ns]
        st: list[int | None] | None = [1_800_000_000 + n for n in ns] if stamps else None
        await self.on_db(self._enqueue, bodies, st)
        self.sender.notify()

    async def rows(self) -> list[outbox.Row]:
        return await self.on_db(outbox.fetch, self.conn, 0, 1 << 30)  # type: ignore[no-any-return]

    async def outbox_ids(self) -> list[str | None]:
        return [outbox.message_id(r.body) for r in await self.rows()]

    async def dead(self) -> list[deadletters.DeadLetter]:
        return await self.on_db(deadletters.listing, self.conn)  # type: ignore[no-any-return]

    async def drain(self, grace: float = 5.0) -> int:
        """`run` with `finish` already set: deliver what is there within `grace` (fake) s."""
        done = asyncio.Event()
        done.set()
        return await self.sender.run(done, grace)


@contextlib.asynccontextmanager
async def bench(
    tmp_path: Path,
    sink: ScriptedSink | None = None,
    *,
    max_events: int = 100,
    max_wait: float = 0.0,
    concurrency: int = 1,
    max_age: float = 3600.0,
    max_backoff: float = 60.0,
    clock: FakeClock | None = None,
    jitter: Callable[[], float] | None = None,
) -> AsyncIterator[Bench]:
    """The sender as agent/runtime.py builds it: its own connection on a single-thread
    executor; backoff jitter fixed at half the ceiling."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-sender")
    loop = asyncio.get_running_loop()

    db = DbCalls()

    async def on_db(fn: Callable[..., T], *args: Any) -> T:
        db.pending += 1
        db.started += 1
        db.idle.clear()
        try:
            result = await loop.run_in_executor(pool, fn, *args)
            if db.after is not None:
                await db.after(fn, result)
            return result
        finally:
            db.pending -= 1
            if not db.pending:
                db.idle.set()

    clock = clock or FakeClock()
    sink = sink or ScriptedSink(clock=clock)
    (tmp_path / "state").mkdir(exist_ok=True)
    conn = await on_db(open_state, str(tmp_path / "state"))
    sender = Sender(
        sink,
        conn,
        on_db,
        batch=BatchConfig(max_events=max_events, max_wait=max_wait),
        retry=RetryConfig(max_age=max_age, initial_backoff=INITIAL, max_backoff=max_backoff),
        concurrency=concurrency,
        clock=clock,
        backoff=Backoff(INITIAL, max_backoff, random=jitter or (lambda: HALF)),
    )
    try:
        yield Bench(sender, sink, clock, on_db, conn, db)
    finally:
        await on_db(conn.close)
        pool.shutdown(wait=True)


async def until(awaitable: Any, within: float = 3.0) -> None:
    """Await an event-driven condition, failing (not hanging) if it never comes."""
    async with asyncio.timeout(within):
        await awaitable


async def quiesce(b: Bench) -> None:
    """Until the code under test has done all it can without time passing: no database call in
    progress, and the tasks that were ready have run: a window of event loop turns (not a
    sleep) in which no database call started, ending with nothing left to run. (Without that
    last check a sleeper task the sender had just created, not yet started and so not yet on
    the fake clock, read as "nobody sleeps".)"""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(3.0):
        while True:
            await b.db.idle.wait()
            started = b.db.started
            for _ in range(50):
                await asyncio.sleep(0)
            # `_ready`: the loop's queue of callbacks due to run (ours has just been taken).
            runnable = len(loop._ready)  # type: ignore[attr-defined]
            if not b.db.pending and b.db.started == started and not runnable:
                return


async def settle(b: Bench) -> None:
    """Until the sender has done what it could and sleeps on the fake clock (not spinning)."""
    await quiesce(b)
    await b.clock.wait_for_sleepers(1, within=3.0)


async def drive(b: Bench, task: asyncio.Task[T], within: float = 5.0) -> T:
    """Run `task` to its end on fake time: whenever nothing can happen without time passing,
    jump to the next deadline."""
    async with asyncio.timeout(within):
        while not task.done():
            await quiesce(b)
            if task.done():
                break
            deadline = b.clock.next_deadline()
            assert deadline is not None, f"stuck: nothing sleeps, nothing runs ({b.sender})"
            b.clock.advance_to(deadline)
    return task.result()


def running(b: Bench) -> tuple[asyncio.Event, asyncio.Task[int]]:
    """The sender's `run` as a task, not draining until the returned event is set."""
    finish = asyncio.Event()
    return finish, asyncio.create_task(b.sender.run(finish, 5.0))


async def start(
    b: Bench, seqs: range | list[int], *, stamps: bool = False
) -> tuple[asyncio.Event, asyncio.Task[int]]:
    """Enqueue the messages `seqs` (as `Bench.enqueue`), then start the sender's `run` as
    `running` does."""
    await b.enqueue(seqs, stamps=stamps)
    return running(b)


async def answered(b: Bench, n: int) -> None:
    """Until the sink answered `n` requests and the sender settled after them."""
    await until(b.sink.wait_for_answered(n))
    await settle(b)


async def stop(b: Bench, finish: asyncio.Event, task: asyncio.Task[int]) -> int:
    finish.set()
    return await drive(b, task)


class TestDelivered:
    async def test_delivered_rows_leave_the_outbox(self, tmp_path: Path) -> None:
        """Rows the sink acknowledged are deleted from the outbox, each sent once."""
        async with bench(tmp_path) as b:
            await b.enqueue(range(5))
            assert len(await b.rows()) == 5
            assert await b.drain() == 0
            assert await b.rows() == []
            assert b.sink.seen == {msg_id(n): 1 for n in range(5)}
            assert await b.dead() == []

    async def test_messages_are_sent_exactly_as_committed(self, tmp_path: Path) -> None:
        """The sink gets each row's body bytes and stamp as committed, in commit order, with
        attempts 0 on a first send."""
        async with bench(tmp_path) as b:
            await b.enqueue(range(3), stamps=True)
            assert await b.drain() == 0
            sent = [m for request in b.sink.requests for m in request]
            assert [m.body for m in sent] == [body(n) for n in range(3)]
            assert [m.stamp for m in sent] == [1_800_000_000 + n for n in range(3)]
            assert [m.attempts for m in sent] == [0, 0, 0]
            assert b.sink.retry_counts == [0]


class TestReject:
    async def test_reject_dead_letters_exactly_that_row(self, tmp_path: Path) -> None:
        """In a partial batch, the rejected message moves to the dead letters with its reason and
        detail; the others of the same request are delivered."""
        async with bench(tmp_path) as b:
            b.sink.reject(msg_id(1), "http_400", "properties.path: invalid")
            await b.enqueue(range(3))
            assert await b.drain() == 0
            assert len(b.sink.requests) == 1
            [dead] = await b.dead()
            assert (dead.message_id, dead.reason, dead.detail) == (
                msg_id(1),
                "http_400",
                "properties.path: invalid",
            )
            assert dead.sink == "scripted"
            assert dead.body == body(1)
            assert await b.rows() == []
            assert dict(b.sink.delivered) == {msg_id(0): 1, msg_id(2): 1}

    async def test_a_rejected_message_is_not_sent_again(self, tmp_path: Path) -> None:
        """A Reject is final: the message is sent once, never retried."""
        async with bench(tmp_path) as b:
            b.sink.reject(msg_id(0), "too_large")
            await b.enqueue(range(2))
            assert await b.drain() == 0
            assert b.sink.seen[msg_id(0)] == 1


class TestRetry:
    async def test_retry_counts_an_attempt_and_starts_the_max_age(self, tmp_path: Path) -> None:
        """A Retry leaves the row in the outbox with attempts 1 and first_attempt = the time of
        the failure."""
        async with bench(tmp_path) as b:
            b.sink.fail(msg_id(0), Retry("http_5xx", "503"), times=1)
            finish, task = await start(b, range(1))
            await until(b.sink.wait_for_answered(1))
            await settle(b)  # the sender waits for the backoff
            [row] = await b.rows()
            assert (row.attempts, row.first_attempt) == (1, b.clock.time())
            assert await stop(b, finish, task) == 0

    async def test_retry_is_resent_after_the_backoff_and_not_before(self, tmp_path: Path) -> None:
        """The retried message is sent again once its backoff (0.5 s here) has passed — not
        before — with the same body and stamp."""
        async with bench(tmp_path) as b:
            b.sink.fail(msg_id(0), times=1)
            finish, task = await start(b, range(1), stamps=True)
            await answered(b, 1)
            b.clock.advance(HALF * INITIAL - 0.01)
            await settle(b)
            assert len(b.sink.requests) == 1
            b.clock.advance(0.01)
            await until(b.sink.wait_for_delivered(1))
            first, again = b.sink.requests[0][0], b.sink.requests[1][0]
            assert (again.body, again.stamp) == (first.body, first.stamp)
            assert (again.attempts, b.sink.retry_counts[1]) == (1, 1)
            assert await stop(b, finish, task) == 0
            assert await b.rows() == []

    async def test_backoff_grows_with_the_attempts(self, tmp_path: Path) -> None:
        """Consecutive retries of a message wait 0.5 s, 1 s, 2 s (capped exponential)."""
        async with bench(tmp_path) as b:
            b.sink.fail(msg_id(0), times=3)
            finish, task = await start(b, range(1))
            sent_at: list[float] = []
            for n in range(1, 5):
                await until(b.sink.wait_for_answered(n))
                sent_at.append(b.clock.monotonic())
                if n < 4:
                    await settle(b)
                    deadline = b.clock.next_deadline()
                    assert deadline is not None
                    b.clock.advance_to(deadline)
            assert [round(y - x, 3) for x, y in itertools.pairwise(sent_at)] == [
                0.5,
                1.0,
                2.0,
            ]
            assert await stop(b, finish, task) == 0

    async def test_retry_past_max_age_is_dead_lettered_expired(self, tmp_path: Path) -> None:
        """A message still failing `retry.max_age` after its first failure is dead-lettered
        `expired`, and no longer sent."""
        async with bench(tmp_path, max_age=10.0, max_backoff=60.0) as b:
            b.sink.fail(msg_id(0), Retry("http_5xx", "503 Service Unavailable"), times=1000)
            finish, task = await start(b, range(2))
            await answered(b, 1)
            b.clock.advance(11.0)
            await until(b.sink.wait_for_answered(2))
            assert await stop(b, finish, task) == 0
            [dead] = await b.dead()
            assert (dead.message_id, dead.reason) == (msg_id(0), "expired")
            assert "503 Service Unavailable" in dead.detail
            assert await b.rows() == []
            assert b.sink.seen[msg_id(0)] == 2
            assert b.sink.delivered == {msg_id(1): 1}

    async def test_retry_within_max_age_is_not_expired(self, tmp_path: Path) -> None:
        """Before `retry.max_age` has passed a failing message keeps being retried."""
        async with bench(tmp_path, max_age=10.0) as b:
            b.sink.fail(msg_id(0), times=2)
            await b.enqueue(range(1))
            assert await drive(b, asyncio.create_task(b.drain())) == 0
            assert await b.dead() == []
            assert b.sink.delivered == {msg_id(0): 1}
            assert b.clock.monotonic() < 10.0


class TestRetryAfter:
    async def test_no_request_of_any_message_before_retry_after(self, tmp_path: Path) -> None:
        """A Retry-After of 30 s on one request holds every message of the sink until then;
        then delivery resumes."""
        sink = ScriptedSink(max_request_messages=1)
        async with bench(tmp_path, sink) as b:
            sink.clock = b.clock
            sink.retry_after(30.0, times=1)
            finish, task = await start(b, range(3))
            await answered(b, 1)
            b.clock.advance(29.9)
            await settle(b)
            assert len(sink.requests) == 1
            assert b.sender.stats.paused is not None
            b.clock.advance(0.1)
            await until(sink.wait_for_delivered(3))
            assert await stop(b, finish, task) == 0
            assert sink.seen == {msg_id(0): 2, msg_id(1): 1, msg_id(2): 1}
            assert b.sender.stats.failures == {"http_429": 1}

    async def test_retry_after_is_capped_at_max_backoff(self, tmp_path: Path) -> None:
        """A Retry-After longer than `retry.max_backoff` holds only `max_backoff`."""
        async with bench(tmp_path, max_backoff=5.0) as b:
            b.sink.retry_after(3600.0, times=1)
            finish, task = await start(b, range(1))
            await answered(b, 1)
            b.clock.advance(5.0)
            await until(b.sink.wait_for_delivered(1))
            assert await stop(b, finish, task) == 0


class TestPause:
    async def test_pause_dead_letters_nothing_and_resumes(self, tmp_path: Path) -> None:
        """A sink refused as a whole (401) keeps every message in the outbox and retries; when
        it accepts again, everything is delivered and nothing was dead-lettered."""
        async with bench(tmp_path) as b:
            b.sink.pause(times=3)
            await b.enqueue(range(4))
            assert await drive(b, asyncio.create_task(b.drain(grace=60))) == 0
            assert await b.dead() == []
            assert len(b.sink.requests) == 4
            assert b.sink.delivered == {msg_id(n): 1 for n in range(4)}
            assert b.sender.stats.failures == {"http_4xx": 12}
            assert b.sender.stats.dead_letters == 0

    async def test_pause_holds_the_sink_for_its_backoff(self, tmp_path: Path) -> None:
        """After a Pause no request goes before the backoff (1 s for the first pause here)."""
        async with bench(tmp_path) as b:
            b.sink.pause(times=1)
            finish, task = await start(b, range(2))
            await answered(b, 1)
            assert b.sender.stats.paused is not None
            b.clock.advance(0.99)
            await settle(b)
            assert len(b.sink.requests) == 1
            b.clock.advance(0.01)
            await until(b.sink.wait_for_delivered(2))
            assert await stop(b, finish, task) == 0
            rows_attempts = [m.attempts for m in b.sink.requests[1]]
            assert rows_attempts == [0, 0]  # a pause is not a failed attempt of the message


class TestConcurrency:
    async def test_never_more_requests_in_flight_than_concurrency(self, tmp_path: Path) -> None:
        """With a slow sink and concurrency 3, exactly 3 requests fly at once, never more, and
        no message is in two requests in flight at once."""
        sink = ScriptedSink(max_request_messages=2)
        async with bench(tmp_path, sink, concurrency=3) as b:
            sink.clock = b.clock
            sink.slow(1.0)
            await b.enqueue(range(20))
            task = asyncio.create_task(b.drain(grace=60))
            await until(sink.wait_for_in_flight(3))
            assert await drive(b, task) == 0
            assert sink.max_in_flight == 3
            assert sink.overlaps == []
            assert sink.delivered == {msg_id(n): 1 for n in range(20)}
            # 10 requests, 3 at a time: 4 rounds of 1 s.
            assert b.clock.monotonic() == pytest.approx(4.0)

    async def test_retries_never_overlap_their_first_request(self, tmp_path: Path) -> None:
        """Retried messages come back only after their request ended: with failures and a slow
        sink, no messageId is ever in two requests in flight."""
        sink = ScriptedSink(max_request_messages=3)
        async with bench(tmp_path, sink, concurrency=4) as b:
            sink.clock = b.clock
            sink.slow(0.25)
            for n in range(0, 12, 2):
                sink.fail(msg_id(n), times=2)
            await b.enqueue(range(12))
            assert await drive(b, asyncio.create_task(b.drain(grace=60))) == 0
            assert sink.overlaps == []
            assert sink.delivered == {msg_id(n): 1 for n in range(12)}
            assert sink.max_in_flight <= 4


class TestGroupCommit:
    async def test_outcomes_of_requests_finishing_together_share_a_transaction(
        self, tmp_path: Path
    ) -> None:
        """A sink of one message per request (Kissmetrics) with 8 in flight: the outcomes of
        the requests that finish while one is being written go in the next transaction, not one
        transaction each; every message is still recorded delivered once."""
        sink = ScriptedSink(max_request_messages=1)
        async with bench(tmp_path, sink, concurrency=8) as b:
            sink.clock = b.clock
            sink.slow(1.0)
            writes = 0

            async def count(fn: Callable[..., Any], _result: Any) -> None:
                nonlocal writes
                writes += getattr(fn, "__name__", "") == "_write_outcomes"

            b.db.after = count
            await b.enqueue(range(40))
            assert await drive(b, asyncio.create_task(b.drain(grace=60))) == 0
            assert sink.delivered == {msg_id(n): 1 for n in range(40)}
            assert await b.rows() == []
            # 5 rounds of 8 requests: mostly a write for the first to finish and one for the
            # other 7 (a round's requests may wake over two loop turns); 40 without grouping.
            assert writes <= 20

    async def test_a_retry_after_holds_at_once_while_outcomes_are_written(
        self, tmp_path: Path
    ) -> None:
        """A 429 with Retry-After that finishes while another request's outcomes are still
        being written holds the sink at once: no request starts before the write is done (nor
        for the 30 s after)."""
        sink = ScriptedSink(max_request_messages=1)
        async with bench(tmp_path, sink, concurrency=2) as b:
            sink.clock = b.clock
            sink.slow(1.0)
            sink.fail(msg_id(1), Retry("http_429", "429 Too Many Requests", after=30.0))
            written = asyncio.Event()

            async def hold_first_write(fn: Callable[..., Any], _result: Any) -> None:
                if getattr(fn, "__name__", "") == "_write_outcomes":
                    await written.wait()

            b.db.after = hold_first_write
            await b.enqueue(range(6))
            task = asyncio.create_task(b.drain(grace=120))
            await until(sink.wait_for_in_flight(2))
            b.clock.advance(1.0)
            await until(sink.wait_for_answered(2))
            for _ in range(100):  # loop turns in which a wrongly free slot would be used
                await asyncio.sleep(0)
            assert len(sink.requests) == 2
            assert b.sender.stats.paused is not None
            written.set()
            await settle(b)
            assert len(sink.requests) == 2
            assert await drive(b, task) == 0  # the fake clock past the hold, then the rest
            assert b.clock.monotonic() >= 31.0
            assert sink.delivered == {msg_id(n): 1 for n in range(6)}
            assert sink.seen[msg_id(1)] == 2


class TestLinger:
    async def test_a_small_batch_waits_max_wait(self, tmp_path: Path) -> None:
        """With max_events 10 and max_wait 1 s, 3 messages are not sent before 1 s passes, then
        in one request."""
        async with bench(tmp_path, max_events=10, max_wait=1.0) as b:
            finish, task = await start(b, range(3))
            await settle(b)
            b.clock.advance(0.99)
            await settle(b)
            assert b.sink.requests == []
            b.clock.advance(0.01)
            await until(b.sink.wait_for_delivered(3))
            assert [len(r) for r in b.sink.requests] == [3]
            assert await stop(b, finish, task) == 0

    async def test_a_full_batch_goes_at_once(self, tmp_path: Path) -> None:
        """max_events messages are sent without waiting for the linger."""
        async with bench(tmp_path, max_events=10, max_wait=1.0) as b:
            finish, task = await start(b, range(10))
            await until(b.sink.wait_for_delivered(10))
            assert b.clock.monotonic() == 0.0
            assert [len(r) for r in b.sink.requests] == [10]
            assert await stop(b, finish, task) == 0

    async def test_draining_sends_a_small_batch_at_once(self, tmp_path: Path) -> None:
        """While draining, a batch below max_events goes without waiting for max_wait."""
        async with bench(tmp_path, max_events=10, max_wait=1.0) as b:
            await b.enqueue(range(3))
            assert await b.drain() == 0
            assert b.clock.monotonic() == 0.0
            assert b.sink.delivered == {msg_id(n): 1 for n in range(3)}


class TestRequestLimits:
    async def test_max_request_messages_is_honoured(self, tmp_path: Path) -> None:
        """A due batch of 10 on a sink taking 3 per request leaves as 3+3+3+1 — all of it at
        once, none of it waiting another linger."""
        sink = ScriptedSink(max_request_messages=3)
        async with bench(tmp_path, sink, max_events=10, max_wait=1.0, concurrency=8) as b:
            sink.clock = b.clock
            finish, task = await start(b, range(10))
            await until(sink.wait_for_delivered(10))
            assert b.clock.monotonic() == 0.0
            assert [len(r) for r in sink.requests] == [3, 3, 3, 1]
            assert await stop(b, finish, task) == 0

    async def test_one_message_per_request_after_a_linger(self, tmp_path: Path) -> None:
        """A lingered batch of 4 on a one-message-per-request sink (Kissmetrics) goes whole once
        max_wait has passed, not one message per max_wait."""
        sink = ScriptedSink(max_request_messages=1)
        async with bench(tmp_path, sink, max_events=10, max_wait=1.0, concurrency=8) as b:
            sink.clock = b.clock
            finish, task = await start(b, range(4))
            await settle(b)
            b.clock.advance(1.0)
            await until(sink.wait_for_delivered(4))
            assert b.clock.monotonic() == 1.0
            assert await stop(b, finish, task) == 0

    async def test_max_request_bytes_is_honoured(self, tmp_path: Path) -> None:
        """Requests are cut so their bodies (plus one separator each) fit max_request_bytes; a
        single message never exceeds it here, and none is dropped."""
        size = len(body(0))
        limit = 3 * size + 2  # three bodies and two separators
        sink = ScriptedSink(max_request_bytes=limit)
        async with bench(tmp_path, sink) as b:
            await b.enqueue(range(10))
            assert await b.drain() == 0
            lengths = [sum(len(m.body) for m in r) + len(r) - 1 for r in sink.requests]
            assert all(n <= limit for n in lengths), lengths
            assert [len(r) for r in sink.requests] == [3, 3, 3, 1]
            assert sink.delivered == {msg_id(n): 1 for n in range(10)}


class TestDrain:
    async def test_drain_delivers_everything_and_returns_0(self, tmp_path: Path) -> None:
        """Rows committed while running and after `finish` is set are all delivered; `run`
        returns 0 with the outbox empty."""
        async with bench(tmp_path, max_events=50, max_wait=10.0) as b:
            finish, task = await start(b, range(5))
            await settle(b)
            finish.set()
            await b.enqueue(range(5, 8))
            assert await drive(b, task) == 0
            assert await b.rows() == []
            assert b.sink.delivered == {msg_id(n): 1 for n in range(8)}

    async def test_finish_wakes_an_idle_sender(self, tmp_path: Path) -> None:
        """An idle sender (nothing to send, no timer) returns 0 as soon as `finish` is set."""
        async with bench(tmp_path) as b:
            finish, task = await start(b, range(2))
            await until(b.sink.wait_for_delivered(2))
            await quiesce(b)
            finish.set()
            async with asyncio.timeout(3):
                assert await task == 0
            assert await b.rows() == []

    async def test_a_commit_during_a_fetch_is_not_lost(self, tmp_path: Path) -> None:
        """Rows committed (and notified) while the sender's outbox read is in progress are
        delivered, though that read did not see them."""
        async with bench(tmp_path) as b:
            fired = False

            async def commit_during_first_fetch(fn: Callable[..., Any], result: Any) -> None:
                nonlocal fired
                if not fired and fn == b.sender._fetch and result == []:
                    fired = True
                    await b.enqueue(range(3))

            b.db.after = commit_during_first_fetch
            finish, task = running(b)
            await until(b.sink.wait_for_delivered(3))
            assert fired
            assert await stop(b, finish, task) == 0
            assert await b.rows() == []

    async def test_drain_deadline_with_a_hanging_sink(self, tmp_path: Path) -> None:
        """A sink that never answers: `run` returns non-zero at the drain deadline, and every
        row that was not acknowledged is still in the outbox."""
        sink = ScriptedSink(max_request_messages=2)
        async with bench(tmp_path, sink, concurrency=2) as b:
            sink.clock = b.clock
            sink.hang(lambda m: mid(m) in {msg_id(2), msg_id(3)})
            await b.enqueue(range(6))
            done = asyncio.Event()
            done.set()
            task = asyncio.create_task(b.sender.run(done, 2.0))
            await until(sink.wait_for_delivered(4))
            await settle(b)
            b.clock.advance(1.9)
            await settle(b)
            assert not task.done()
            b.clock.advance(0.1)
            async with asyncio.timeout(3):
                left = await task
            assert left > 0
            assert await b.outbox_ids() == [msg_id(2), msg_id(3)]
            assert await b.dead() == []
            assert b.sender.stats.sent == 4

    async def test_undelivered_rows_are_sent_again_by_the_next_sender(self, tmp_path: Path) -> None:
        """What a cancelled request carried is sent by the next run with the same bytes."""
        sink = ScriptedSink()
        async with bench(tmp_path, sink) as b:
            sink.hang()
            await b.enqueue(range(3), stamps=True)
            task = asyncio.create_task(b.drain(grace=1.0))
            await until(sink.wait_for_in_flight(1))
            assert await drive(b, task) > 0
            sink.heal()
            nxt = Sender(
                sink,
                b.conn,
                b.on_db,
                batch=BatchConfig(max_events=100, max_wait=0.0),
                retry=RetryConfig(),
                concurrency=1,
                clock=b.clock,
            )
            done = asyncio.Event()
            done.set()
            assert await nxt.run(done, 5.0) == 0
            first, again = sink.requests
            assert [(m.body, m.stamp) for m in again] == [(m.body, m.stamp) for m in first]
            assert await b.rows() == []


class TestCursor:
    async def test_rows_committed_after_the_outbox_emptied_are_sent(self, tmp_path: Path) -> None:
        """Once every row was delivered, new rows (SQLite reuses their ids) are still sent."""
        async with bench(tmp_path) as b:
            finish, task = await start(b, range(5))
            await until(b.sink.wait_for_delivered(5))
            await quiesce(b)
            await b.enqueue(range(5, 8))
            await until(b.sink.wait_for_delivered(8))
            assert await stop(b, finish, task) == 0
            assert b.sink.seen == {msg_id(n): 1 for n in range(8)}

    async def test_new_rows_are_sent_while_an_older_one_waits_to_retry(
        self, tmp_path: Path
    ) -> None:
        """With the top rows delivered and a lower one waiting for its backoff, rows committed
        now are sent at once, not after the retry."""
        async with bench(tmp_path) as b:
            b.sink.fail(msg_id(0), times=1)
            finish, task = await start(b, range(3))
            await until(b.sink.wait_for_delivered(2))
            await settle(b)  # msg 0 waits 0.5 s of fake time
            await b.enqueue(range(3, 5))
            await until(b.sink.wait_for_delivered(4))
            assert b.clock.monotonic() == 0.0
            assert msg_id(0) not in b.sink.delivered
            assert await stop(b, finish, task) == 0
            assert b.sink.delivered == {msg_id(n): 1 for n in range(5)}


class TestSinkRaises:
    async def test_a_raising_sink_loses_nothing(self, tmp_path: Path) -> None:
        """A sink whose send raises: its messages are retried (counted `connect`) and then
        delivered; nothing is dead-lettered."""
        async with bench(tmp_path) as b:
            b.sink.raise_on_send(RuntimeError("boom"), times=1)
            await b.enqueue(range(3))
            assert await drive(b, asyncio.create_task(b.drain())) == 0
            assert len(b.sink.requests) == 2
            assert b.sink.delivered == {msg_id(n): 1 for n in range(3)}
            assert b.sender.stats.failures == {"connect": 3}
            assert await b.dead() == []
            assert await b.rows() == []


class TestDownEndpoint:
    async def _requests_in(
        self, tmp_path: Path, seconds: float
    ) -> tuple[int, ScriptedSink, int, int, str | None]:
        """Requests sent in `seconds` (fake) while every request fails, with 400 messages of
        one per request (as Kissmetrics sends them) waiting and 8 requests at a time; then the
        endpoint is back. Returns (requests while down, the sink, rows and dead letters left,
        the sender's pause reason at the end)."""
        clock = FakeClock()
        sink = ScriptedSink(clock=clock, max_request_messages=1)
        async with bench(
            tmp_path, sink, max_events=1, concurrency=8, max_backoff=60.0, clock=clock
        ) as b:
            b.sink.fail_requests(Retry("http_5xx", "503 Service Unavailable"), times=1 << 30)
            finish, task = await start(b, range(400))
            t0 = b.clock.monotonic()
            while b.clock.monotonic() - t0 < seconds:
                await quiesce(b)
                deadline = b.clock.next_deadline()
                assert deadline is not None
                b.clock.advance_to(min(deadline, t0 + seconds))
            sent = len(b.sink.requests)
            b.sink.heal()
            while True:
                await quiesce(b)
                if sum(b.sink.delivered.values()) >= 400:
                    break
                deadline = b.clock.next_deadline()
                assert deadline is not None and deadline - t0 < seconds + 120, (
                    f"never recovered: {b.sender} {task} {len(b.sink.requests)}"
                )
                b.clock.advance_to(deadline)
            assert await stop(b, finish, task) == 0
            return sent, b.sink, len(await b.rows()), len(await b.dead()), b.sender.stats.paused

    async def test_a_down_endpoint_is_probed_not_hammered(self, tmp_path: Path) -> None:
        """Each message backs off on its own, but 400 waiting messages would still make a
        request each per attempt (~1,600 in 30 s here). The sink-wide breaker holds every request
        from the second failed round: a few rounds of at most `concurrency` requests."""
        sent, *_ = await self._requests_in(tmp_path, 30.0)
        assert 8 <= sent <= 8 * 8, sent

    async def test_the_breaker_lets_everything_through_once_the_endpoint_answers(
        self, tmp_path: Path
    ) -> None:
        """When the endpoint is back, the next round delivers and the hold is over: every
        message is delivered once, nothing is dead-lettered."""
        _sent, sink, rows, dead, paused = await self._requests_in(tmp_path, 10.0)
        assert len(sink.delivered) == 400
        assert set(sink.delivered.values()) == {1}
        assert (rows, dead, paused) == (0, 0, None)


class TestOneBackoffPerRequest:
    async def test_a_failed_request_comes_back_as_one_request(self, tmp_path: Path) -> None:
        """The messages of a request that failed share one backoff (one draw of the jitter),
        so they are retried together in one request, not scattered into many small ones."""
        draws = itertools.cycle([0.1, 0.9, 0.3, 0.7, 0.5])
        async with bench(tmp_path, max_events=10, jitter=lambda: next(draws)) as b:
            b.sink.fail_requests(Retry("http_5xx"), times=1)
            await b.enqueue(range(10))
            assert await drive(b, asyncio.create_task(b.drain())) == 0
            assert [len(r) for r in b.sink.requests] == [10, 10]
            assert b.sink.delivered == {msg_id(n): 1 for n in range(10)}


class TestBrokenContract:
    async def test_a_wrong_number_of_outcomes_stops_the_sender(self, tmp_path: Path) -> None:
        """A sink that answers a request with fewer outcomes than messages is a bug: `run`
        raises it instead of carrying on, and the messages stay in the outbox."""

        class Short(ScriptedSink):
            async def send(self, batch: Any, retry: int) -> Any:
                outcomes = await super().send(batch, retry)
                return list(outcomes)[:-1]

        async with bench(tmp_path, Short(clock=FakeClock())) as b:
            await b.enqueue(range(3))
            with pytest.raises(RuntimeError, match="returned 2 outcomes for 3 messages"):
                await drive(b, asyncio.create_task(b.drain()))
            assert len(await b.rows()) == 3


class TestCounters:
    async def test_counters_equal_what_happened(self, tmp_path: Path) -> None:
        """stats.sent, stats.failures by reason, stats.dead_by_reason and stats.dead_letters
        count exactly the outcomes the sink gave."""
        async with bench(tmp_path, max_age=3600.0) as b:
            b.sink.fail(msg_id(0), Retry("http_5xx"), times=2)
            b.sink.fail(msg_id(1), Retry("timeout"), times=1)
            b.sink.reject(msg_id(2), "http_400")
            b.sink.reject(msg_id(3), "too_large")
            b.sink.fail(msg_id(4), Reject("http_400"), times=1)
            await b.enqueue(range(7))
            assert await drive(b, asyncio.create_task(b.drain())) == 0
            stats = b.sender.stats
            assert stats.sent == 4  # 0, 1, 5, 6
            assert stats.failures == {"http_5xx": 2, "timeout": 1}
            assert stats.dead_by_reason == {"http_400": 2, "too_large": 1}
            assert stats.dead_letters == 3
            assert stats.requests == len(b.sink.requests)
            assert sorted(d.message_id or "" for d in await b.dead()) == [
                msg_id(2),
                msg_id(3),
                msg_id(4),
            ]
