"""`trackd run --once` (SPEC §6): snapshot every matched file, read each to its snapshot merged
by event time, deliver what was enqueued, print a one-line summary, exit.

Delivery runs while reading (each commit wakes the sender), then gets `--deliver-timeout` to
finish; what is left stays in the outbox for the next run (exit 1). A direct sink (the file) was
written by every commit already.

The summary goes to stderr (stdout carries the messages of the `-` file sink): one line of text,
or with `--json` one JSON object on one line (`Summary.as_dict`). A first run at `start_at: end`
says what it left unread and how to read it.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
import structlog

from agent.config import Config
from agent.errors import EXIT_OK, EXIT_RUNTIME, OutboxFull
from agent.pipeline.core import Pipeline
from agent.pipeline.workers import start_pool
from agent.runtime import HISTORY_HINT, Runtime
from agent.sources.tailer import Tailer
from agent.sources.tracked import TrackedFile

log = structlog.get_logger("trackd.once")
#: Why a first start read from the end although the config says `start_at: beginning`.
LOST_STATE_HINT = (
    "the state did not know what the sink file already holds (reset or lost: see the warning "
    "above), so files were started at their end to deliver nothing twice"
)


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
    dead_letters: int = 0
    pending: int = 0
    sink: str = ""
    #: Why reading stopped before the snapshot's end (the outbox stayed full), or "".
    stopped: str = ""
    #: (files, bytes) a first start at `start_at: end` left unread, and why / what to do.
    history_skipped: tuple[int, int] = (0, 0)
    history_hint: str = HISTORY_HINT
    #: Matched files that could not be opened (path -> why): not read, so the run failed.
    unopened: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """The summary as data (`run --once --json`): the same counts as `line`."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        files, skipped_bytes = self.history_skipped
        return {
            "files": self.files,
            "lines": self.lines,
            "lines_skipped": self.skipped,
            "messages": sum(self.messages.values()),
            "messages_by_type": dict(sorted(self.messages.items())),
            "sink": self.sink,
            "delivered": self.delivered,
            "dead_lettered": self.dead_letters,
            "pending": self.pending,
            "stopped_early": self.stopped or None,
            "page_views_by_resolution": dict(sorted(self.resolutions.items())),
            "new_identities": dict(sorted(self.new_ids.items())),
            "junk_ids": self.junk,
            "history_not_read": (
                {"files": files, "bytes": skipped_bytes, "hint": self.history_hint}
                if files
                else None
            ),
            "files_not_opened": (
                {"files": len(self.unopened), "errors": sorted(set(self.unopened.values()))}
                if self.unopened
                else None
            ),
            "seconds": round(elapsed, 3),
            "lines_per_second": round(self.lines / elapsed),
        }

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.messages.items()) if n)
        total = sum(self.messages.values())
        text = (
            f"trackd: read {self.lines} lines from {self.files} file(s), {self.skipped} skipped; "
            f"{total} messages ({kinds or 'none'}); delivered {self.delivered} to {self.sink}"
        )
        if self.dead_letters:
            text += f", {self.dead_letters} dead-lettered (trackd deadletters list)"
        if self.pending:
            text += f", {self.pending} still in the outbox"
        if self.stopped:
            text += "; reading stopped early: the outbox stayed full"
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
        text += f"; {elapsed:.2f}s, {self.lines / elapsed:,.0f} lines/s"
        files, skipped_bytes = self.history_skipped
        if files:
            text += (
                f"; not read: the {skipped_bytes:,} bytes already in {files} file(s) — "
                f"{self.history_hint}"
            )
        if self.unopened:
            text += f"; NOT READ: {unopened_text(self.unopened)}"
        return text


def read_snapshot(rt: Runtime) -> int:
    """Pipeline thread: snapshot every matched file (and the rotated generations the state says
    were being read), read each to its snapshot, merged by event time. Returns files read."""
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
            [(tf, tf.snapshot(size, final=not tf.live)) for tf, size in opened],
            pool,
            floors=[pipeline.floor_of(tf, size) for tf, size in opened],
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


async def run_once(rt: Runtime, deliver_timeout: float, *, as_json: bool = False) -> int:
    """Read, deliver, summarise (as JSON with `as_json`). `rt` is built but not started."""
    await rt.start()
    summary = Summary()
    try:
        await read_and_deliver(rt, lambda: read_snapshot(rt), summary, deliver_timeout)
    finally:
        summary.history_skipped = rt.history_skipped
        if rt.catalog is not None:
            summary.unopened = dict(rt.catalog.open_failures)
        if rt.config.start_at != "end":
            summary.history_hint = LOST_STATE_HINT
        await finish(rt, summary)
        text = orjson.dumps(summary.as_dict()).decode() if as_json else summary.line()
        print(text, file=sys.stderr, flush=True)
    return exit_code(summary, deliver_timeout)


async def read_and_deliver(
    rt: Runtime, read: Callable[[], int], summary: Summary, deliver_timeout: float
) -> None:
    """Run `read` on the pipeline thread (it returns the files read) while the sender of an HTTP
    sink delivers each commit; then give delivery `deliver_timeout` to finish. Shared by
    `run --once` and backfill; `rt` is started."""
    assert rt.pipeline is not None and rt.sink is not None
    summary.sink = f"{rt.sink.name}:{rt.sink.describe()}"
    sender = rt.sender
    if sender is None:
        summary.files = await rt.on_pipeline(read)
        summary.delivered = rt.pipeline.stats.enqueued
        return
    loop = asyncio.get_running_loop()
    rt.pipeline.on_commit = lambda _n: loop.call_soon_threadsafe(sender.notify)
    reading_done = asyncio.Event()
    rt.pipeline.room_timeout = deliver_timeout
    async with asyncio.TaskGroup() as tg:
        delivery = tg.create_task(sender.run(reading_done, deliver_timeout))
        try:
            summary.files = await rt.on_pipeline(read)
        except OutboxFull as exc:
            summary.stopped = str(exc)
            log.error("reading_stopped_outbox_full", reason=str(exc))
        finally:
            reading_done.set()
    await delivery
    summary.delivered = sender.stats.sent
    summary.dead_letters = sender.stats.dead_letters
    summary.pending = (await sender.depth()).messages


def unopened_text(unopened: dict[str, str]) -> str:
    """`N matched file(s) could not be opened (why) …`, naming the first."""
    reasons = sorted(set(unopened.values()))
    first = min(unopened)
    return (
        f"{len(unopened)} matched file(s) could not be opened ({'; '.join(reasons)}), e.g. "
        f"{first}; fix that and run again: they are read then"
    )


def exit_code(summary: Summary, deliver_timeout: float) -> int:
    """1 when reading stopped early, a matched file could not be opened, or delivery did not
    finish (logged), else 0."""
    if summary.stopped:
        return EXIT_RUNTIME
    if summary.unopened:
        log.error(
            "files_not_opened",
            files=len(summary.unopened),
            errors=sorted(set(summary.unopened.values())),
            hint="they were not read: raise the descriptor limit (ulimit -n) or fix their "
            "permissions, then run again",
        )
        return EXIT_RUNTIME
    if summary.pending:
        log.error(
            "delivery_incomplete",
            pending=summary.pending,
            timeout_s=deliver_timeout,
            hint="the messages stay in the outbox and are sent by the next run",
        )
        return EXIT_RUNTIME
    return EXIT_OK


async def finish(rt: Runtime, summary: Summary) -> None:
    """Fill the summary from the pipeline's counters, close the runtime, log the counts."""
    if rt.pipeline is not None:
        collect(rt.pipeline, summary)
    await rt.close()
    if rt.pipeline is not None:
        log_counts(rt.pipeline)


def collect(pipeline: Pipeline, summary: Summary) -> None:
    stats = pipeline.stats
    summary.lines = sum(stats.lines.values())
    summary.skipped = sum(stats.skipped_all().values())
    summary.messages = dict(stats.messages)
    summary.resolutions = dict(stats.resolutions)
    summary.new_ids = dict(pipeline.resolver.counts)
    summary.junk = sum(pipeline.normalizer.junk.values())


def log_counts(pipeline: Pipeline) -> None:
    """Skipped lines, junk identifiers and skipped rules, one log line per kind."""
    stats = pipeline.stats
    for (source, reason), n in sorted(stats.skipped_all().items()):
        log.info("lines_skipped", source=source, reason=reason, count=n)
    for kind, n in sorted(pipeline.normalizer.junk.items()):
        log.info("identity_junk", kind=kind, count=n)
    for (rule, reason), n in sorted(stats.rule_skipped.items()):
        log.info("rule_skipped", rule=rule, reason=reason, count=n)


async def run_once_config(config: Config, deliver_timeout: float, *, as_json: bool = False) -> int:
    return await run_once(Runtime(config), deliver_timeout, as_json=as_json)
