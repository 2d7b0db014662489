"""The faults of the matrix (bench/faults.py). Each case gets a fresh work directory, runs the real
product against one fault and returns what it counted by line identity (bench/faults_count.py).

The product runs as it ships: `trackd run`, `run --once` and `backfill` as subprocesses (the
`Agent` of tests/sources/tailing.py, `run_trackd` of tests/helpers.py), or — where the fault must
be injected inside the process (a full disk under the sink file, a state commit refused) — the
real `Daemon` in process (`real_daemon` of tests/harness.py) with the injection points the tests
use (`DiskFull` of tests/sinks/test_file_faults.py, `StateFull` of tests/test_faults_state.py).
HTTP sinks talk to the real loopback receiver of tests/receiver.py; rotations are real
`logrotate`.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import itertools
import os
import random
import re
import signal
import subprocess
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest
from faults_count import (
    Tally,
    committed_ids_twice,
    file_sink,
    http_sink,
    seqs_in_log_bytes,
)

from tests.harness import outbox_depth_at, real_daemon
from tests.helpers import (
    committed_length,
    free_port,
    http_get,
    make_config,
    metric,
    outbox_bodies,
    read_messages,
    run_trackd,
    trackd_cmd,
    wait_until,
    write_access_log,
)
from tests.receiver import Receiver, Request, Response
from tests.sinks.test_file_faults import DiskFull
from tests.sources.tailing import Agent, Writer, logrotate
from tests.test_backfill import history, write_rotated
from tests.test_delivery import KEY_ENV, sink_settings
from tests.test_faults_state import StateFull

T = TypeVar("T")

#: The sink secrets the HTTP cases' configs name as `${ENV}`; set for every case's process.
ENV = KEY_ENV


@dataclass
class Ctx:
    """What a case gets: its work directory, the scale, and its own random generator."""

    work: Path
    quick: bool
    rng: random.Random

    def scale(self, quick: T, full: T) -> T:
        return quick if self.quick else full


@dataclass
class Result:
    """A case's count, a line on what it did, what went wrong besides duplicates and losses,
    and whether same-id re-sends are allowed (an HTTP sink after a crash or a cut-short drain:
    at-least-once, SPEC §5.2)."""

    tally: Tally
    note: str
    problems: list[str] = field(default_factory=list)
    resend_allowed: bool = False


@dataclass(frozen=True)
class Case:
    """A row of the matrix: `key` names it on the command line (`--only KEY`)."""

    key: str
    name: str
    sink: str
    run: Callable[[Ctx], Result]


def settle(pred: Callable[[], bool], timeout: float, what: str, problems: list[str]) -> bool:
    """Wait for `pred`; on timeout note it as a problem and go on to count what arrived."""
    try:
        wait_until(pred, timeout, what, every=0.05)
    except TimeoutError as exc:
        problems.append(str(exc))
        return False
    return True


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


def _depth_at_least(state: Path, n: int) -> bool:
    return depth(state) >= n


def depth(state: Path) -> int:
    """Messages in the outbox now (0 before the state exists)."""
    try:
        return outbox_depth_at(state)
    except Exception:  # noqa: BLE001 - no database yet, or being created
        return 0


def _final_run_once(agent: Agent, problems: list[str], timeout: float = 300) -> None:
    done = run_trackd("run", "--once", "-c", str(agent.cfg), timeout=timeout)
    if done.returncode != 0:
        problems.append(f"the final run --once exited {done.returncode}: {last_line(done.stderr)}")


def _stop(agent: Agent, problems: list[str], within: float | None = None) -> None:
    started = time.monotonic()
    code = agent.stop()
    took = time.monotonic() - started
    if code != 0:
        problems.append(f"SIGTERM: exit {code}: {last_line(agent.stderr())}")
    if within is not None and took > within:
        problems.append(f"SIGTERM: the drain took {took:.1f} s (allowed {within:.1f} s)")


def _clean_file_tail(out: Path, state: Path, problems: list[str]) -> None:
    """After a clean stop the sink file ends with a newline and is exactly its committed length."""
    if not out.exists():
        return
    data = out.read_bytes()
    if data and not data.endswith(b"\n"):
        problems.append("the sink file ends in a torn line")
    committed = committed_length(state, out)
    if committed != len(data):
        problems.append(f"sink file is {len(data)} bytes but the state committed {committed}")


def _file_result(agent: Agent, expected: Iterable[int], note: str, problems: list[str]) -> Result:
    """The count of a stopped agent's file sink, its tail checked (`_clean_file_tail`)."""
    _clean_file_tail(agent.out, agent.state, problems)
    return Result(file_sink(agent.out, expected), note, problems)


# -- kill -9 and SIGTERM of `trackd run` ---------------------------------------------------------


def _burst_then_kill(
    ctx: Ctx, agent: Agent, log: Path, first: int, lines: tuple[int, int], wait: tuple[float, float]
) -> int:
    """Start the agent (up), append a burst of `lines` lines to `log` from `first`, SIGKILL the
    agent `wait` seconds later (random in both); the next sequence number."""
    agent.start()
    burst = ctx.rng.randrange(*lines)
    write_access_log(log, first, burst)
    time.sleep(ctx.rng.uniform(*wait))  # a kill at an arbitrary instant
    agent.kill()
    return first + burst


def kill9_file(ctx: Ctx) -> Result:
    """SIGKILL of `trackd run` (file sink) at random instants: a third of the kills while it
    starts, the others while it reads a burst written once it is up; after each kill the
    committed output holds no messageId twice; a final `run --once` reads the rest."""
    log = ctx.work / "access.log"
    total = 5000
    write_access_log(log, 0, total)
    agent = Agent(ctx.work, [str(log)])
    kills, starting, behind, problems = ctx.scale(3, 14), 0, 0, []
    try:
        for i in range(kills):
            if ctx.rng.random() < 1 / 3:
                starting += 1
                agent.start(wait_ready=False)
                time.sleep(ctx.rng.uniform(0.1, 1.0))  # a kill while it starts
                agent.kill()
            else:
                total = _burst_then_kill(ctx, agent, log, total, (10_000, 30_000), (0.3, 1.3))
            committed = committed_length(agent.state, agent.out) or 0
            if twice := committed_ids_twice(agent.out, committed):
                problems.append(f"kill {i + 1}: {twice} messageIds twice in the committed output")
            behind += len(read_messages(agent.out, committed)) < total
    finally:
        agent.close()
    _final_run_once(agent, problems)
    note = (
        f"{kills} SIGKILLs at random instants ({starting} while starting, {behind} before "
        "every line was committed); then run --once"
    )
    return _file_result(agent, range(total), note, problems)


def _drain_and_count(agent: Agent, rx: Receiver, total: int, problems: list[str]) -> Tally:
    """A final `run --once` must empty the outbox into the Segment receiver: its count."""
    _final_run_once(agent, problems, timeout=120)
    if left := depth(agent.state):
        problems.append(f"{left} messages left in the outbox after the final run --once")
    return http_sink("segment", rx, range(total))


def kill9_segment(ctx: Ctx) -> Result:
    """SIGKILL of `trackd run` while it delivers to a slow-ish Segment endpoint (a burst of
    lines written after it is up, the kill at a random instant of its delivery); the outbox never
    holds a messageId twice; a final `run --once` drains it."""
    latency = random.Random(ctx.rng.random())  # drawn on the receiver's thread

    def slowish(_req: Request) -> Response:
        return Response.json({"success": True}, delay=latency.uniform(0.02, 0.05))

    log = ctx.work / "access.log"
    total = 500
    write_access_log(log, 0, total)
    kills, waiting, problems = ctx.scale(3, 12), 0, []
    with Receiver() as rx:
        rx.respond_with(slowish)
        sink = sink_settings(
            "segment", rx.url, batch={"max_events": 20, "max_wait": "50ms"}, concurrency=4
        )
        agent = Agent(ctx.work, [str(log)], {"sink": sink})
        try:
            for i in range(kills):
                total = _burst_then_kill(ctx, agent, log, total, (1500, 3000), (0.2, 1.5))
                box = [m["messageId"] for m in outbox_bodies(agent.state)]
                if len(box) != len(set(box)):
                    problems.append(f"kill {i + 1}: a messageId twice in the outbox")
                waiting += bool(box)
        finally:
            agent.close()
        tally = _drain_and_count(agent, rx, total, problems)
    return Result(
        tally,
        f"{kills} SIGKILLs while delivering ({waiting} with messages waiting in the outbox); "
        f"then run --once; {tally.resent} re-sent under the same messageId",
        problems,
        resend_allowed=True,
    )


def sigterm_file(ctx: Ctx) -> Result:
    """SIGTERM of `trackd run` while it reads a burst, several times: exit 0 within
    shutdown_timeout, no uncommitted byte left in the sink file; a last start reads the rest."""
    log = ctx.work / "access.log"
    total = 1000
    write_access_log(log, 0, total)
    agent = Agent(ctx.work, [str(log)], {"shutdown_timeout": "5s"})
    stops, behind = ctx.scale(2, 6), 0
    problems: list[str] = []
    try:
        for _ in range(stops):
            agent.start()
            burst = ctx.rng.randrange(20_000, 40_000)
            write_access_log(log, total, burst)
            total += burst
            time.sleep(ctx.rng.uniform(0.3, 1.2))  # the watcher sees it after ~0.5 s
            _stop(agent, problems, within=5 + 3)
            _clean_file_tail(agent.out, agent.state, problems)
            behind += agent.delivered() < total
        agent.start()
        settle(lambda: agent.delivered() >= total, 120, "every line delivered", problems)
        _stop(agent, problems)
    finally:
        agent.close()
    note = (
        f"{stops} SIGTERMs while reading a burst ({behind} with lines still unread), exit 0 "
        "each; then a last start"
    )
    return _file_result(agent, range(total), note, problems)


def sigterm_segment(ctx: Ctx) -> Result:
    """SIGTERM while a slow endpoint (50 ms per request) has a backlog: exit 0 within
    shutdown_timeout (2 s); what was not acknowledged stays in the outbox and the next
    `run --once` delivers it."""
    log = ctx.work / "access.log"
    total = ctx.scale(3000, 6000)
    write_access_log(log, 0, total)
    problems: list[str] = []
    with Receiver() as rx:
        rx.default = Response.json({"success": True}, delay=0.05)
        sink = sink_settings("segment", rx.url, batch={"max_events": 20, "max_wait": "50ms"})
        agent = Agent(ctx.work, [str(log)], {"sink": sink, "shutdown_timeout": "2s"})
        try:
            agent.start()
            rx.wait_for(10, timeout=30)
            _stop(agent, problems, within=2 + 3)
        finally:
            agent.close()
        left = depth(agent.state)
        if left == 0:
            problems.append("nothing was left in the outbox: the stop did not cut a backlog")
        tally = _drain_and_count(agent, rx, total, problems)
    return Result(
        tally,
        f"SIGTERM mid-backlog: exit 0, {left} messages kept in the outbox; then run --once "
        f"({tally.resent} in flight when the 2 s drain ended went again, same messageIds)",
        problems,
        resend_allowed=True,
    )


# -- rotations under a writer (real logrotate) ---------------------------------------------------


def _on_disk(work: Path, name: str) -> set[int]:
    """The sequence numbers of every line in `name` and its rotated generations now."""
    found: set[int] = set()
    for path in work.glob(f"{name}*"):
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
        found |= seqs_in_log_bytes(data)
    return found


def _delivered_past(agent: Agent, n: int) -> bool:
    return agent.delivered() > n


def rotation(*directives: str, glob: bool = False) -> Callable[[Ctx], Result]:
    """A writer at 1,000-1,500 lines/s and `logrotate` with `directives` every few hundred
    lines read; with `glob` the source's paths are `app.log*` (rotated generations matched)."""

    def run(ctx: Ctx) -> Result:
        log = ctx.work / "app.log"
        log.touch()
        paths = [str(ctx.work / "app.log*")] if glob else [str(log)]
        copy = "copytruncate" in directives
        agent = Agent(ctx.work, paths).start()
        writer = Writer(log, ctx.scale(1000, 1500), reopen=not copy).start()
        rotations = ctx.scale(2, 8)
        problems: list[str] = []
        try:
            for _ in range(rotations):
                mark = writer.next
                read_past = functools.partial(_delivered_past, agent, mark + 300)
                settle(read_past, 30, "lines read", problems)
                logrotate(ctx.work, log, *directives, rotate=50)
            mark = writer.next
            wait_until(lambda: writer.next > mark + 500, 30, "lines after the last rotation")
            total = writer.stop()
            # copytruncate copies, then truncates: what the writer appends in between is in no
            # file afterwards (logrotate's own race, SCENARIOS 7). Count the lines in some file,
            # and those of the window trackd did read while they were there.
            written = set(range(total))
            on_disk = _on_disk(ctx.work, "app.log") if copy else written
            settle(lambda: set(agent.seqs()) >= on_disk, 60, "every line delivered", problems)
            window = written - on_disk
            read_in_window = window & set(agent.seqs())
            expected = on_disk | read_in_window
            _stop(agent, problems)
            gap = sum(map(int, re.findall(r'"lost_lines_estimate":(\d+)', agent.stderr())))
        finally:
            writer.stop()
            agent.close()
        generations = sorted(p.name for p in ctx.work.glob("app.log.*"))
        packed = sum(name.endswith(".gz") for name in generations)
        note = (
            f"{rotations} rotations ({', '.join(directives)}) under a writer"
            + (", paths: app.log*" if glob else "")
            + f"; {len(generations)} rotated generations on disk ({packed} compressed)"
        )
        if copy:
            note += (
                f"; {len(window)} of {total} lines written in logrotate's copy window were in no "
                f"file after it: {len(read_in_window)} read by trackd before the truncation, "
                f"{len(window) - len(read_in_window)} truncated away unread (logrotate's race: "
                f"not in `lines`, and not in trackd's truncation-gap count, which is {gap})"
            )
        return _file_result(agent, expected, note, problems)

    return run


# -- a full disk under the sink, a state that refuses commits (in process) -----------------------


class Fault(Protocol):
    failed: int
    times: int

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None: ...


#: One phase of an in-process case: faults installed together, each with how many failures to
#: wait for before it is healed (for a fault with finite `times`, that many).
Phase = Sequence[tuple[Fault, int]]


def in_process(
    phases: Callable[[Path], list[Phase]], what: str, sink_error: bool = False
) -> Callable[[Ctx], Result]:
    """The real daemon in process, file sink; per phase: install the faults, write a burst,
    wait until each fault failed its count (the disk stays full that long: every retry fails),
    heal it, wait until every line is delivered. `sink_error`: the daemon must report the sink's
    failure (what /healthz and `trackd status` show) while it lasts."""

    def run(ctx: Ctx) -> Result:
        return asyncio.run(_in_process(ctx, phases, what, sink_error))

    return run


async def _in_process(
    ctx: Ctx, phases: Callable[[Path], list[Phase]], what: str, sink_error: bool
) -> Result:
    log, out = ctx.work / "access.log", ctx.work / "out.jsonl"
    burst = ctx.scale(300, 1500)
    total = burst
    write_access_log(log, 0, burst)
    problems: list[str] = []
    fired = 0

    async def until(pred: Callable[[], bool], what: str) -> bool:
        return await asyncio.to_thread(settle, pred, 30, what, problems)

    def delivered() -> bool:
        return file_sink(out, range(total)).lost == 0

    try:
        async with real_daemon(make_config(ctx.work, paths=[str(log)]), stop_within=15) as d:
            tail = d.tail
            assert tail is not None
            tail.retry_initial = 0.02  # retries in milliseconds, not seconds
            await until(delivered, "the first burst")
            for phase in phases(out):
                with pytest.MonkeyPatch.context() as mp:
                    for fault, _count in phase:
                        fault.install(mp)
                    write_access_log(log, total, burst)
                    total += burst
                    await until(functools.partial(_fired, phase), "the faults")
                    if sink_error and "No space left on device" not in (tail.sink_error or ""):
                        problems.append(f"sink error not reported: {tail.sink_error!r}")
                    for fault, _count in phase:
                        fired += fault.failed
                        fault.times = fault.failed  # room again
                    await until(delivered, "every line after the fault")
                    await until(
                        lambda: tail.sink_error is None and tail.state_error is None, "recovery"
                    )
    except (AssertionError, TimeoutError) as exc:  # the daemon's exit code or its start
        problems.append(f"the daemon: {exc!r}")
    _clean_file_tail(out, ctx.work / "state", problems)
    return Result(file_sink(out, range(total)), f"{what}; {fired} refused writes", problems)


def _fired(phase: Phase) -> bool:
    """Every fault of the phase failed its count."""
    return all(fault.failed >= n for fault, n in phase)


FOREVER = 10**9


def sink_write_full(out: Path) -> list[Phase]:
    """ENOSPC at `write` (torn after 33 bytes, then before the first byte), each for 6 tries."""
    return [
        [(DiskFull(str(out), times=FOREVER, partial=33), 6)],
        [(DiskFull(str(out), times=FOREVER), 6)],
    ]


def sink_fsync_full(out: Path) -> list[Phase]:
    """ENOSPC at `fsync` (the bytes written, then refused), for 6 tries."""
    return [[(DiskFull(str(out), call="fsync", times=FOREVER), 6)]]


def state_refuses(_out: Path) -> list[Phase]:
    """SQLite's disk-full error at BEGIN, in the body, at COMMIT, 3 times each."""
    return [[(StateFull(where, FOREVER), 3)] for where in ("begin", "body", "commit")]


def both_refuse(out: Path) -> list[Phase]:
    """The sink's disk full, then (the chunk written) the state refusing it: torn write then
    COMMIT; fsync then the body."""
    return [
        [(DiskFull(str(out), times=3, partial=5), 3), (StateFull("commit", 3), 3)],
        [(DiskFull(str(out), call="fsync", times=2), 2), (StateFull("body", 2), 2)],
    ]


# -- HTTP endpoint down, then back ---------------------------------------------------------------


def _failures(port: int, kind: str, reason: str) -> float:
    try:
        return metric(port, f'trackd_send_failures_total{{reason="{reason}",sink="{kind}"}}') or 0
    except OSError:
        return 0


def _retry_after_held(rx: Receiver, seconds: float, problems: list[str]) -> int:
    """No request reached the endpoint within `seconds` of a 429 answered with Retry-After."""
    requests = rx.requests
    holds = [r.received_at for r in requests if r.response is not None and r.response.status == 429]
    for at in holds:
        early = [r.received_at - at for r in requests if at < r.received_at < at + seconds - 0.05]
        if early:
            problems.append(f"a request {early[0]:.2f} s after a 429 with Retry-After: {seconds:g}")
    return len(holds)


def http_outage(kind: str, mode: str) -> Callable[[Ctx], Result]:
    """`trackd run` delivering to the loopback receiver as `kind` while it answers 503
    (`5xx`), refuses connections (`refused`: the endpoint stopped, then started on the same
    port) or answers 429 with `Retry-After: 1` (`429`, concurrency 1); then every line must be
    acknowledged exactly once."""

    def run(ctx: Ctx) -> Result:
        n = ctx.scale(200, 500) if kind == "kissmetrics" else ctx.scale(1000, 3000)
        outage = ctx.scale(1.0, 3.0)  # seconds the endpoint stays down at least
        log = ctx.work / "access.log"
        port = free_port()
        problems: list[str] = []
        note = ""
        with Receiver() as rx:
            over: dict[str, Any] = {}
            if mode == "429":
                over = {"concurrency": 1, "retry": {"initial_backoff": "10ms", "max_backoff": "5s"}}
                rx.script(*[Response(429, headers={"Retry-After": "1"})] * 2)
            elif mode == "5xx":
                codes = itertools.cycle((500, 502, 503, 504))
                rx.respond_with(lambda _r: Response(next(codes)))
            extra = {
                "sink": sink_settings(kind, rx.url, **over),
                "shutdown_timeout": "2s",
                "metrics": {"listen": f"127.0.0.1:{port}"},
            }
            agent = Agent(ctx.work, [str(log)], extra)
            write_access_log(log, 0, n // 2)
            if mode == "refused":
                rx.stop()
            try:
                agent.start()
                started = time.monotonic()
                write_access_log(log, n // 2, n - n // 2)
                if mode == "5xx":
                    rx.wait_for(8, timeout=30)
                    time.sleep(max(0.0, outage - (time.monotonic() - started)))
                    rx.respond_with(None)  # up: the default 204
                    note = f"{len(rx.requests)} requests answered 500/502/503/504 for {outage:g} s, then 204"
                elif mode == "refused":
                    settle(lambda: depth(agent.state) >= n, 30, "the outbox to fill", problems)
                    settle(
                        lambda: _failures(port, kind, "connect") >= 3,
                        30,
                        "refused connections",
                        problems,
                    )
                    time.sleep(max(0.0, outage - (time.monotonic() - started)))
                    refused = int(_failures(port, kind, "connect"))
                    note = f"endpoint down ({refused} refused connections), {n} queued, then up"
                    rx.start()

                def tally() -> Tally:
                    return http_sink(kind, rx, range(n))

                settle(lambda: tally().lost == 0, 60, "every line acknowledged", problems)
                _stop(agent, problems)
            finally:
                agent.close()
            if mode == "429":
                holds = _retry_after_held(rx, 1.0, problems)
                note = f"{holds} answers 429 Retry-After: 1, each held (no request within 1 s)"
            if left := depth(agent.state):
                problems.append(f"{left} messages left in the outbox")
            return Result(tally(), note, problems)

    return run


def outbox_full(ctx: Ctx) -> Result:
    """§5.4: the endpoint answers 503 until the outbox reaches `outbox.max_events` (100):
    reading pauses there, /healthz says "outbox full"; then the endpoint recovers and every line
    is delivered exactly once."""
    cap, burst = 100, 20
    n = ctx.scale(600, 2000)
    log = ctx.work / "access.log"
    log.touch()
    port = free_port()
    problems: list[str] = []

    def full() -> bool:
        try:
            status, body = http_get(port, "/healthz")
        except OSError:
            return False
        return status == 503 and "outbox full" in body

    with Receiver() as rx:
        rx.default = Response(503)
        extra = {
            "sink": sink_settings("segment", rx.url, outbox={"max_events": cap}),
            "metrics": {"listen": f"127.0.0.1:{port}"},
            "shutdown_timeout": "2s",
        }
        agent = Agent(ctx.work, [str(log)], extra).start()
        try:
            written = 0
            while not full() and written < n:
                write_access_log(log, written, burst)
                written += burst
                read = functools.partial(_depth_at_least, agent.state, min(written, cap))
                settle(read, 10, "a read", problems)
            if not full():
                problems.append("/healthz never said the outbox was full")
            write_access_log(log, written, n - written)
            seen = len(rx.requests)
            rx.wait_for(seen + 20, timeout=30)  # the 503s go on; reading stays paused
            peak = depth(agent.state)
            if peak >= cap + burst:
                problems.append(f"the outbox grew to {peak} past its cap of {cap}")
            rx.default = Response(204)
            settle(lambda: http_sink("segment", rx, range(n)).lost == 0, 60, "delivery", problems)
            settle(lambda: http_get(port, "/healthz")[0] == 200, 10, "healthy again", problems)
            _stop(agent, problems)
        finally:
            agent.close()
        tally = http_sink("segment", rx, range(n))
    return Result(
        tally, f"outbox held at {peak} (cap {cap}) under 503s, /healthz 503; then 204s", problems
    )


# -- backfill --------------------------------------------------------------------------------


def _salvage(gz: bytes) -> bytes:
    """What zlib can decompress of a damaged or cut-short gzip member."""
    d = zlib.decompressobj(wbits=31)
    try:
        return d.decompress(gz)
    except zlib.error:
        return b""


def backfill_truncated_gz(ctx: Ctx) -> Result:
    """`trackd backfill` over a `.gz` cut in half and a plain generation: every complete line
    before the cut (what zlib can decompress) and every line of the other file, exit 0, the
    damaged file named."""
    logs = ctx.work / "logs"
    logs.mkdir()
    n = ctx.scale(4000, 20_000)
    data = gzip.compress(history(0, n))
    cut = data[: len(data) // 2]
    damaged = logs / "access.log.2.gz"
    damaged.write_bytes(cut)
    (logs / "access.log.1").write_bytes(history(n, 500))
    readable = seqs_in_log_bytes(_salvage(cut))
    expected = readable | set(range(n, n + 500))
    cfg = make_config(ctx.work, paths=[str(logs / "access.log")])
    done = run_trackd("backfill", "-c", str(cfg), str(logs / "access.log.*"), timeout=120)
    problems = []
    if done.returncode != 0:
        problems.append(f"backfill exited {done.returncode}: {last_line(done.stderr)}")
    if f"{damaged}: truncated" not in done.stderr:
        problems.append("the damaged file was not named as truncated")
    return Result(
        file_sink(ctx.work / "out.jsonl", expected),
        f"a .gz of {n} lines cut in half: {len(readable)} readable before the cut, "
        f"{n - len(readable)} past it (gone with the damage); plus a plain file of 500",
        problems,
    )


def backfill_kill9(ctx: Ctx) -> Result:
    """SIGKILL of `trackd backfill` over .log/.1/.2.gz/.3.bz2/.4.xz at random instants (with and
    without worker processes), then a backfill to the end: every line once."""
    logs = ctx.work / "logs"
    total = write_rotated(logs, ctx.scale(3000, 8000))
    cfg = make_config(ctx.work, paths=[str(logs / "access.log")])
    kills, landed, problems = ctx.scale(2, 6), 0, []
    for _ in range(kills):
        env = {**os.environ, "TRACKD_WORKERS": ctx.rng.choice(["0", "2"])}
        proc = subprocess.Popen(
            trackd_cmd("backfill", "-c", str(cfg), str(logs / "access.log*")),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        time.sleep(ctx.rng.uniform(0.4, 1.6))  # a kill at an arbitrary instant
        landed += proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    done = run_trackd("backfill", "-c", str(cfg), str(logs / "access.log*"), timeout=120)
    if done.returncode != 0:
        problems.append(f"the final backfill exited {done.returncode}: {last_line(done.stderr)}")
    return Result(
        file_sink(ctx.work / "out.jsonl", range(total)),
        f"{kills} SIGKILLs of backfill ({landed} while it ran), then a backfill to the end",
        problems,
    )


CASES: list[Case] = [
    Case("kill9", "kill -9 of run, random instants", "file", kill9_file),
    Case("kill9-http", "kill -9 of run while delivering", "segment", kill9_segment),
    Case("sigterm", "SIGTERM drain with a backlog", "file", sigterm_file),
    Case("sigterm-http", "SIGTERM drain, slow endpoint", "segment", sigterm_segment),
    Case("rotate-create", "logrotate create, writer on", "file", rotation("create")),
    Case(
        "rotate-copytruncate", "logrotate copytruncate, writer on", "file", rotation("copytruncate")
    ),
    Case(
        "rotate-compress", "logrotate compress, writer on", "file", rotation("create", "compress")
    ),
    Case(
        "rotate-delaycompress",
        "logrotate delaycompress, glob app.log*",
        "file",
        rotation("create", "compress", "delaycompress", glob=True),
    ),
    Case(
        "sink-enospc-write",
        "sink disk full at write (ENOSPC)",
        "file",
        in_process(sink_write_full, "ENOSPC at write, torn and not", sink_error=True),
    ),
    Case(
        "sink-enospc-fsync",
        "sink disk full at fsync (ENOSPC)",
        "file",
        in_process(sink_fsync_full, "ENOSPC at fsync", sink_error=True),
    ),
    Case(
        "state-commit",
        "state commit refused (disk full)",
        "file",
        in_process(state_refuses, "SQLite 'disk is full' at BEGIN, body, COMMIT"),
    ),
    Case(
        "state-and-sink",
        "sink and state refuse together",
        "file",
        in_process(both_refuse, "torn write then COMMIT refused; fsync then body refused"),
    ),
    *(
        Case(f"{kind}-{mode}", title, kind, http_outage(kind, mode))
        for kind in ("segment", "kissmetrics")
        for mode, title in (
            ("5xx", "endpoint 503, then up"),
            ("refused", "endpoint refuses connections, then up"),
            ("429", "endpoint 429 Retry-After: 1"),
        )
    ),
    Case("outbox-full", "outbox full: backpressure", "segment", outbox_full),
    Case("backfill-truncated-gz", "backfill: truncated .gz", "file", backfill_truncated_gz),
    Case("backfill-kill9", "kill -9 during backfill", "file", backfill_kill9),
]
