"""An in-process harness for the product's own delivery path: a scripted `HttpSink`, and the real
`Daemon` / `run --once` around it (no subprocess, no socket).

`ScriptedSink` implements the `HttpSink` Protocol exactly and answers each message by a script:
a default outcome, then rules added by the test, first match wins:

    sink.fail(mid_or_predicate, Retry("http_5xx"), times=2)   # that message fails twice
    sink.reject(predicate, "http_400", "bad field")           # refused for good
    sink.fail_requests(Retry("http_5xx"), times=3)            # the next 3 requests fail whole
    sink.pause(times=2)                                       # the next 2 requests: Pause
    sink.retry_after(30, times=1)                             # the next request: 429 Retry-After
    sink.raise_on_send(RuntimeError("boom"), times=1)         # a sink that breaks its contract
    sink.slow(1.0)                                            # each request takes 1 s (clock's)
    sink.hang()                                               # requests never answer

It records every request and, per messageId, how often it was sent and how often it was
acknowledged; `wait_for_requests(n)` / `wait_for_delivered(n)` / `wait_for_in_flight(n)` await
an `asyncio.Event` set when the count is reached (no polling).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from agent.config import Config, load_config
from agent.ops.notify import Notifier
from agent.pipeline import once
from agent.runtime import Runtime
from agent.sinks.backoff import Clock, SystemClock
from agent.sinks.base import (
    DELIVERED,
    Delivered,
    FailureReason,
    OutboxMessage,
    Outcome,
    Pause,
    Reject,
    Retry,
)
from agent.sinks.registry import SinkParts
from agent.state import deadletters as dl
from agent.state import outbox
from agent.state.db import StatePaths, connect
from agent.supervisor import Daemon

T = TypeVar("T")

#: Which messages a rule applies to: a messageId, a predicate, or None (every message).
Match = str | Callable[[OutboxMessage], bool] | None


def mid(message: OutboxMessage) -> str:
    """The messageId of an outbox message (every message the pipeline writes has one)."""
    found = outbox.message_id(message.body)
    assert found is not None, message.body
    return found


def _matcher(match: Match) -> Callable[[OutboxMessage], bool]:
    if match is None:
        return lambda _m: True
    if isinstance(match, str):
        wanted = match
        return lambda m: mid(m) == wanted
    return match


@dataclass
class _Rule:
    """A per-message rule: `outcome` for matching messages, `times` times (None: forever)."""

    match: Callable[[OutboxMessage], bool]
    outcome: Outcome
    times: int | None


@dataclass
class _RequestRule:
    """A per-request rule: the next `times` requests answer every message with `outcome`."""

    outcome: Outcome
    times: int


@dataclass
class _Waiter:
    count: Callable[[], int]
    n: int
    event: asyncio.Event = field(default_factory=asyncio.Event)


class ScriptedSink:
    """A list-backed `HttpSink` answering by a script (see the module docstring)."""

    def __init__(
        self,
        *,
        name: str = "scripted",
        max_request_messages: int = 500,
        max_request_bytes: int | None = None,
        default: Outcome = DELIVERED,
        clock: Clock | None = None,
    ) -> None:
        self.name = name
        self.max_request_messages = max_request_messages
        self.max_request_bytes = max_request_bytes
        self.default = default
        #: The clock `slow()` sleeps on (give the sender's FakeClock to control it).
        self.clock: Clock = clock or SystemClock()
        #: Every request, in the order it started.
        self.requests: list[list[OutboxMessage]] = []
        #: The `retry` argument of each request.
        self.retry_counts: list[int] = []
        #: Per messageId: times sent / times answered Delivered.
        self.seen: Counter[str] = Counter()
        self.delivered: Counter[str] = Counter()
        #: Per messageId, every outcome given, in order.
        self.outcomes: dict[str, list[Outcome]] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        #: Requests that ended (answered, raised or cancelled).
        self.finished = 0
        #: messageIds that were in two requests in flight at once (must stay empty).
        self.overlaps: list[str] = []
        self.closed = 0
        self._flying: Counter[str] = Counter()
        self._rules: list[_Rule] = []
        self._request_rules: list[_RequestRule] = []
        self._raises: list[tuple[BaseException, int]] = []
        self._delay = 0.0
        self._hang: Callable[[OutboxMessage], bool] | None = None
        self._waiters: list[_Waiter] = []

    # -- the script ----------------------------------------------------------------------------

    def fail(self, match: Match, outcome: Outcome | None = None, *, times: int = 1) -> None:
        """Matching messages get `outcome` (default `Retry("http_5xx")`) `times` times, then the
        next rule or the default."""
        self._rules.append(_Rule(_matcher(match), outcome or Retry("http_5xx"), times))

    def reject(self, match: Match, reason: str = "http_400", detail: str = "") -> None:
        """Matching messages are refused for good (every time)."""
        self._rules.append(_Rule(_matcher(match), Reject(reason, detail), None))

    def fail_requests(self, outcome: Outcome, *, times: int) -> None:
        """The next `times` requests answer every message with `outcome`."""
        self._request_rules.append(_RequestRule(outcome, times))

    def pause(
        self,
        *,
        times: int = 1,
        reason: FailureReason = "http_4xx",
        detail: str = "401 Unauthorized",
    ) -> None:
        """The next `times` requests are refused as a whole (a wrong key: `Pause`)."""
        self.fail_requests(Pause(reason, detail), times=times)

    def retry_after(self, seconds: float, *, times: int = 1) -> None:
        """The next `times` requests get a 429 with `Retry-After: seconds`."""
        self.fail_requests(Retry("http_429", "429 Too Many Requests", after=seconds), times=times)

    def raise_on_send(self, exc: BaseException, *, times: int = 1) -> None:
        """The next `times` requests raise `exc` (a sink breaking its contract)."""
        self._raises.append((exc, times))

    def slow(self, seconds: float) -> None:
        """Each request takes `seconds` on `self.clock` before it is answered."""
        self._delay = seconds

    def hang(self, match: Match = None) -> None:
        """Requests carrying a matching message never answer (until cancelled)."""
        self._hang = _matcher(match)

    def heal(self) -> None:
        """Forget the script: from now on, every message gets the default outcome."""
        self._rules.clear()
        self._request_rules.clear()
        self._raises.clear()
        self._hang = None
        self._delay = 0.0

    # -- waiting -------------------------------------------------------------------------------

    def _wait(self, count: Callable[[], int], n: int) -> asyncio.Event:
        waiter = _Waiter(count, n)
        if count() >= n:
            waiter.event.set()
        else:
            self._waiters.append(waiter)
        return waiter.event

    def _check(self) -> None:
        for waiter in list(self._waiters):
            if waiter.count() >= waiter.n:
                waiter.event.set()
                self._waiters.remove(waiter)

    async def wait_for_requests(self, n: int) -> None:
        """Until `n` requests have started."""
        await self._wait(lambda: len(self.requests), n).wait()

    async def wait_for_answered(self, n: int) -> None:
        """Until `n` requests have been answered (any outcome)."""
        await self._wait(lambda: self.finished, n).wait()

    async def wait_for_delivered(self, n: int) -> None:
        """Until `n` distinct messages have been answered `Delivered`."""
        await self._wait(lambda: len(self.delivered), n).wait()

    async def wait_for_in_flight(self, n: int) -> None:
        """Until `n` requests are in flight at once."""
        await self._wait(lambda: self.in_flight, n).wait()

    # -- the HttpSink Protocol -----------------------------------------------------------------

    def describe(self) -> str:
        return "scripted sink (tests)"

    async def send(self, batch: Sequence[OutboxMessage], retry: int) -> Sequence[Outcome]:
        ids = [mid(m) for m in batch]
        self.requests.append(list(batch))
        self.retry_counts.append(retry)
        self.seen.update(ids)
        self.overlaps.extend(i for i in ids if self._flying[i])
        self._flying.update(ids)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self._check()
        try:
            if self._hang is not None and any(self._hang(m) for m in batch):
                await asyncio.Event().wait()  # until cancelled
            if self._delay > 0:
                await self.clock.sleep(self._delay)
            if self._raises:
                exc, times = self._raises[0]
                self._raises[0] = (exc, times - 1)
                if times <= 1:
                    self._raises.pop(0)
                raise exc
            outcomes = self._answer(batch)
            for i, outcome in zip(ids, outcomes, strict=True):
                self.outcomes.setdefault(i, []).append(outcome)
                if isinstance(outcome, Delivered):
                    self.delivered[i] += 1
            return outcomes
        finally:
            self.in_flight -= 1
            self._flying.subtract(ids)
            self.finished += 1
            self._check()

    def _answer(self, batch: Sequence[OutboxMessage]) -> list[Outcome]:
        if self._request_rules:
            whole = self._request_rules[0]
            whole.times -= 1
            if whole.times <= 0:
                self._request_rules.pop(0)
            return [whole.outcome] * len(batch)
        out: list[Outcome] = []
        for message in batch:
            for rule in self._rules:
                if (rule.times is None or rule.times > 0) and rule.match(message):
                    if rule.times is not None:
                        rule.times -= 1
                    out.append(rule.outcome)
                    break
            else:
                out.append(self.default)
        return out

    async def aclose(self) -> None:
        self.closed += 1

    # -- views ---------------------------------------------------------------------------------

    def ids_sent(self) -> list[str]:
        """Every messageId sent, in request order (repeats included)."""
        return [mid(m) for request in self.requests for m in request]

    def __repr__(self) -> str:
        return (
            f"ScriptedSink(requests={len(self.requests)}, delivered={len(self.delivered)}, "
            f"in_flight={self.in_flight})"
        )


# -- the daemon and run --once, in process ------------------------------------------------------


def as_config(config: Config | str | os.PathLike[str]) -> Config:
    """A `Config`, loaded (and validated) from a YAML path if one is given."""
    if isinstance(config, Config):
        return config
    return load_config(os.fspath(config))


def scripted_runtime(config: Config, sink: ScriptedSink, clock: Clock | None = None) -> Runtime:
    """The real runtime with `sink` in place of the configured one."""
    return Runtime(config, sink_factory=lambda _c: SinkParts(http=sink), clock=clock)


def _read_state(config: Config, fn: Callable[[sqlite3.Connection], T]) -> T:
    conn = connect(StatePaths(config.state_dir).db, readonly=True)
    try:
        return fn(conn)
    finally:
        conn.close()


class _Notifier(Notifier):
    """sd_notify without a socket: `ready()` and `stopping()` set events the harness awaits."""

    def __init__(self) -> None:
        super().__init__(address="")
        self.watchdog_interval = None
        self.is_ready = asyncio.Event()
        self.is_stopping = asyncio.Event()

    def ready(self, status: str) -> None:
        self.is_ready.set()

    def stopping(self) -> None:
        self.is_stopping.set()


async def _until_ready(notifier: _Notifier, task: asyncio.Task[int], within: float) -> None:
    """Wait up to `within` s for the daemon `task` to say READY; raise what made it fail if it
    ended first."""
    ready = asyncio.ensure_future(notifier.is_ready.wait())
    try:
        async with asyncio.timeout(within):
            await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        ready.cancel()
    if task.done():
        task.result()  # raises what made the daemon fail at start
        raise AssertionError("the daemon exited before it was ready")


@dataclass
class DaemonHandle:
    """A `Daemon` running in this event loop, fed to a `ScriptedSink`."""

    daemon: Daemon
    sink: ScriptedSink
    config: Config
    task: asyncio.Task[int]

    async def outbox_depth(self) -> int:
        """Messages in the outbox now (a separate read-only connection, off the event loop)."""
        depth = await asyncio.to_thread(_read_state, self.config, outbox.depth)
        return depth.messages

    async def outbox_ids(self) -> list[str | None]:
        """The messageIds in the outbox now, in delivery order."""

        def ids(conn: sqlite3.Connection) -> list[str | None]:
            return [outbox.message_id(r.body) for r in outbox.fetch(conn, 0, 1 << 30)]

        return await asyncio.to_thread(_read_state, self.config, ids)

    async def deadletters(self) -> list[dl.DeadLetter]:
        """The dead letters now (`trackd deadletters list`)."""
        return await asyncio.to_thread(_read_state, self.config, dl.listing)

    async def stop(self, within: float = 10.0) -> int:
        """`request_stop()` (what SIGTERM does) and wait for the daemon's exit code."""
        self.daemon.request_stop()
        async with asyncio.timeout(within):
            return await self.task


@contextlib.asynccontextmanager
async def run_daemon(
    config: Config | str | os.PathLike[str],
    sink: ScriptedSink,
    *,
    clock: Clock | None = None,
    ready_within: float = 10.0,
) -> AsyncIterator[DaemonHandle]:
    """`Daemon.run(signals=False)` as a task with `sink` in place of the configured sink, yielded
    once it is up (sources discovered and read once); on exit `request_stop()` and await it."""
    cfg = as_config(config)
    notifier = _Notifier()
    daemon = Daemon(cfg, notifier=notifier, rt=scripted_runtime(cfg, sink, clock))
    task = asyncio.create_task(daemon.run(signals=False))
    handle = DaemonHandle(daemon, sink, cfg, task)
    await _until_ready(notifier, task, ready_within)
    try:
        yield handle
    finally:
        if not task.done():
            await handle.stop()
        else:
            task.result()


@contextlib.asynccontextmanager
async def real_daemon(
    config: Config | str | os.PathLike[str], *, stop_within: float = 15.0
) -> AsyncIterator[Daemon]:
    """The real daemon (`Runtime(config)`: the sink the config names, built by `build_sink`) as a
    task, yielded once it is up; on exit `request_stop()` (SIGTERM's drain) and its exit code
    must be 0."""
    cfg = as_config(config)
    notifier = _Notifier()
    daemon = Daemon(cfg, notifier=notifier, rt=Runtime(cfg))
    task = asyncio.create_task(daemon.run(signals=False))
    await _until_ready(notifier, task, 10.0)
    try:
        yield daemon
    finally:
        daemon.request_stop()
        async with asyncio.timeout(stop_within):
            code = await task
        assert code == 0


async def run_once(
    config: Config | str | os.PathLike[str],
    sink: ScriptedSink,
    *,
    deliver_timeout: float,
    clock: Clock | None = None,
) -> int:
    """`trackd run --once` in process with `sink` in place of the configured sink: its exit code."""
    cfg = as_config(config)
    return await once.run_once(scripted_runtime(cfg, sink, clock), deliver_timeout)


def outbox_depth_at(state_dir: str | Path) -> int:
    """Messages in the outbox of a stopped agent's state (read-only)."""
    conn = connect(StatePaths(str(state_dir)).db, readonly=True)
    try:
        return outbox.depth(conn).messages
    finally:
        conn.close()
