"""The sender: outbox -> an `HttpSink`, deleting each message only once the endpoint acknowledged
it (SPEC §4 "All HTTP sinks", §5.2).

- Rows are read in commit order past a cursor into the batcher; a batch is due at
  `batch.max_events` or `batch.max_wait` after its oldest message arrived (at once while
  draining), and leaves in requests cut to the sink's limits.
- Up to `sink.concurrency` requests are in flight; a message is never in two at once (the cursor
  only moves forward; a retried message waits in memory for its due time, not in the outbox scan).
- A finished request's outcomes are judged at once (its holds take effect before the next request
  starts) and written in one transaction per group of requests finishing together (`_apply`):
  Delivered rows are deleted, Reject rows move to the dead letters, Retry rows count an attempt
  and come back after a capped, jittered backoff — until `retry.max_age` after their first
  failure, then they are dead-lettered `expired`. A Pause, or a Retry with a `Retry-After`, holds
  every request of the sink until it is over; a Pause never dead-letters anything.
- After a crash, what was in flight is still in the outbox and is sent again with the same bytes
  (messageId, and the stamp written with the row): at-least-once, never lost.

Time is injected (`Clock`), so linger, backoff and `Retry-After` are tested on a fake clock.
"""

from __future__ import annotations

import asyncio
import heapq
import sqlite3
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
import structlog

from agent.config.schema import BatchConfig, RetryConfig
from agent.errors import StateError
from agent.sinks.backoff import Backoff, Clock, SystemClock
from agent.sinks.base import Delivered, HttpSink, OutboxMessage, Outcome, Pause, Reject, Retry
from agent.sinks.batcher import Batcher
from agent.state import meta, outbox
from agent.state.db import transaction

log = structlog.get_logger("trackd.sender")
T = TypeVar("T")

#: Rows read from the outbox per look (beyond what the batcher needs to fill a batch).
FETCH = 2000
#: Outcome logs of one kind are written at most this often (counters count every one).
LOG_EVERY = 60.0

#: Runs a function on the sender's database thread.
OnDb = Callable[..., Awaitable[Any]]


@dataclass(slots=True)
class SenderStats:
    """What the sender did, for metrics, `status` and summaries (counts only, never values)."""

    sent: int = 0
    dead_letters: int = 0
    #: `trackd_send_failures_total{reason}`: one per failed message attempt.
    failures: Counter[str] = field(default_factory=Counter)
    dead_by_reason: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    #: Wall time of the last acknowledged delivery.
    last_delivery: float | None = None
    #: Why the sink is held right now (`Retry-After`, a Pause), or None.
    paused: str | None = None
    #: Since when (monotonic) the sink has been failing without a success, or None.
    failing_since: float | None = None


@dataclass(order=True, slots=True)
class _Due:
    due: float
    row_id: int
    row: outbox.Row = field(compare=False)


@dataclass(slots=True)
class _Acked:
    """A finished request's outcomes, judged (`Sender._judge`), waiting for their transaction."""

    rows: Sequence[outbox.Row]
    delivered: list[int]
    retried: list[int]
    rejected: list[tuple[int, str, str]]
    #: Rows to send again, and when (before the hold that may come by then).
    later: list[tuple[outbox.Row, float]]


class Sender:
    """Delivers the outbox through one `HttpSink`."""

    def __init__(
        self,
        sink: HttpSink,
        conn: sqlite3.Connection,
        on_db: OnDb,
        *,
        batch: BatchConfig,
        retry: RetryConfig,
        concurrency: int,
        clock: Clock | None = None,
        backoff: Backoff | None = None,
        level: outbox.Level | None = None,
    ) -> None:
        self.sink = sink
        self._conn = conn
        self._on_db = on_db
        self._clock = clock or SystemClock()
        self._concurrency = concurrency
        self._max_age = retry.max_age
        self._backoff = backoff or Backoff(retry.initial_backoff, retry.max_backoff)
        self._max_backoff = retry.max_backoff
        self.batcher: Batcher[outbox.Row] = Batcher(
            batch.max_events, batch.max_wait, self._clock.monotonic, size=lambda r: len(r.body)
        )
        self.stats = SenderStats()
        self._cursor = 0
        self._exhausted = False
        self._retries: list[_Due] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self._acks: list[_Acked] = []
        #: A task is writing outcomes (`_apply`): acks that arrive meanwhile wait for it.
        self._applying = False
        self._wake = asyncio.Event()
        self._held_until = 0.0
        self._pauses = 0
        #: Requests in a row that failed as a whole (a Retry, nothing delivered): from the second,
        #: every request of the sink waits a backoff, so a down endpoint is probed, not hammered.
        self._failed_in_row = 0
        self._logged: dict[str, float] = {}
        self._failure: BaseException | None = None
        #: The outbox's fill, shared with the pipeline (backpressure); None when not tracked.
        self.level = level

    # -- wake-ups --------------------------------------------------------------------------

    def notify(self) -> None:
        """New rows were committed (call on the event loop)."""
        self._exhausted = False
        self._wake.set()

    # -- the loop --------------------------------------------------------------------------

    async def run(self, finish: asyncio.Event, grace: float | None) -> int:
        """Deliver until `finish` is set and then until the outbox is empty, or `grace`
        seconds after `finish` (then what is in flight is cancelled: it stays in the outbox).
        Returns the messages left undelivered in memory's view (0: all done)."""
        clock = self._clock
        deadline: float | None = None
        # `finish` wakes the loop like a commit does (an idle sender waits on `_wake` only).
        finishing = asyncio.ensure_future(finish.wait())
        finishing.add_done_callback(lambda _f: self._wake.set())
        try:
            while True:
                if self._failure is not None:
                    raise self._failure
                if finish.is_set() and deadline is None:
                    deadline = clock.monotonic() + (grace if grace is not None else 0.0)
                draining = finish.is_set()
                if draining and self._done():
                    return 0
                now = clock.monotonic()
                if deadline is not None and now >= deadline and grace is not None:
                    return await self._give_up()
                self._wake.clear()
                await self._fill(now)
                dispatched = self._dispatch(flush=draining)
                if dispatched:
                    continue
                await self._wait(deadline if grace is not None else None)
        finally:
            finishing.cancel()
            await self._settle()

    def _done(self) -> bool:
        return (
            self._exhausted
            and not self.batcher
            and not self._retries
            and not self._in_flight
            and not self._acks
        )

    async def _fill(self, now: float) -> None:
        """Due retries to the front of the batcher; new outbox rows to its back."""
        due: list[outbox.Row] = []
        while self._retries and self._retries[0].due <= now:
            due.append(heapq.heappop(self._retries).row)
        self.batcher.push_front(due)
        want = self._want()
        if self._exhausted or len(self.batcher) >= want:
            return
        # Exhausted unless the fetch comes back full — or a commit's notify() arrives while it
        # runs: that commit may be newer than the fetch's snapshot, so it must not be lost.
        self._exhausted = True
        rows = await self._db(self._fetch, max(FETCH, want))
        if rows:
            for row in rows:
                self.batcher.add(row)
        if len(rows) >= max(FETCH, want):
            self._exhausted = False

    def _want(self) -> int:
        """How many rows the batcher holds at most: a batch, and a request per free slot."""
        return self.batcher.max_events + self._concurrency * self.sink.max_request_messages

    def _dispatch(self, *, flush: bool) -> int:
        """Start requests while there is room, the sink is not held, and a batch is due."""
        started = 0
        sink = self.sink
        while (
            len(self._in_flight) < self._concurrency
            and self._clock.monotonic() >= self._held_until
            and self.batcher.ready(flush=flush)
        ):
            rows = self.batcher.take(sink.max_request_messages, sink.max_request_bytes)
            task = asyncio.ensure_future(self._request(rows))
            self._in_flight.add(task)
            task.add_done_callback(self._finished)
            started += 1
        return started

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if not task.cancelled() and task.exception() is not None and self._failure is None:
            # The state refused an acknowledgement (or a sink broke its contract): `run` raises
            # it; the rows are still in the outbox and are sent again after a restart.
            self._failure = task.exception()
        self._wake.set()

    async def _request(self, rows: list[outbox.Row]) -> None:
        batch: list[OutboxMessage] = rows
        self.stats.requests += 1
        try:
            outcomes = await self.sink.send(batch, max(r.attempts for r in rows))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a sink must not raise; if one does, nothing is lost
            log.exception("sink_send_crashed", sink=self.sink.name, error=type(exc).__name__)
            outcomes = [Retry("connect", f"the sink failed: {type(exc).__name__}")] * len(rows)
        if len(outcomes) != len(rows):
            raise RuntimeError(
                f"sink {self.sink.name} returned {len(outcomes)} outcomes for {len(rows)} messages"
            )
        self._acks.append(self._judge(rows, outcomes, self._clock.time()))
        await self._apply()

    async def _wait(self, deadline: float | None) -> None:
        """Until something can change: a commit, a request done, a hold over, a retry due, the
        linger, or the drain deadline."""
        clock = self._clock
        held = self._held_until > clock.monotonic()
        when = [self._held_until] if held else []
        if self._retries:
            when.append(self._retries[0].due)
        linger = self.batcher.deadline()
        # A due batch that cannot go (held, or no free slot) waits for the hold or a finished
        # request, not for its (past) linger: that would be a busy loop.
        if linger is not None and not held and len(self._in_flight) < self._concurrency:
            when.append(linger)
        if deadline is not None:
            when.append(deadline)
        if not self._exhausted and not held and len(self.batcher) < self._want():
            return  # more rows to read
        timeout = max(0.0, min(when) - clock.monotonic()) if when else None
        waiter = asyncio.ensure_future(self._wake.wait())
        sleeper = asyncio.ensure_future(clock.sleep(timeout)) if timeout is not None else None
        try:
            await asyncio.wait(
                {waiter} if sleeper is None else {waiter, sleeper},
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            waiter.cancel()
            if sleeper is not None:
                sleeper.cancel()

    # -- outcomes --------------------------------------------------------------------------

    async def _apply(self) -> None:
        """Write every judged request's outcomes in one transaction (then their rows are gone,
        dead-lettered, or waiting to be retried). While one is being written, requests that
        finish only add theirs (already judged: their holds are in force): the writing task
        takes them next, in one transaction more — a group commit; a sink of one message per
        request (Kissmetrics) would otherwise pay a transaction per message."""
        if self._applying:
            return
        self._applying = True
        try:
            while self._acks:
                await self._apply_acks()
        finally:
            self._applying = False

    async def _apply_acks(self) -> None:
        acks, self._acks = self._acks, []
        delivered = [i for a in acks for i in a.delivered]
        retried = [i for a in acks for i in a.retried]
        rejected = [r for a in acks for r in a.rejected]
        stats = self.stats
        try:
            await self._db(self._write_outcomes, delivered, retried, rejected, self._clock.time())
        except sqlite3.Error as exc:
            # Not recorded: those messages stay in the outbox and are sent again (at least once).
            log.error("outbox_ack_failed", error=str(exc), messages=len(delivered) + len(rejected))
            raise StateError(
                f"delivered messages but could not record it in the state database: {exc} "
                "(they will be sent again)"
            ) from exc
        stats.sent += len(delivered)
        stats.dead_letters += len(rejected)
        if self.level is not None and (delivered or rejected):
            gone = {*delivered, *(row_id for row_id, _, _ in rejected)}
            size = sum(len(r.body) for a in acks for r in a.rows if r.id in gone)
            self.level.remove(len(gone), size)
        if delivered:
            stats.last_delivery = self._clock.time()
        for row, due in (item for a in acks for item in a.later):
            heapq.heappush(self._retries, _Due(max(due, self._held_until), row.id, row))

    def _judge(
        self, rows: Sequence[outbox.Row], outcomes: Sequence[Outcome], wall: float
    ) -> _Acked:
        """What a finished request's outcomes mean, decided at once: holds (Retry-After, a
        pause, the sink-wide breaker) take effect before the next request can start; the
        outbox changes wait for `_apply`'s next transaction."""
        delivered: list[int] = []
        retried: list[int] = []
        rejected: list[tuple[int, str, str]] = []
        later: list[tuple[outbox.Row, float]] = []
        now_mono = self._clock.monotonic()
        stats = self.stats
        # One backoff per request: its retried messages come back together, as one batch.
        delay = self._backoff.delay(max(r.attempts for r in rows))
        for row, outcome in zip(rows, outcomes, strict=True):
            if isinstance(outcome, Delivered):
                delivered.append(row.id)
            elif isinstance(outcome, Reject):
                rejected.append((row.id, outcome.reason, outcome.detail))
                stats.dead_by_reason[outcome.reason] += 1
                self._log_once(
                    f"reject:{outcome.reason}",
                    "messages_dead_lettered",
                    reason=outcome.reason,
                    detail=outcome.detail,
                )
            elif isinstance(outcome, Retry):
                stats.failures[outcome.reason] += 1
                first = row.first_attempt if row.first_attempt is not None else wall
                if wall - first >= self._max_age:
                    rejected.append(
                        (
                            row.id,
                            "expired",
                            f"still failing after {self._max_age:.0f}s: {outcome.detail}",
                        )
                    )
                    stats.dead_by_reason["expired"] += 1
                    continue
                retried.append(row.id)
                if outcome.after is not None:
                    self._hold(
                        min(outcome.after, self._max_backoff),
                        f"retry-after ({outcome.reason})",
                        now_mono,
                    )
                    delay = max(delay, self._held_until - now_mono)
                later.append(
                    (
                        row._replace(attempts=row.attempts + 1, first_attempt=first),
                        now_mono + delay,
                    )
                )
                self._log_once(
                    f"retry:{outcome.reason}",
                    "send_retried",
                    reason=outcome.reason,
                    detail=outcome.detail,
                    backoff_s=round(delay, 2),
                )
            elif isinstance(outcome, Pause):
                stats.failures[outcome.reason] += 1
                later.append((row, 0.0))
        self._note_pause(outcomes, now_mono)
        self._note_failed_request(outcomes, now_mono)
        return _Acked(rows, delivered, retried, rejected, later)

    def _write_outcomes(
        self,
        delivered: list[int],
        retried: list[int],
        rejected: list[tuple[int, str, str]],
        now: float,
    ) -> None:
        with transaction(self._conn):
            if delivered:
                outbox.delete(self._conn, delivered)
            if retried:
                outbox.note_attempts(self._conn, retried, now)
            if rejected:
                outbox.dead_letter(self._conn, self.sink.name, rejected, now)
            meta.put(self._conn, meta.DELIVERY, self._status_json())

    def _status_json(self) -> str:
        """What `trackd status` shows of delivery (another process reads it from the state)."""
        stats = self.stats
        failing = stats.failing_since
        return orjson.dumps(
            {
                "sink": self.sink.name,
                "sent": stats.sent,
                "dead_letters": stats.dead_letters,
                "last_delivery": stats.last_delivery,
                "held": stats.paused if self._held_until > self._clock.monotonic() else None,
                "failing_for_s": None if failing is None else self._clock.monotonic() - failing,
                "failures": dict(stats.failures),
                "written": self._clock.time(),
            }
        ).decode()

    def _note_pause(self, outcomes: Sequence[Outcome], now: float) -> None:
        pause = next((o for o in outcomes if isinstance(o, Pause)), None)
        ok = any(isinstance(o, Delivered) for o in outcomes)
        stats = self.stats
        if pause is not None:
            self._pauses += 1
            wait = pause.after if pause.after is not None else self._backoff.delay(self._pauses)
            self._hold(
                min(wait, self._max_backoff), f"sink refused: {pause.detail or pause.reason}", now
            )
            self._log_once(
                f"pause:{pause.reason}",
                "sink_rejected",
                reason=pause.reason,
                detail=pause.detail,
                retry_in_s=round(self._held_until - now, 1),
            )
            if stats.failing_since is None:
                stats.failing_since = now
        elif ok:
            self._pauses = 0
            stats.failing_since = None
            if self._held_until <= now:
                stats.paused = None
        elif any(isinstance(o, Retry) for o in outcomes) and stats.failing_since is None:
            stats.failing_since = now

    def _note_failed_request(self, outcomes: Sequence[Outcome], now: float) -> None:
        """The sink-wide breaker: each message backs off on its own, but with many messages
        waiting that alone would still send a request per message and attempt. From the second
        failed round in a row, every request waits the backoff of that many rounds (capped at
        retry.max_backoff); the first delivered message ends it."""
        if any(isinstance(o, Delivered) for o in outcomes):
            self._failed_in_row = 0
            return
        retry = next((o for o in outcomes if isinstance(o, Retry)), None)
        if retry is None or now < self._held_until:
            return  # requests sent together fail together: one round, one step of the backoff
        self._failed_in_row += 1
        if self._failed_in_row >= 2:
            self._hold(
                self._backoff.delay(self._failed_in_row - 1),
                f"endpoint failing ({retry.reason}), {self._failed_in_row} requests in a row",
                now,
            )

    def _hold(self, seconds: float, why: str, now: float) -> None:
        until = now + max(0.0, seconds)
        if until > self._held_until:
            self._held_until = until
            self.stats.paused = why

    def _log_once(self, key: str, event: str, **fields: Any) -> None:
        """One log line per kind of outcome per minute (the counters count every one)."""
        now = self._clock.monotonic()
        last = self._logged.get(key)
        if last is not None and now - last < LOG_EVERY:
            return
        self._logged[key] = now
        log.warning(event, sink=self.sink.name, **fields)

    # -- ending ----------------------------------------------------------------------------

    async def _give_up(self) -> int:
        """The drain deadline passed: cancel what is in flight (it stays in the outbox)."""
        left = len(self.batcher) + len(self._retries) + len(self._in_flight)
        for task in list(self._in_flight):
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        await self._apply()
        return max(left, 1)

    async def _settle(self) -> None:
        for task in list(self._in_flight):
            task.cancel()
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        if self._acks:
            await self._apply()

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        result: T = await self._on_db(fn, *args)
        return result

    async def depth(self) -> outbox.Depth:
        """What the outbox holds now (messages, bytes, oldest)."""
        return await self._db(outbox.depth, self._conn)

    def _fetch(self, limit: int) -> list[outbox.Row]:
        """Database thread (like every change of the cursor, so they never race)."""
        rows = outbox.fetch(self._conn, self._cursor, limit)
        if rows:
            self._cursor = rows[-1].id
        return rows

    def __repr__(self) -> str:
        return (
            f"Sender(sink={self.sink.name}, in_flight={len(self._in_flight)}, "
            f"pending={len(self.batcher)}, retrying={len(self._retries)})"
        )
