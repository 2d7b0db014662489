"""Backoff (capped exponential, full jitter) and the clocks of agent/sinks/backoff.py."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterator

import pytest

from agent.sinks.backoff import Backoff, Clock, FakeClock, SystemClock

pytestmark = pytest.mark.timeout(10)


def constant(value: float) -> Callable[[], float]:
    return lambda: value


class TestBackoff:
    def test_first_attempt_waits_at_most_initial(self) -> None:
        """Attempt 0 draws from [0, initial)."""
        b = Backoff(2.0, 300.0, random=constant(0.999))
        assert b.delay(0) == pytest.approx(2.0 * 0.999)

    def test_ceiling_doubles_per_attempt(self) -> None:
        """The ceiling is initial * 2**attempt while below the cap."""
        b = Backoff(1.0, 1000.0)
        assert [b.ceiling(a) for a in range(6)] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]

    def test_ceiling_is_capped_at_maximum(self) -> None:
        """Past the cap the ceiling stays at maximum."""
        b = Backoff(1.0, 300.0)
        assert b.ceiling(8) == 256.0
        assert b.ceiling(9) == 300.0
        assert b.ceiling(60) == 300.0

    def test_huge_attempt_numbers_do_not_overflow(self) -> None:
        """Attempt numbers far beyond float range give the maximum, not OverflowError."""
        b = Backoff(1.0, 300.0, random=constant(0.5))
        for attempt in (1023, 1024, 10_000, 10**9, 10**100):
            assert b.delay(attempt) == 150.0

    def test_delay_is_random_times_ceiling(self) -> None:
        """delay = random() * ceiling: the injected source decides the point in the range."""
        b = Backoff(1.0, 300.0, random=constant(0.25))
        assert b.delay(3) == 2.0

    def test_zero_draw_gives_zero_delay(self) -> None:
        """Full jitter reaches down to 0 (no floor)."""
        assert Backoff(1.0, 300.0, random=constant(0.0)).delay(5) == 0.0

    def test_jittered_delays_stay_within_bounds(self) -> None:
        """With a real random source every delay is in [0, ceiling)."""
        b = Backoff(0.5, 30.0, random=random.Random(7).random)
        for attempt in range(12):
            ceiling = b.ceiling(attempt)
            draws = [b.delay(attempt) for _ in range(500)]
            assert all(0.0 <= d < ceiling for d in draws)
            assert max(draws) > 0.9 * ceiling  # the whole range is used, not a fixed point

    def test_same_random_source_gives_same_delays(self) -> None:
        """Two backoffs with equally seeded sources produce identical sequences."""
        a = Backoff(1.0, 60.0, random=random.Random(42).random)
        b = Backoff(1.0, 60.0, random=random.Random(42).random)
        assert [a.delay(n) for n in range(20)] == [b.delay(n) for n in range(20)]

    def test_negative_attempt_counts_as_first(self) -> None:
        """A negative attempt number is treated as attempt 0."""
        assert Backoff(3.0, 300.0).ceiling(-5) == 3.0

    def test_maximum_below_initial_caps_the_first_attempt(self) -> None:
        """maximum wins even over initial."""
        assert Backoff(10.0, 4.0).ceiling(0) == 4.0

    @pytest.mark.parametrize(("initial", "maximum"), [(-1.0, 10.0), (1.0, -1.0), (float("nan"), 1)])
    def test_rejects_negative_or_nan_bounds(self, initial: float, maximum: float) -> None:
        """Bounds below zero (or NaN) are refused at construction."""
        with pytest.raises(ValueError, match="backoff bounds"):
            Backoff(initial, maximum)


class TestSystemClock:
    def test_is_a_clock(self) -> None:
        """SystemClock satisfies the Clock protocol."""
        clock: Clock = SystemClock()
        assert isinstance(clock.monotonic(), float)

    def test_wall_clock_is_time_time(self) -> None:
        """time() is the real wall clock."""
        assert abs(SystemClock().time() - time.time()) < 1.0

    def test_monotonic_never_goes_back(self) -> None:
        """monotonic() is non-decreasing."""
        clock = SystemClock()
        first = clock.monotonic()
        assert clock.monotonic() >= first

    @pytest.mark.anyio
    async def test_sleep_waits_real_time(self) -> None:
        """sleep() really waits (and a negative duration returns at once)."""
        clock = SystemClock()
        start = time.monotonic()
        await clock.sleep(-1)
        await clock.sleep(0.02)
        assert time.monotonic() - start >= 0.015


@pytest.fixture
def clock() -> Iterator[FakeClock]:
    yield FakeClock(start=100.0, wall=1_700_000_000.0)


async def sleep_then_record(clock: FakeClock, seconds: float, label: str, log: list[str]) -> None:
    await clock.sleep(seconds)
    log.append(label)


def sleeper(clock: FakeClock, seconds: float, label: str, log: list[str]) -> asyncio.Task[None]:
    """A task sleeping `seconds` on `clock`, then appending `label` to `log`."""
    return asyncio.create_task(sleep_then_record(clock, seconds, label, log))


async def asleep(
    clock: FakeClock, log: list[str], *specs: tuple[float, str]
) -> list[asyncio.Task[None]]:
    """One `sleeper` per (seconds, label) of `specs`, returned once all of them sleep."""
    tasks = [sleeper(clock, seconds, label, log) for seconds, label in specs]
    await clock.wait_for_sleepers(len(tasks))
    return tasks


async def wake(clock: FakeClock, seconds: float, tasks: list[asyncio.Task[None]]) -> None:
    """Advance `clock` by `seconds`, then wait for `tasks` to finish."""
    clock.advance(seconds)
    await asyncio.gather(*tasks)


class TestFakeClock:
    def test_is_a_clock(self, clock: FakeClock) -> None:
        """FakeClock satisfies the Clock protocol and starts where it was told."""
        c: Clock = clock
        assert (c.monotonic(), c.time()) == (100.0, 1_700_000_000.0)

    def test_advance_with_no_sleepers_moves_both_clocks(self, clock: FakeClock) -> None:
        """advance() with nobody sleeping just moves monotonic and wall time together."""
        clock.advance(2.5)
        assert (clock.monotonic(), clock.time()) == (102.5, 1_700_000_002.5)
        assert clock.pending_sleepers() == 0

    def test_advance_refuses_going_back(self, clock: FakeClock) -> None:
        """A negative advance is an error, not time travel."""
        with pytest.raises(ValueError, match="cannot go back"):
            clock.advance(-1)

    @pytest.mark.anyio
    async def test_sleeper_wakes_only_at_its_deadline(self, clock: FakeClock) -> None:
        """A sleeper stays asleep until the clock reaches its deadline."""
        log: list[str] = []
        task = sleeper(clock, 5, "woke", log)
        await clock.wait_for_sleepers(1)
        clock.advance(4.9)
        await asyncio.sleep(0)
        assert not task.done()
        assert clock.pending_sleepers() == 1
        clock.advance(0.1)
        await task
        assert log == ["woke"]
        assert clock.pending_sleepers() == 0

    @pytest.mark.anyio
    async def test_sleepers_wake_in_deadline_order(self, clock: FakeClock) -> None:
        """One advance past several deadlines wakes them earliest first, whatever the start order."""
        log: list[str] = []
        tasks = [sleeper(clock, s, label, log) for s, label in [(3, "c"), (1, "a"), (2, "b")]]
        await clock.wait_for_sleepers(3)
        await wake(clock, 10, tasks)
        assert log == ["a", "b", "c"]

    @pytest.mark.anyio
    async def test_equal_deadlines_wake_in_sleep_order(self, clock: FakeClock) -> None:
        """Ties are broken by the order the tasks went to sleep: runs are deterministic."""
        log: list[str] = []
        tasks = []
        for label in "xyz":
            tasks.append(sleeper(clock, 1, label, log))
            await clock.wait_for_sleepers(len(tasks))
        await wake(clock, 1, tasks)
        assert log == ["x", "y", "z"]

    @pytest.mark.anyio
    async def test_only_due_sleepers_wake(self, clock: FakeClock) -> None:
        """Sleepers whose deadline is still ahead keep sleeping after an advance."""
        log: list[str] = []
        early, late = await asleep(clock, log, (1, "early"), (10, "late"))
        await wake(clock, 5, [early])
        assert log == ["early"]
        assert clock.pending_sleepers() == 1
        assert clock.next_deadline() == 110.0
        await wake(clock, 5, [late])

    @pytest.mark.anyio
    async def test_cancelled_sleeper_is_removed(self, clock: FakeClock) -> None:
        """Cancelling a sleeping task removes its sleeper at once and for good."""
        task = asyncio.create_task(clock.sleep(5))
        await clock.wait_for_sleepers(1)
        task.cancel()
        assert clock.pending_sleepers() == 0
        with pytest.raises(asyncio.CancelledError):
            await task
        assert clock.pending_sleepers() == 0
        assert clock.next_deadline() is None
        clock.advance(10)  # nothing left to wake, nothing raises

    @pytest.mark.anyio
    async def test_cancelled_sleeper_does_not_disturb_others(self, clock: FakeClock) -> None:
        """Cancelling one of two sleepers leaves the other to wake normally."""
        log: list[str] = []
        doomed, kept = await asleep(clock, log, (1, "doomed"), (2, "kept"))
        doomed.cancel()
        await wake(clock, 3, [kept])
        with pytest.raises(asyncio.CancelledError):
            await doomed
        assert log == ["kept"]

    @pytest.mark.anyio
    async def test_advance_is_a_jump(self, clock: FakeClock) -> None:
        """A task woken by advance(10) sees the new time, so its next sleep starts from there."""
        woke_at: list[float] = []

        async def twice() -> None:
            await clock.sleep(2)
            woke_at.append(clock.monotonic())
            await clock.sleep(3)
            woke_at.append(clock.monotonic())

        task = asyncio.create_task(twice())
        await clock.wait_for_sleepers(1)
        clock.advance(10)
        await clock.wait_for_sleepers(1)
        assert clock.next_deadline() == 113.0
        clock.advance_to(113.0)
        await task
        assert woke_at == [110.0, 113.0]

    @pytest.mark.anyio
    async def test_zero_sleep_yields_without_sleeping(self, clock: FakeClock) -> None:
        """sleep(0) (or negative) returns after one loop turn and registers no sleeper."""
        await clock.sleep(0)
        await clock.sleep(-3)
        assert clock.pending_sleepers() == 0
        assert clock.monotonic() == 100.0

    @pytest.mark.anyio
    async def test_wait_for_sleepers_is_bounded(self, clock: FakeClock) -> None:
        """wait_for_sleepers raises TimeoutError when the sleepers never come."""
        with pytest.raises(TimeoutError, match="0 task\\(s\\) sleeping on the FakeClock"):
            await clock.wait_for_sleepers(1, within=0.05)

    @pytest.mark.anyio
    async def test_wait_for_sleepers_waits_for_real_work_first(self, clock: FakeClock) -> None:
        """A task that does real (threaded) work before sleeping is still waited for."""

        async def work_then_sleep() -> None:
            await asyncio.to_thread(time.sleep, 0.05)
            await clock.sleep(1)

        task = asyncio.create_task(work_then_sleep())
        await clock.wait_for_sleepers(1)
        clock.advance(1)
        await task
