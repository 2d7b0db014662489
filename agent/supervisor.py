"""The `run` daemon: builds the runtime from config and runs its tasks in one TaskGroup.

Signal handlers only record intent. Shutdown drains in order — stop reading, commit, deliver what
can be delivered within `shutdown_timeout` — and logs each step. Correctness never depends on a
clean shutdown: every state change is transactional. (`run --once` is `pipeline/once.py`.)
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import structlog

from agent.config import Config
from agent.errors import EXIT_OK
from agent.ops.metrics import Metrics, MetricsServer
from agent.ops.notify import Notifier
from agent.pipeline.tail import TailLoop
from agent.runtime import Runtime
from agent.sources.tailer import Tailer

log = structlog.get_logger("trackd.supervisor")


class Daemon:
    def __init__(
        self, config: Config, notifier: Notifier | None = None, rt: Runtime | None = None
    ) -> None:
        self.config = config
        self.rt = rt or Runtime(config)
        self.notifier = notifier or Notifier()
        self.metrics = Metrics(config)
        self.stop = asyncio.Event()
        self.tail: TailLoop | None = None
        self.server: MetricsServer | None = None
        self._signals = 0

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second_signal_exit_now", signal=signal.Signals(signum).name)
            os._exit(EXIT_OK)  # state is transactional: quitting here is safe
        log.info("shutdown_requested", signal=signal.Signals(signum).name)
        self.request_stop()

    def request_stop(self) -> None:
        """Stop reading, commit, drain (what SIGTERM does; tests call it directly)."""
        self.stop.set()
        if self.tail is not None:
            self.tail.wake(rewatch=True)

    def _on_hup(self) -> None:
        # Only record intent: the tail loop applies it between two steps.
        log.info("reload_requested", config=self.config.config_path)
        if self.tail is not None:
            self.tail.reload_requested = True
            self.tail.wake()

    async def run(self, *, signals: bool = True) -> int:
        loop = asyncio.get_running_loop()
        if signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig)
            loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        await self.rt.start()
        assert self.rt.pipeline is not None and self.rt.catalog is not None
        sender = self.rt.sender
        if sender is not None:
            self.rt.pipeline.on_commit = lambda _n: loop.call_soon_threadsafe(sender.notify)
        self.tail = TailLoop(
            self.config, self.rt, Tailer(self.config, self.rt.catalog), self.metrics, self.stop
        )
        if self.config.metrics.listen:
            self.server = MetricsServer(self.config.metrics.listen, self.metrics, self._health)
            try:
                await self.server.start()
            except BaseException:
                # Nothing has run yet: release the state (lock, connections) before exiting 3.
                self.server = None
                await self.rt.close()
                raise
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._reading())
                tg.create_task(self._delivering())
                tg.create_task(self.tail.watcher.run(self.tail.sources_up, self.stop))
                if self.notifier.watchdog_interval:
                    tg.create_task(self._watchdog(self.notifier.watchdog_interval))
                tg.create_task(self._announce_ready())
        finally:
            if self.server is not None:
                await self.server.close()
            await self.rt.on_pipeline(self.tail.close)
            await self.rt.close()
        log.info("stopped")
        return EXIT_OK

    async def _announce_ready(self) -> None:
        """READY=1 once the first discovery and read pass is done (sources and sink are up)."""
        assert self.tail is not None
        waiter = asyncio.ensure_future(self.tail.sources_up.wait())
        stopper = asyncio.ensure_future(self.stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        stopper.cancel()
        if self.tail.sources_up.is_set():
            files = len(self.tail.tailer.files)
            self.notifier.ready(f"tailing {files} file(s) of {len(self.config.sources)} source(s)")
            log.info(
                "started", sources=len(self.config.sources), files=files, sink=self.config.sink.type
            )

    def _health(self) -> tuple[bool, str]:
        if self.tail is not None and self.tail.state_error is not None:
            return False, f"state database unavailable: {self.tail.state_error}"
        if self.tail is not None and self.tail.sink_error is not None:
            return False, f"sink unavailable: {self.tail.sink_error}"
        level = self.rt.level
        if level is not None and level.full:
            return False, f"outbox full ({level.messages} messages): reading is paused"
        sender = self.rt.sender
        if sender is not None and sender.stats.failing_since is not None:
            failing = time.monotonic() - sender.stats.failing_since
            if failing >= self.config.metrics.unhealthy_after:
                why = sender.stats.paused or "deliveries keep failing"
                return False, f"sink failing for {failing:.0f}s: {why}"
        return True, "ok"

    async def _reading(self) -> None:
        assert self.tail is not None
        try:
            await self.tail.run()
        finally:
            self.config = self.tail.config  # as reloaded

    async def _delivering(self) -> None:
        """The sender until reading stopped and the outbox drained (or `shutdown_timeout`)."""
        assert self.tail is not None and self.rt.pipeline is not None
        sender = self.rt.sender
        if sender is None:
            # A direct sink delivers in the pipeline's commits: stopping is the last commit.
            await self.tail.reading_stopped.wait()
            self.notifier.stopping()
            log.info("drained", delivered=self.rt.pipeline.stats.enqueued, left_in_outbox=0)
            return
        stopping = asyncio.create_task(self._notify_stopping())
        left = await sender.run(self.tail.reading_stopped, self.config.shutdown_timeout)
        stopping.cancel()
        depth = await sender.depth()
        log.info(
            "drained",
            delivered=sender.stats.sent,
            left_in_outbox=depth.messages,
            gave_up=bool(left),
        )

    async def _notify_stopping(self) -> None:
        await self.stop.wait()
        self.notifier.stopping()

    async def _watchdog(self, interval: float) -> None:
        """WATCHDOG=1 every interval while the tail loop keeps stepping (it steps at least every
        sweep, idle or not); withheld when a step has been stuck for a whole interval, so
        systemd restarts an agent whose pipeline hangs (SPEC §7)."""
        while not self.stop.is_set():
            stuck = time.monotonic() - (self.tail.progress if self.tail else time.monotonic())
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
