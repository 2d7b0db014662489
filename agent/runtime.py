"""What `run`, `run --once` and (later) `backfill` share: the locked state, the two worker threads,
the pipeline and the sender.

Two single-thread executors keep SQLite connections on their own threads: the pipeline thread
(reading, parsing, resolving, the chunk transactions) and the sender thread (outbox -> sink). The
event loop only schedules; CPU and disk work never runs on it.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import structlog

from agent.config import Config, FileSinkConfig
from agent.errors import StartupError
from agent.identity.derived import load_or_create_secret
from agent.pipeline import Pipeline
from agent.sinks.base import Sink
from agent.sinks.file import FileSink
from agent.sinks.sender import Sender
from agent.sources.catalog import Catalog
from agent.state import meta
from agent.state.db import StateLock, StatePaths, connect, ensure_state_dir, open_state
from agent.state.files import SqlitePositions, load_files

log = structlog.get_logger("trackd.runtime")
T = TypeVar("T")


def build_sink(config: Config) -> Sink:
    sink = config.sink
    if isinstance(sink, FileSinkConfig):
        return FileSink(sink.path)
    raise StartupError(f"sink type {sink.type!r} is not supported yet by this version of trackd")


class Runtime:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.paths = StatePaths(config.state_dir)
        self.lock = StateLock(self.paths)
        self._pipe = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trackd-pipeline")
        self._send = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trackd-sender")
        self.pipeline: Pipeline | None = None
        self.sender: Sender | None = None
        self.sink: Sink | None = None
        self.catalog: Catalog | None = None
        self.first_start = False
        self._pipe_conn: sqlite3.Connection | None = None
        self._send_conn: sqlite3.Connection | None = None

    async def on_pipeline(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pipe, fn, *args)

    async def on_sender(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._send, fn, *args)

    async def start(self) -> None:
        """Lock the state, open it, build the pipeline and open the sink (on the pipeline thread
        for a direct sink, else with a sender on its own thread)."""
        ensure_state_dir(self.config.state_dir)
        self.lock.acquire()
        await self.on_pipeline(self._open_pipeline)
        sink = build_sink(self.config)
        self.sink = sink
        if sink.direct:
            await self.on_pipeline(self._open_direct, sink)
        else:
            await self.on_sender(self._open_sender, sink)

    def _open_pipeline(self) -> None:
        conn = open_state(self.config.state_dir, on_corrupt=self.config.state.on_corrupt)
        self._pipe_conn = conn
        secret = load_or_create_secret(self.config.identity.secret_file)
        self.pipeline = Pipeline(self.config, conn, secret)
        self.first_start = meta.get(conn, meta.FIRST_START_DONE) is None
        self.catalog = Catalog(
            load_files(conn),
            SqlitePositions(conn),
            first_start=self.first_start,
            start_at=self.config.start_at,
            max_line_bytes=self.config.max_line_bytes,
        )

    def mark_started(self) -> None:
        """Pipeline thread: from now on, new files are read from 0 whatever `start_at` says."""
        assert self._pipe_conn is not None
        if self.first_start:
            meta.put(self._pipe_conn, meta.FIRST_START_DONE, "1")
            self.first_start = False

    def _open_direct(self, sink: Sink) -> None:
        assert self._pipe_conn is not None and self.pipeline is not None
        conn = self._pipe_conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            sink.open(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.pipeline.direct_sink = sink

    def reopen_sink(self) -> None:
        """Pipeline thread, SIGHUP: reopen a direct sink's file (moved away by logrotate, say).
        Another sink is reopened by its sender on the sender thread (`reopen_sender_sink`)."""
        sink = self.sink
        if sink is None or not sink.direct or self._pipe_conn is None:
            return
        sink.close()
        self._open_direct(sink)
        log.info("sink_reopened", sink=sink.name, target=sink.describe())

    def reopen_sender_sink(self) -> None:
        """Sender thread, SIGHUP: reopen the sink of the sender (a no-op for a direct sink)."""
        if self.sender is not None:
            self.sender.sink.close()
            self.sender.open()
            log.info("sink_reopened", sink=self.sender.sink.name)

    def _open_sender(self, sink: Sink) -> None:
        conn = connect(self.paths.db)
        self._send_conn = conn
        self.sender = Sender(sink, conn)
        self.sender.open()

    async def close(self) -> None:
        def close_pipe() -> None:
            if self.sink is not None and self.sink.direct:
                self.sink.close()
            if self._pipe_conn is not None:
                self._pipe_conn.close()

        def close_send() -> None:
            if self.sender is not None:
                self.sender.close()
            if self._send_conn is not None:
                self._send_conn.close()

        try:
            await self.on_pipeline(close_pipe)
            await self.on_sender(close_send)
        finally:
            self._pipe.shutdown(wait=True)
            self._send.shutdown(wait=True)
            self.lock.release()
