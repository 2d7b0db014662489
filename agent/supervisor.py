"""Builds the pipeline from config and runs it: `run --once` and the `run` daemon.

One supervisor, one TaskGroup; signal handlers only record intent. Shutdown drains in order —
stop reading, commit, deliver what can be delivered within `shutdown_timeout` — and logs each step.
Correctness never depends on a clean shutdown: every state change is transactional.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from agent.config import Config
from agent.errors import EXIT_OK, EXIT_RUNTIME
from agent.ops.metrics import Metrics, MetricsServer
from agent.ops.notify import Notifier
from agent.reading import Reader
from agent.runtime import Runtime
from agent.sources.tailer import Tailer
from agent.sources.tracked import TrackedFile
from agent.workers import start_pool

log = structlog.get_logger("trackd.supervisor")


@dataclass(slots=True)
class Summary:
    started: float = field(default_factory=time.monotonic)
    files: int = 0
    lines: int = 0
    skipped: int = 0
    messages: dict[str, int] = field(default_factory=dict)
    resolutions: dict[str, int] = field(default_factory=dict)
    new_ids: dict[str, int] = field(default_factory=dict)
    junk: int = 0
    delivered: int = 0
    pending: int = 0
    sink: str = ""

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.messages.items()) if n)
        total = sum(self.messages.values())
        text = (
            f"trackd: read {self.lines} lines from {self.files} file(s), {self.skipped} skipped; "
            f"{total} messages ({kinds or 'none'}); delivered {self.delivered} to {self.sink}"
        )
        if self.pending:
            text += f", {self.pending} still in the outbox"
        if self.resolutions:
            r = self.resolutions
            text += (
                f"; page views by person: {r.get('named', 0)} named, {r.get('device', 0)} "
                f"anonymous (cookie), {r.get('derived', 0)} derived; new identities: "
                f"{self.new_ids.get('devices_new', 0)} devices, {self.new_ids.get('named_new', 0)} "
                f"named, {self.new_ids.get('aliases', 0)} aliases, "
                f"{self.new_ids.get('conflicts', 0)} conflicts"
            )
        if self.junk:
            text += f"; junk ids discarded: {self.junk}"
        return text + f"; {elapsed:.2f}s, {self.lines / elapsed:,.0f} lines/s"


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[[], None]) -> None:
    """Wake an event-loop waiter from the pipeline thread."""
    loop.call_soon_threadsafe(fn)


async def _deliver_all(rt: Runtime, deadline: float | None) -> int:
    """Deliver until the outbox is empty (or the deadline passes); returns messages delivered."""
    sender = rt.sender
    assert sender is not None
    delivered = 0
    while True:
        n = await rt.on_sender(sender.step)
        delivered += n
        if n:
            continue
        if sender.last_retry is None:
            return delivered
        if deadline is not None and time.monotonic() >= deadline:
            return delivered
        await asyncio.sleep(min(sender.last_retry.after or 1.0, 5.0))


# -- run --once ----------------------------------------------------------------------------


def _read_once(rt: Runtime) -> int:
    """Pipeline thread: snapshot every matched file (and the rotated generations the state says
    were being read), read each to its snapshot, merged by event time."""
    pipeline, catalog = rt.pipeline, rt.catalog
    assert pipeline is not None and catalog is not None
    # Every matched file at once: no descriptor cap (a snapshot needs each file open).
    tailer = Tailer(rt.config, catalog, max_open=1 << 30)
    tailer.discover()
    rt.mark_started()
    opened: list[tuple[TrackedFile, int]] = []
    for tf in tailer.files.values():
        size = os.fstat(tf.fd).st_size if tf.fd >= 0 else 0
        opened.append((tf, size))
    pool = start_pool(rt.config, pipeline.secret, sum(max(0, s - tf.pos) for tf, s in opened))
    try:
        pipeline.run_merged(
            [(tf, tf.snapshot(size, final=not tf.live)) for tf, size in opened], pool
        )
        wall = time.time()
        for tf, size in opened:
            if tf.packed is not None:
                catalog.retire(tf.row, "done")
            elif not tf.live and tf.pos >= size:
                # A rotated generation read to its end: finished once idle for rotate_wait.
                if wall - os.fstat(tf.fd).st_mtime >= rt.config.rotate_wait:
                    catalog.retire(tf.row, "done")
    finally:
        if pool is not None:
            pool.close()
        tailer.settle()
        tailer.close_all()
    return len(opened)


async def run_once(config: Config, deliver_timeout: float) -> int:
    rt = Runtime(config)
    await rt.start()
    summary = Summary()
    assert rt.pipeline is not None and rt.sink is not None
    summary.sink = f"{rt.sink.name}:{rt.sink.describe()}"
    if rt.sender is None:
        return await _run_once_direct(rt, summary)
    loop = asyncio.get_running_loop()
    committed = asyncio.Event()
    rt.pipeline.on_commit = lambda: _call_soon(loop, committed.set)
    reading_done = asyncio.Event()

    async def deliver_while_reading() -> None:
        while not reading_done.is_set():
            waiter = asyncio.ensure_future(committed.wait())
            done_waiter = asyncio.ensure_future(reading_done.wait())
            await asyncio.wait({waiter, done_waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            done_waiter.cancel()
            committed.clear()  # before delivering: a commit meanwhile sets it again
            summary.delivered += await _deliver_all(rt, deadline=time.monotonic())

    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(deliver_while_reading())
            try:
                summary.files = await rt.on_pipeline(_read_once, rt)
            finally:
                reading_done.set()
        summary.delivered += await _deliver_all(rt, deadline=time.monotonic() + deliver_timeout)
        summary.pending = await rt.on_sender(rt.sender.pending)
    finally:
        await _finish_once(rt, summary)
    if summary.pending:
        log.error(
            "delivery_incomplete",
            pending=summary.pending,
            timeout_s=deliver_timeout,
            hint="the messages stay in the outbox and are sent by the next run",
        )
        return EXIT_RUNTIME
    return EXIT_OK


async def _run_once_direct(rt: Runtime, summary: Summary) -> int:
    """`run --once` into a sink that is its own outbox: every commit already delivered."""
    assert rt.pipeline is not None
    try:
        summary.files = await rt.on_pipeline(_read_once, rt)
        summary.delivered = rt.pipeline.stats.enqueued
    finally:
        await _finish_once(rt, summary)
    return EXIT_OK


async def _finish_once(rt: Runtime, summary: Summary) -> None:
    assert rt.pipeline is not None
    stats = rt.pipeline.stats
    summary.lines = sum(stats.lines.values())
    skipped = stats.skipped_all()
    summary.skipped = sum(skipped.values())
    summary.messages = dict(stats.messages)
    summary.resolutions = dict(stats.resolutions)
    summary.new_ids = dict(rt.pipeline.resolver.counts)
    junk = rt.pipeline.normalizer.junk
    summary.junk = sum(junk.values())
    await rt.close()
    for (source, reason), n in sorted(skipped.items()):
        log.info("lines_skipped", source=source, reason=reason, count=n)
    for kind, n in sorted(junk.items()):
        log.info("identity_junk", kind=kind, count=n)
    for (rule, reason), n in sorted(stats.rule_skipped.items()):
        log.info("rule_skipped", rule=rule, reason=reason, count=n)
    print(summary.line(), file=sys.stderr, flush=True)


# -- the daemon ----------------------------------------------------------------------------


class Daemon:
    def __init__(self, config: Config, notifier: Notifier | None = None) -> None:
        self.config = config
        self.rt = Runtime(config)
        self.notifier = notifier or Notifier()
        self.metrics = Metrics(config)
        self.stop = asyncio.Event()
        self.wake_sender = asyncio.Event()
        self.reader: Reader | None = None
        self._signals = 0

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second_signal_exit_now", signal=signal.Signals(signum).name)
            os._exit(EXIT_OK)  # state is transactional: quitting here is safe
        log.info("shutdown_requested", signal=signal.Signals(signum).name)
        self.stop.set()
        if self.reader is not None:
            self.reader.wake(rewatch=True)
        self.wake_sender.set()

    def _on_hup(self) -> None:
        # Only record intent: the reader applies it between two steps.
        log.info("reload_requested", config=self.config.config_path)
        if self.reader is not None:
            self.reader.reload_requested = True
            self.reader.wake()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        await self.rt.start()
        assert self.rt.pipeline is not None and self.rt.catalog is not None
        self.rt.pipeline.on_commit = lambda: _call_soon(loop, self.wake_sender.set)
        self.reader = Reader(
            self.config, self.rt, Tailer(self.config, self.rt.catalog), self.metrics, self.stop
        )
        server = None
        if self.config.metrics.listen:
            server = MetricsServer(self.config.metrics.listen, self.metrics, self._health)
            await server.start()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._reading())
                if self.rt.sender is not None:
                    tg.create_task(self._sender())
                else:
                    tg.create_task(self._direct_drain_log())
                tg.create_task(self.reader.watch())
                if self.notifier.watchdog_interval:
                    tg.create_task(self._watchdog(self.notifier.watchdog_interval))
                tg.create_task(self._announce_ready())
        finally:
            if server is not None:
                await server.close()
            await self.rt.on_pipeline(self.reader.tailer.close_all)
            await self.rt.close()
        log.info("stopped")
        return EXIT_OK

    async def _announce_ready(self) -> None:
        """READY=1 once the first discovery and read pass is done (sources and sink are up)."""
        assert self.reader is not None
        waiter = asyncio.ensure_future(self.reader.sources_up.wait())
        stopper = asyncio.ensure_future(self.stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        stopper.cancel()
        if self.reader.sources_up.is_set():
            files = len(self.reader.tailer.files)
            self.notifier.ready(f"tailing {files} file(s) of {len(self.config.sources)} source(s)")
            log.info(
                "started", sources=len(self.config.sources), files=files, sink=self.config.sink.type
            )

    def _health(self) -> tuple[bool, str]:
        if self.reader is not None and self.reader.state_error is not None:
            return False, f"state database unavailable: {self.reader.state_error}"
        return True, "ok"

    async def _reading(self) -> None:
        assert self.reader is not None
        try:
            await self.reader.run()
        finally:
            self.config = self.reader.config  # as reloaded
            self.wake_sender.set()

    async def _direct_drain_log(self) -> None:
        """A direct sink delivers in the pipeline's commits: stopping is just the last commit."""
        assert self.reader is not None and self.rt.pipeline is not None
        await self.reader.reading_stopped.wait()
        self.notifier.stopping()
        log.info("drained", delivered=self.rt.pipeline.stats.enqueued, left_in_outbox=0)

    async def _sender(self) -> None:
        sender = self.rt.sender
        assert sender is not None
        deadline: float | None = None
        while True:
            if self.stop.is_set() and deadline is None:
                self.notifier.stopping()
                assert self.reader is not None
                await self.reader.reading_stopped.wait()
                deadline = time.monotonic() + self.config.shutdown_timeout
            # Clear before looking: a commit that lands while we look sets it again (no lost wake).
            self.wake_sender.clear()
            n = await self.rt.on_sender(sender.step)
            if n:
                continue
            if deadline is not None:
                if sender.last_retry is None or time.monotonic() >= deadline:
                    pending = await self.rt.on_sender(sender.pending)
                    log.info("drained", delivered=sender.sent, left_in_outbox=pending)
                    return
            wait = (sender.last_retry.after or 1.0) if sender.last_retry else None
            try:
                await asyncio.wait_for(self.wake_sender.wait(), timeout=wait)
            except TimeoutError:
                pass

    async def _watchdog(self, interval: float) -> None:
        """WATCHDOG=1 every interval while the reader keeps stepping (it steps at least every
        sweep, idle or not); withheld when a step has been stuck for a whole interval, so
        systemd restarts an agent whose pipeline hangs (SPEC §7)."""
        while not self.stop.is_set():
            stuck = time.monotonic() - (self.reader.progress if self.reader else time.monotonic())
            if stuck < interval:
                self.notifier.watchdog()
            else:
                log.error("watchdog_withheld", stuck_s=round(stuck, 1), stage="pipeline")
            try:
                await asyncio.wait_for(self.stop.wait(), timeout=interval)
            except TimeoutError:
                pass


async def run_daemon(config: Config) -> int:
    return await Daemon(config).run()
