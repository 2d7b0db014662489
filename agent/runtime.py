"""What `run`, `run --once` and (later) `backfill` share: the locked state, the two database
threads, the identity store, the pipeline, the sink and its sender.

Two single-thread executors keep SQLite connections on their own threads: the pipeline thread
(reading, parsing, resolving, the chunk transactions) and the sender thread (the outbox side of
delivery). The event loop only schedules; CPU and disk work never runs on it.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import structlog

from agent.config import Config
from agent.identity import forget
from agent.identity.derived import load_or_create_secret
from agent.identity.graph import IdentityStore, StoreUnavailable
from agent.identity.sqlite_store import SqliteIdentityStore
from agent.pipeline.core import Pipeline
from agent.sinks.backoff import Clock
from agent.sinks.registry import SinkParts, build_sink
from agent.sinks.sender import Sender
from agent.sources.catalog import Catalog
from agent.state import meta, outbox, requests, sinkfile
from agent.state.db import (
    OpenedState,
    StateLock,
    StatePaths,
    connect,
    ensure_state_dir,
    open_state_checked,
    transaction,
)
from agent.state.files import SqlitePositions, load_files

log = structlog.get_logger("trackd.runtime")
T = TypeVar("T")

#: Builds the identity store over the pipeline thread's connection (`identity.store`).
StoreFactory = Callable[[Config, sqlite3.Connection], IdentityStore]
#: Builds the sink from the config (tests pass scripted sinks).
SinkFactory = Callable[[Config], SinkParts]
#: `meta` key: the `start_at` of the first start when it is not the config's (a reset or lost
#: state starts files at `end`); kept until the first discovery, so a crash before it keeps it.
FIRST_START_AT = "first_start_at"
#: What a first start at `end` says about the history it left unread.
HISTORY_HINT = (
    "a first start reads files from their end (start_at: end); to read what they already "
    "hold, set start_at: beginning before the first start, or replay them with "
    "`trackd backfill PATH...`"
)


def default_store(config: Config, conn: sqlite3.Connection) -> IdentityStore:
    """`identity.store`: the state database, or a Redis a fleet shares (SPEC §5.5). Building a
    Redis store makes no connection: an unreachable Redis is never a startup failure."""
    url = config.identity.store
    if url == "sqlite":
        return SqliteIdentityStore(conn, writer=True)
    from agent.identity import redis_store

    host_id = meta.get(conn, redis_store.META_HOST)
    if host_id is None:
        host_id = uuid.uuid4().hex
        with transaction(conn):
            meta.put(conn, redis_store.META_HOST, host_id)
    ident = config.identity
    return redis_store.RedisIdentityStore(
        redis_store.connect_client(url),
        conn,
        site=ident.site,
        host_id=host_id,
        forget_after=ident.forget_after,
        session_ttl=ident.session_ttl,
        where=redis_store.describe(url),
    )


class Runtime:
    def __init__(
        self,
        config: Config,
        *,
        sink_factory: SinkFactory = build_sink,
        store_factory: StoreFactory = default_store,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.paths = StatePaths(config.state_dir)
        self.lock = StateLock(self.paths)
        self._sink_factory = sink_factory
        self._store_factory = store_factory
        self._clock = clock
        self._pipe = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trackd-pipeline")
        self._send = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trackd-sender")
        self.pipeline: Pipeline | None = None
        self.sender: Sender | None = None
        self.sink: SinkParts | None = None
        self.catalog: Catalog | None = None
        #: The outbox's fill (HTTP sinks): the pipeline adds, the sender removes.
        self.level: outbox.Level | None = None
        self.first_start = False
        #: (files, bytes) a first start at `end` left unread (`_note_history_skipped`).
        self.history_skipped = (0, 0)
        self._pipe_conn: sqlite3.Connection | None = None
        self._send_conn: sqlite3.Connection | None = None

    async def on_pipeline(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pipe, fn, *args)

    async def on_sender(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._send, fn, *args)

    async def start(self) -> None:
        """Lock the state, open it, build the sink and the pipeline (and the sender of an HTTP
        sink, with its own connection on the sender thread)."""
        ensure_state_dir(self.config.state_dir)
        self.lock.acquire()
        self.sink = self._sink_factory(self.config)
        await self.on_pipeline(self._open_pipeline, self.sink)
        # A shared store: what an earlier run left in the journal, and other hosts' erasures,
        # before anything is read or delivered (at once: an unreachable store is skipped).
        await self.on_pipeline(self._sync_store)
        if self.sink.http is not None:
            self._send_conn = await self.on_sender(connect, self.paths.db)
            cfg = self.config.sink
            self.sender = Sender(
                self.sink.http, self._send_conn, self.on_sender, clock=self._clock, level=self.level,
                batch=cfg.batch, retry=cfg.retry, concurrency=cfg.concurrency,
            )  # fmt: skip

    def _open_pipeline(self, sink: SinkParts) -> None:
        opened = open_state_checked(self.config.state_dir, on_corrupt=self.config.state.on_corrupt)
        conn = opened.conn
        self._pipe_conn = conn
        start_at = self._first_start_at(opened, sink)
        secret = load_or_create_secret(self.config.identity.secret_file)
        store = self._store_factory(self.config, conn)
        self.pipeline = Pipeline(
            self.config, conn, store, secret, direct_sink=sink.direct, stamper=sink.stamper
        )
        self.pipeline.open_direct_sink()
        if sink.http is not None:
            limits = self.config.sink.outbox
            self.level = outbox.Level(outbox.depth(conn), limits.max_events, limits.max_bytes)
            self.pipeline.level = self.level
        if sink.stamper is not None:
            sink.stamper.load(conn)
        self.first_start = meta.get(conn, meta.FIRST_START_DONE) is None
        self.catalog = Catalog(
            load_files(conn),
            SqlitePositions(conn),
            first_start=self.first_start,
            start_at=start_at,
            max_line_bytes=self.config.max_line_bytes,
        )

    def _first_start_at(self, opened: OpenedState, sink: SinkParts) -> str:
        """Where the files of a first start begin. SPEC §5.1: a state reset after corruption
        starts them at `end`. So does a lost state — no record of a file sink that already holds
        messages (state.db deleted or zero-length): reading from `start_at` would append again
        what the file holds (SPEC §4 promises exactly once into a file), so trackd warns and
        starts at `end`; moving the sink file aside makes `start_at` apply again."""
        conn = opened.conn
        if meta.get(conn, meta.FIRST_START_DONE) is not None:
            return self.config.start_at
        override = meta.get(conn, FIRST_START_AT)
        if override is not None:
            return override
        if opened.reset:
            log.warning(
                "state_reset_files_at_end",
                state_db=self.paths.db,
                hint="state.on_corrupt: reset: files are read from their current end; "
                "what was appended while trackd was down is not read",
            )
        else:
            path = getattr(sink.direct, "path", "-") if sink.direct is not None else "-"
            try:
                size = os.stat(path).st_size if path != "-" else 0
            except OSError:
                size = 0
            if size == 0 or sinkfile.load(conn, path) is not None:
                return self.config.start_at
            log.warning(
                "sink_file_not_in_state",
                sink_file=path,
                size=size,
                state_db=self.paths.db,
                state="empty" if opened.fresh else "without a record of it",
                hint=f"the state does not know the {size} bytes already in {path} (was "
                "state.db deleted or emptied?): files are read from their end so that nothing "
                "is delivered twice. To read from start_at instead, stop trackd, move the sink "
                "file aside and start again",
            )
        if self.config.start_at == "end":
            return "end"
        with transaction(conn):
            meta.put(conn, FIRST_START_AT, "end")
        return "end"

    def outbox_oldest(self) -> float | None:
        """Pipeline thread: enqueue time of the oldest outbox message."""
        assert self._pipe_conn is not None
        return outbox.oldest(self._pipe_conn)

    def apply_requests(self) -> int:
        """Pipeline thread: carry out what other commands asked for (SPEC §5.1); returns the
        messages put back into the outbox (the caller wakes the sender)."""
        conn = self._pipe_conn
        assert conn is not None
        back = 0
        for req in requests.pending(conn):
            if req.kind == requests.FORGET:
                result = self._forget(str(req.args.get("id", "")))
                with transaction(conn):
                    requests.finish(conn, req.id, result, time.time())
                log.info("request_applied", request=req.id, kind=req.kind,
                         removed=result.get("removed"), error=result.get("error"))  # fmt: skip
                continue
            with transaction(conn):
                result = requests.apply(conn, req, time.time())
            log.info("request_applied", request=req.id, kind=req.kind, **result)
            if self.level is not None and "retried" in result:
                self.level.add(int(result["retried"]), int(result["bytes"]))
                back += int(result["retried"])
        self._sync_store()
        return back

    def _forget(self, ident: str) -> dict[str, Any]:
        """Pipeline thread, between chunks: `trackd forget ID` (SPEC §8). The resolver's cache
        is dropped too, so the person's later hits start fresh."""
        pipeline, conn = self.pipeline, self._pipe_conn
        assert pipeline is not None and conn is not None
        try:
            result = forget.forget(conn, pipeline.store, ident, pipeline.normalizer,
                                   pipeline.secret, pipeline.emitter.named_out)  # fmt: skip
        except StoreUnavailable as exc:
            return {"id": ident, "error": str(exc)}
        pipeline.resolver.forget_cached()
        removed = result["removed"]
        if self.level is not None and removed["outbox_messages"]:
            self.level.remove(removed["outbox_messages"], removed["outbox_bytes"])
        return result

    def _sync_store(self) -> None:
        """Pipeline thread: a shared store sends its pending writes; another host's erasures
        drop this host's undelivered messages of that person and the resolver's cache."""
        pipeline, conn = self.pipeline, self._pipe_conn
        if pipeline is None or conn is None:
            return
        for tokens in pipeline.store.sync():
            erased = forget.forget_remote(conn, tokens, pipeline.secret)
            pipeline.resolver.forget_cached()
            if self.level is not None and erased.messages:
                self.level.remove(erased.messages, erased.bytes)
            log.info("erasure_from_fleet_applied", outbox_messages=erased.messages,
                     dead_letters=erased.dead_letters)  # fmt: skip

    def mark_started(self) -> None:
        """Pipeline thread: from now on, new files are read from 0 whatever `start_at` says."""
        assert self._pipe_conn is not None
        if self.first_start:
            self._note_history_skipped()
            with transaction(self._pipe_conn):
                meta.put(self._pipe_conn, meta.FIRST_START_DONE, "1")
            self.first_start = False

    def _note_history_skipped(self) -> None:
        """A first start at `end` leaves what the files held unread: count it (the `run --once`
        summary says it) and say once why and how to read it."""
        catalog = self.catalog
        if catalog is None or catalog.start_at != "end":
            return
        rows = [r for r in catalog.rows.values() if r.offset > 0 or r.state == "skipped"]
        self.history_skipped = (len(rows), sum(r.offset for r in rows))
        if rows and self.config.start_at == "end":  # else a reset or lost state: warned already
            log.info(
                "history_not_read",
                files=len(rows),
                bytes=self.history_skipped[1],
                start_at=catalog.start_at,
                hint=HISTORY_HINT,
            )

    def reopen_sink(self) -> None:
        """Pipeline thread, SIGHUP: reopen a direct sink's file (moved away by logrotate, say)."""
        if self.pipeline is not None:
            self.pipeline.reopen_direct_sink()

    async def close(self) -> None:
        def close_pipe() -> None:
            if self.sink is not None and self.sink.direct is not None:
                self.sink.direct.close()
            if self.pipeline is not None:
                # A shared store sends what the last chunk changed (at once, or never waits:
                # an unreachable one keeps it in the state for the next start).
                self._sync_store()
                close = getattr(self.pipeline.store, "close", None)
                if close is not None:
                    close()
            if self._pipe_conn is not None:
                self._pipe_conn.close()

        def close_send() -> None:
            if self._send_conn is not None:
                self._send_conn.close()

        try:
            if self.sink is not None and self.sink.http is not None:
                await self.sink.http.aclose()
            await self.on_pipeline(close_pipe)
            await self.on_sender(close_send)
        finally:
            self._pipe.shutdown(wait=True)
            self._send.shutdown(wait=True)
            self.lock.release()
