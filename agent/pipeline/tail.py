"""The daemon's tail loop: discover, poll, feed the pipeline and commit (on the pipeline thread),
woken by the watcher (`sources/watch.py`) and timers; and SIGHUP config reload.

Timing: a hot file (one that grew lately, or a rotated generation being drained) is read every
READ_TIMER; every file is looked at on a sweep (SWEEP_INTERVAL with watchfiles working,
SWEEP_POLLING without); watchfiles events wake the reader early and name the files to look at.
Nothing here blocks the event loop: file and database work runs on the pipeline thread.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from agent.config import Config, load_config
from agent.config.reload import ReloadPlan, plan_reload
from agent.errors import ConfigError, SinkError, StateError
from agent.ops.metrics import Metrics
from agent.pipeline.jobs import JobRunner
from agent.runtime import Runtime
from agent.sources.tailer import Tailer
from agent.sources.watch import WatchDirs, Watcher
from agent.state import outbox

log = structlog.get_logger("trackd.reader")

#: While a file is hot, how often it is read: appended lines are seen within 100 ms (SPEC §5.3).
READ_TIMER = 0.05
#: How often every file is looked at (idle files, rotation checks) with watchfiles working, and
#: without it (inotify limits, network filesystems).
SWEEP_INTERVAL = 1.0
SWEEP_POLLING = 0.25
#: Globs are expanded this often while watchfiles works (a safety net: its events trigger
#: discovery of new paths at once), every DISCOVER_POLLING without it; never more often than
#: every DISCOVER_MIN_GAP ...
DISCOVER_WATCHED = 10.0
DISCOVER_POLLING = 1.0
DISCOVER_MIN_GAP = 0.2
#: ... nor for more than this share of the time (a glob over 100k files takes a while).
DISCOVER_SHARE = 0.02
PUBLISH_INTERVAL = 1.0
#: While access hits wait in the hold buffer (SPEC §1.4), how often their release is checked.
HOLD_TIMER = 0.1
#: Identity collection and the trackd_identities gauge (a COUNT over the graph).
HOUSEKEEPING_INTERVAL = 60.0
PATH_EVERY = 5


class TailLoop:
    """The daemon's reading side: owns the tailer, its watcher, and SIGHUP reload."""

    #: The first wait before a refused commit is retried (then doubled, up to RETRY_MAX).
    retry_initial = 1.0
    RETRY_MAX = 30.0

    def __init__(
        self,
        config: Config,
        rt: Runtime,
        tailer: Tailer,
        metrics: Metrics,
        stop: asyncio.Event,
    ) -> None:
        self.config = config
        self.rt = rt
        self.tailer = tailer
        self.metrics = metrics
        self.stop = stop
        self.wake_reader = asyncio.Event()
        self.sources_up = asyncio.Event()
        self.reading_stopped = asyncio.Event()
        self.watcher = Watcher(self.wake_reader, SWEEP_POLLING)
        self._discover_wanted = False
        self._want_dirs: WatchDirs = ([], False)
        #: Reading is paused because the outbox is full (SPEC §5.4).
        self.paused = False
        self.reload_requested = False
        self._published = 0.0
        self._oldest_at = -PUBLISH_INTERVAL
        self._oldest: float | None = None
        self._sweeps = 0
        self._lag_labels: dict[tuple[str, str], int] = {}
        self.progress = time.monotonic()
        self._housekept = 0.0
        #: Set while the state database refuses commits (then /healthz answers 503).
        self.state_error: str | None = None
        #: Set while the sink cannot be written (a full disk under the sink file).
        self.sink_error: str | None = None
        assert rt.pipeline is not None and rt.catalog is not None and rt.sink is not None
        self._reserved = False
        #: Backfill jobs handed over by `trackd backfill` (run a slice per step).
        self.jobs = JobRunner(
            rt.pipeline, rt.catalog, tailer, f"{rt.sink.name}:{rt.sink.describe()}"
        )

    def wake(self, *, rewatch: bool = False) -> None:
        if rewatch:
            self.watcher.restart()
        self.wake_reader.set()

    def _step(self, discover: bool, sweep: bool, changed: set[str]) -> tuple[int, bool]:
        """Pipeline thread: discover (when due, or when watchfiles named an unknown path), read
        what was appended, commit. Returns (lines read, whether discovery ran)."""
        tailer, pipeline = self.tailer, self.rt.pipeline
        assert pipeline is not None
        if changed and tailer.nudge(changed):
            self._discover_wanted = True
        if discover:
            self._discover_wanted = False
            if not self._reserved:
                self._reserved = True
                self.jobs.reserve()
            tailer.discover()
            self.rt.mark_started()
            self._discover_wanted = tailer.incomplete
            self._want_dirs = tailer.watch_dirs()  # stat calls: here, off the event loop
        n = 0
        level = self.rt.level
        if level is not None and level.full:
            self._pause_reading(level)
            for tf, split in tailer.hold_only():
                pipeline.feed(tf, split)
        else:
            if self.paused:
                self.paused = False
                log.info("reading_resumed", outbox_messages=level.messages if level else 0)
            for tf, split in tailer.poll(sweep, paths=sweep and self._path_check_due()):
                pipeline.feed(tf, split)
                n += split.count + split.too_long
        pipeline.release()
        pipeline.commit()
        tailer.settle()
        self.jobs.step(paused=self.paused)
        now = time.monotonic()
        if now - self._housekept >= HOUSEKEEPING_INTERVAL:
            self._housekept = now
            pipeline.collect_identities()
            for kind, count in pipeline.identity_counts().items():
                self.metrics.identities.labels(kind).set(count)
        if now - self._published >= PUBLISH_INTERVAL:
            back = self.rt.apply_requests()
            if back and pipeline.on_commit is not None:
                pipeline.on_commit(back)  # wakes the sender: dead letters are back
        if n or discover or now - self._published >= PUBLISH_INTERVAL:
            self._publish(now)
        return n, discover

    def _pause_reading(self, level: outbox.Level) -> None:
        if not self.paused:
            self.paused = True
            log.warning(
                "outbox_full_reading_paused",
                messages=level.messages,
                bytes=level.bytes,
                max_events=level.max_messages,
                max_bytes=level.max_bytes,
                hint="the endpoint is not keeping up or is down; reading resumes as it drains "
                "(positions are kept; rotated files stay open up to max_rotated_hold)",
            )

    def _path_check_due(self) -> bool:
        """Pipeline thread: whether this sweep also stats every live file's path. watchfiles
        reports renames and deletions (the paths are nudged), so with it every PATH_EVERY-th
        sweep is enough; without it, every sweep."""
        self._sweeps += 1
        return not self.watcher.working or self._sweeps % PATH_EVERY == 0

    def _publish(self, now: float) -> None:
        """Pipeline thread: feed the metrics from the pipeline's and tailer's tallies."""
        pipeline, tailer = self.rt.pipeline, self.tailer
        assert pipeline is not None and tailer is not None
        stats = pipeline.stats
        sender = self.rt.sender
        self.metrics.sync(
            lines=stats.lines,
            skipped=stats.skipped_all(),
            messages=stats.messages,
            dropped=stats.dropped,
            junk=pipeline.normalizer.junk,
            rule_skipped=stats.rule_skipped,
            identity=pipeline.resolver.counts,
            sent=sender.stats.sent if sender is not None else stats.enqueued,
            sink=self.config.sink.type,
            delivery=sender.stats if sender is not None else None,
            outbox_level=self._outbox_level(now),
            km_collapsed=self.rt.sink.counter("collapsed") if self.rt.sink else 0,
            km_properties_dropped=(
                self.rt.sink.counter("properties_dropped") if self.rt.sink else 0
            ),
            degraded=pipeline.store.degraded,
        )
        m = self.metrics
        for source, n in tailer.catalog.gaps.items():
            m.add("truncation_gap", (source,), n, m.truncation_gap)
        m.add("dropped", ("rotated_hold",), tailer.dropped_hold, m.dropped)
        if now - self._published < PUBLISH_INTERVAL:
            return
        # Per-file lag at most once a second: a label lookup per file per read adds up.
        self._published = now
        lags = {(source, path): lag for source, path, lag in tailer.lag()}
        for key, lag in lags.items():
            if self._lag_labels.get(key) != lag:  # a label lookup per file adds up: only changes
                m.file_lag.labels(*key).set(lag)
        for stale in self._lag_labels.keys() - lags.keys():
            m.file_lag.remove(*stale)
        self._lag_labels = lags

    def _outbox_level(self, now: float) -> tuple[int, float | None] | None:
        """Pipeline thread: outbox messages (kept in memory) and the oldest one's enqueue time
        (one index step, at most once per publish interval)."""
        level = self.rt.level
        if level is None:
            return None
        if now - self._oldest_at >= PUBLISH_INTERVAL:
            self._oldest_at = now
            self._oldest = self.rt.outbox_oldest() if level.messages else None
        return level.messages, self._oldest

    async def run(self) -> None:
        next_discover = next_sweep = last_discover = 0.0
        try:
            while not self.stop.is_set():
                if self.reload_requested:
                    self.reload_requested = False
                    await self._reload()
                    next_discover = 0.0
                now = time.monotonic()
                discover = now >= next_discover or (
                    self._discover_wanted and now - last_discover >= DISCOVER_MIN_GAP
                )
                sweep = now >= next_sweep
                if sweep:
                    next_sweep = now + (SWEEP_INTERVAL if self.watcher.working else SWEEP_POLLING)
                self.wake_reader.clear()
                changed = self.watcher.take_changed()
                try:
                    _n, discovered = await self.rt.on_pipeline(self._step, discover, sweep, changed)
                except (StateError, SinkError) as exc:
                    await self._until_state_commits(exc)
                    continue
                self.progress = time.monotonic()
                if discovered:
                    last_discover = self.progress
                    spacing = self.tailer.discover_seconds / DISCOVER_SHARE
                    every = DISCOVER_WATCHED if self.watcher.working else DISCOVER_POLLING
                    next_discover = last_discover + max(every, spacing)
                    self.watcher.want(self._want_dirs)
                self.sources_up.set()
                if (self.tailer.behind or self.jobs.busy) and not self.paused:
                    continue
                now = time.monotonic()
                wake = min(next_sweep, next_discover)
                if self._discover_wanted:
                    wake = min(wake, last_discover + DISCOVER_MIN_GAP)
                if self.tailer.hot and not self.paused:
                    wake = min(wake, now + READ_TIMER)
                if self.rt.pipeline is not None and self.rt.pipeline.held():
                    wake = min(wake, now + HOLD_TIMER)  # held hits go once max_hold has passed
                if wake > now:
                    try:
                        await asyncio.wait_for(self.wake_reader.wait(), timeout=wake - now)
                    except TimeoutError:
                        pass
        finally:
            log.info("reading_stopped")
            self.reading_stopped.set()

    async def _until_state_commits(self, first: StateError | SinkError) -> None:
        """SCENARIOS 16/44: the state database refused a commit (full disk, read-only directory,
        a lock held elsewhere), or the sink file could not be written (a full disk under it).
        Reading stops — nothing goes past what is committed — and the pending chunk is retried
        with backoff; /healthz says 503 meanwhile. A second signal still quits at once (safely);
        SIGTERM stops the retries. Either failure may follow the other while retrying."""
        self._note_failure(first)
        delay = self.retry_initial
        while not self.stop.is_set():
            if self.sink_error is not None:
                log.error(
                    "sink_unavailable",
                    error=self.sink_error,
                    retry_in_s=delay,
                    hint="free disk space under the sink file, or fix its permissions; "
                    "reading resumes by itself and delivers each message once",
                )
            else:
                log.error(
                    "state_unavailable",
                    error=self.state_error,
                    retry_in_s=delay,
                    hint="free disk space, make state_dir writable, "
                    "or stop what holds the database",
                )
            try:
                await asyncio.wait_for(self.stop.wait(), timeout=delay)
            except TimeoutError:
                pass
            if self.stop.is_set():
                return
            try:
                await self.rt.on_pipeline(self._retry_commit)
            except (StateError, SinkError) as exc:
                self._note_failure(exc)
                self.progress = time.monotonic()  # waiting on purpose is not being stuck
                delay = min(delay * 2, self.RETRY_MAX)
                continue
            log.info(
                "sink_recovered" if self.sink_error is not None else "state_recovered",
                after_failures=self.rt.pipeline.state_failures if self.rt.pipeline else 0,
            )
            self.state_error = self.sink_error = None
            self.progress = time.monotonic()
            return

    def _note_failure(self, exc: StateError | SinkError) -> None:
        """Keep the reason for /healthz and count the refused commit."""
        if isinstance(exc, SinkError):
            self.sink_error, self.state_error = str(exc), None
            self.metrics.dropped.labels("sink_unavailable").inc()
        else:
            self.state_error, self.sink_error = str(exc), None
            self.metrics.dropped.labels("state_unavailable").inc()

    def close(self) -> None:
        """Pipeline thread, at stop: close a backfill job's files, then every tailed file."""
        self.jobs.close()
        self.tailer.close_all()

    def _retry_commit(self) -> None:
        """Pipeline thread: commit the chunk that is still pending."""
        assert self.rt.pipeline is not None
        self.rt.pipeline.commit()

    async def _reload(self) -> None:
        """SIGHUP: re-read and validate the config; apply source changes without touching the
        files of unaffected sources; reopen the sink's file. An invalid config changes nothing."""
        path = self.config.config_path
        try:
            new = await asyncio.to_thread(load_config, path)
        except ConfigError as exc:
            log.error(
                "reload_failed",
                config=path,
                problems=[str(i) for i in exc.issues],
                hint="the running config is kept; fix the file (trackd check) and send SIGHUP again",
            )
            return
        plan = plan_reload(self.config, new)
        await self.rt.on_pipeline(self._apply_reload, plan)
        self.config = plan.config
        log.info(
            "config_reloaded",
            config=path,
            sources_added=plan.added,
            sources_removed=plan.removed,
            sources_changed=plan.changed,
        )
        if plan.needs_restart:
            log.warning(
                "reload_needs_restart",
                keys=plan.needs_restart,
                hint="these settings take effect at the next restart of trackd",
            )

    def _apply_reload(self, plan: ReloadPlan) -> None:
        """Pipeline thread: close the files of removed sources (their positions stay saved);
        files of other sources stay open — the next discovery closes those the new globs no
        longer match and opens the new ones."""
        tailer, pipeline = self.tailer, self.rt.pipeline
        assert pipeline is not None
        pipeline.commit()
        tailer.settle()
        for name in plan.removed:
            tailer.drop_source(name)
        tailer.config = plan.config
        tailer.rescan()
        pipeline.reload_sources(plan.config.sources)
        self.rt.reopen_sink()
