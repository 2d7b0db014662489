"""Backoff and time for the sinks: capped exponential backoff with full jitter, and the `Clock`.

`Backoff.delay(attempt)` is uniform in `[0, min(maximum, initial * 2**attempt))` ("full jitter",
the AWS architecture blog's "Exponential Backoff And Jitter"): retries of many requests spread
out instead of arriving together. The random source is injected so tests are deterministic.

Time is injected too (CONVENTIONS.md, after trio's `MockClock`): code that waits takes a `Clock`,
production passes `SystemClock()`, tests pass a `FakeClock` and move time with `advance()`, so
backoff, linger and `Retry-After` are tested without waiting. `FakeClock` lives here, not in
tests/, because the tests of every module that waits use it.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random as _random
import time as _time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["Backoff", "Clock", "FakeClock", "SystemClock"]


class Backoff:
    """Capped exponential backoff with full jitter.

    `delay(attempt)` = `random() * min(maximum, initial * 2**attempt)`: attempt 0 waits up to
    `initial`, each further attempt doubles the ceiling until it reaches `maximum`. `random` must
    return floats in `[0, 1)` (the default is `random.random`; jitter is not a secret)."""

    __slots__ = ("_random", "initial", "maximum")

    def __init__(
        self, initial: float, maximum: float, random: Callable[[], float] = _random.random
    ) -> None:
        if not (initial >= 0 and maximum >= 0):  # also refuses NaN
            raise ValueError(
                f"backoff bounds must be >= 0 (initial={initial!r}, maximum={maximum!r})"
            )
        self.initial = float(initial)
        self.maximum = float(maximum)
        self._random = random

    def ceiling(self, attempt: int) -> float:
        """The largest delay `attempt` can draw: `min(maximum, initial * 2**attempt)`.

        Negative attempts count as 0. Safe for any attempt number: `2**attempt` is never built
        as a float, so attempt 10**9 gives `maximum` instead of an `OverflowError`."""
        if attempt <= 0:
            return min(self.maximum, self.initial)
        try:
            grown = math.ldexp(self.initial, attempt)
        except OverflowError:
            return self.maximum
        return min(self.maximum, grown)

    def delay(self, attempt: int) -> float:
        """A jittered delay in seconds for the `attempt`-th retry (0 = the first retry)."""
        return self._random() * self.ceiling(attempt)

    def __repr__(self) -> str:
        return f"Backoff(initial={self.initial:g}, maximum={self.maximum:g})"


class Clock(Protocol):
    """The time a component sees: a monotonic clock for durations, the wall clock for what
    leaves the process (`sentAt`, `Retry-After` dates), and a way to wait."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (durations, deadlines)."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch (UTC)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` (<= 0: just yield to the event loop). Cancellable."""
        ...


class SystemClock:
    """The real clock: `time.monotonic`, `time.time`, `asyncio.sleep`."""

    __slots__ = ()

    def monotonic(self) -> float:
        return _time.monotonic()

    def time(self) -> float:
        return _time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "SystemClock()"


@dataclass(order=True, slots=True)
class _Sleeper:
    deadline: float
    seq: int
    future: asyncio.Future[None] = field(compare=False)


class FakeClock:
    """A clock that only moves when a test says so.

    `sleep(s)` parks the calling task on a future until `advance()` moves the clock to or past
    its deadline; `advance(s)` jumps the clock and wakes every due sleeper in deadline order
    (ties: the order they went to sleep), so runs are deterministic. The woken tasks run once
    the test yields to the event loop (e.g. `await asyncio.sleep(0)` or awaiting the task), and
    they all see the clock at its new value: `advance(10)` is a jump, not ten steps — a task
    that wakes at 2 and sleeps 3 more waits until 13. To step through deadlines one by one, use
    `next_deadline()` and advance to it.

    A cancelled sleeper is removed at once (`pending_sleepers()` stops counting it). Use one
    FakeClock from one event loop thread; it is not thread-safe."""

    __slots__ = ("_now", "_seq", "_sleepers", "_waiters", "_wall_offset")

    def __init__(self, start: float = 0.0, wall: float = 1_700_000_000.0) -> None:
        """`start`: the initial `monotonic()`; `wall`: the initial `time()` (both move together)."""
        self._now = float(start)
        self._wall_offset = float(wall) - self._now
        self._sleepers: list[_Sleeper] = []
        self._seq = itertools.count()
        # Futures of `wait_for_sleepers` calls, resolved whenever a new sleeper arrives.
        self._waiters: list[asyncio.Future[None]] = []

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        if not seconds > 0:  # <= 0 or NaN: behave like asyncio.sleep(0)
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        sleeper = _Sleeper(self._now + seconds, next(self._seq), future)
        self._sleepers.append(sleeper)
        self._notify_waiters()
        try:
            await future
        finally:
            # Cancelled (or woken and already removed by `advance`): never leave it behind.
            if not future.done():
                future.cancel()
            self._discard(sleeper)

    def advance(self, seconds: float) -> None:
        """Move the clock forward by `seconds` (>= 0) and wake every sleeper now due."""
        if not seconds >= 0:
            raise ValueError(f"a clock cannot go back (advance({seconds!r}))")
        self._now += seconds
        due = sorted(s for s in self._sleepers if s.deadline <= self._now)
        for sleeper in due:
            self._discard(sleeper)
            if not sleeper.future.done():
                sleeper.future.set_result(None)

    def advance_to(self, when: float) -> None:
        """Move the clock to the monotonic time `when` (not before now)."""
        self.advance(max(0.0, when - self._now))

    def pending_sleepers(self) -> int:
        """How many tasks are sleeping on this clock now (cancelled ones excluded)."""
        return sum(1 for s in self._sleepers if not s.future.done())

    def next_deadline(self) -> float | None:
        """The earliest deadline of a sleeping task, or None when nobody sleeps."""
        live = [s.deadline for s in self._sleepers if not s.future.done()]
        return min(live) if live else None

    async def wait_for_sleepers(self, n: int = 1, within: float = 5.0) -> None:
        """Return once at least `n` tasks sleep on this clock; the code under test may do real
        work first (threads, sockets), so this waits up to `within` real seconds, then raises
        `TimeoutError`. Event-driven: it wakes when a sleeper arrives, it does not poll."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(within):
                while self.pending_sleepers() < n:
                    waiter: asyncio.Future[None] = loop.create_future()
                    self._waiters.append(waiter)
                    try:
                        await waiter
                    finally:
                        if waiter in self._waiters:
                            self._waiters.remove(waiter)
        except TimeoutError:
            raise TimeoutError(
                f"{self.pending_sleepers()} task(s) sleeping on the FakeClock after {within:g}s,"
                f" expected {n}"
            ) from None

    def _notify_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _discard(self, sleeper: _Sleeper) -> None:
        try:
            self._sleepers.remove(sleeper)
        except ValueError:
            pass

    def __repr__(self) -> str:
        return f"FakeClock(monotonic={self._now:g}, sleepers={self.pending_sleepers()})"
