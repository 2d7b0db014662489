"""The one place a chunk of lines becomes messages: prepare -> order -> emit (rules, identity,
encoding) -> one state transaction holding the chunk's messages, identity changes and positions.

The pipeline builds its stages and hands each what it needs: the pure `Preparer` and
`BlockPreparer` (which worker processes build too), the `Resolver` over the injected identity
store, the `Emitter`, the `HoldBuffer`. It runs synchronously on the pipeline thread (the event
loop only schedules it). A kill -9 at any instruction loses nothing and duplicates nothing:
messages and the positions that produced them commit together (SPEC §5.2).
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any

import structlog

from agent.config import Config, SourceConfig
from agent.errors import OutboxFull, SinkError, StateError
from agent.identity.graph import Changes, IdentityStore
from agent.identity.resolver import Resolver
from agent.pipeline.blocks import BlockPreparer, SourceContext
from agent.pipeline.emit import Emitter
from agent.pipeline.order import HoldBuffer, merged
from agent.pipeline.prepare import Prepared, Preparer
from agent.pipeline.stats import PipelineStats
from agent.pipeline.workers import PreparePool
from agent.records import Chunk, FileRef
from agent.sinks.base import DirectSink, Stamper
from agent.sources.fileid import digest16, read_at
from agent.sources.splitter import Split
from agent.sources.tracked import TrackedFile
from agent.state import files as files_db
from agent.state import outbox, sinkfile
from agent.state import watermarks as watermarks_db
from agent.state.db import transaction

log = structlog.get_logger("trackd.pipeline")

#: Records per chunk transaction in batch reads (`run --once`, backfill).
COMMIT_EVERY = 16384
#: How much of a file `floor_of` reads ahead for its first record.
FLOOR_PEEK = 64 << 10
#: Records resolved together (one identity prefetch per batch).
BATCH = 2048


def _marker(end: int, before: bytes) -> tuple[int, bytes | None]:
    """The position marker of SPEC §5.3: (length, digest) of up to 64 bytes just before `end`."""
    if end == 0:
        return 0, None
    raw = before[-64:] if before.endswith(b"\n") else (before + b"\n")[-64:]
    return len(raw), digest16(raw)


class Pipeline:
    """Owns the stages, the current chunk, and its commit."""

    def __init__(
        self,
        config: Config,
        conn: sqlite3.Connection,
        store: IdentityStore,
        secret: bytes,
        *,
        direct_sink: DirectSink | None = None,
        stamper: Stamper | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.conn = conn
        self.store = store
        self.secret = secret
        self.stats = PipelineStats()
        ident = config.identity
        self.preparer = Preparer(config, secret, self.stats.prepare)
        self.blocks = BlockPreparer(config, self.preparer, self.stats)
        #: Prepares the lines `floor_of` peeks at, counting into its own discarded stats.
        self._probe: BlockPreparer | None = None
        self.resolver = Resolver(
            store,
            max_named_per_device=ident.max_named_per_device,
            max_devices_per_named=ident.max_devices_per_named,
            session_timeout=ident.session_timeout,
            session_ttl=ident.session_ttl,
            join_window=ident.join_window,
        )
        self.emitter = Emitter(
            config, self.preparer, self.resolver, secret, self.stats, watermarks_db.load(conn)
        )
        self.normalizer = self.preparer.normalizer
        self.order = HoldBuffer(
            (
                r.source
                for r in config.events.rules
                if (r.identify is not None or r.logout is not None)
                and config.source(r.source).kind == "app"
            ),
            ident.max_hold,
            clock,
        )
        #: A destination that is its own outbox (the file sink): written in `commit`.
        self.direct_sink = direct_sink
        #: Assigns a sink's own field (Kissmetrics' `_t`) to outbox rows as they are written.
        self.stamper = stamper
        #: Files by id: prepared records name their file by id (they cross processes).
        self._files: dict[int, TrackedFile] = {}
        #: Called (on the pipeline thread) after every commit that produced messages.
        self.on_commit: Callable[[int], object] | None = None
        #: The outbox's fill, for backpressure (HTTP sinks; the runtime sets it), and how long
        #: a batch read waits for room before it stops.
        self.level: outbox.Level | None = None
        self.room_timeout = 300.0
        #: Commits the state database refused (disk full, read-only, locked).
        self.state_failures = 0

    @property
    def chunk(self) -> Chunk:
        return self.emitter.chunk

    @property
    def sources(self) -> dict[str, SourceContext]:
        return self.blocks.sources

    def reload_sources(self, sources: tuple[SourceConfig, ...]) -> None:
        """SIGHUP: contexts for added or changed sources; unchanged ones keep theirs."""
        self.blocks.reload_sources(sources, self.config.sources)
        self.preparer.reload_sources(sources)
        self.config = self.config.model_copy(update={"sources": sources})
        self._probe = None

    # -- the direct sink -------------------------------------------------------------------

    def open_direct_sink(self) -> None:
        """Open the file sink, cutting what was written but never committed (SPEC §4)."""
        sink = self.direct_sink
        if sink is None:
            return
        path = getattr(sink, "path", "")
        with transaction(self.conn):
            record = sink.open(sinkfile.load(self.conn, path) if path else None)
            if record is not None:
                sinkfile.save(self.conn, record)

    def reopen_direct_sink(self) -> None:
        """SIGHUP: reopen the sink's file (moved away by logrotate, say)."""
        if self.direct_sink is not None:
            self.direct_sink.close()
            self.open_direct_sink()
            log.info(
                "sink_reopened", sink=self.direct_sink.name, target=self.direct_sink.describe()
            )

    # -- preparing -------------------------------------------------------------------------

    def prepared(self, tf: TrackedFile, split: Split) -> Iterator[Prepared]:
        """Parse and prepare a split's lines; yields what can produce messages, counts the rest.

        Lines that produce nothing are not yielded: the split's end moves the file's position
        past them (`advance`)."""
        if not split.count:
            if split.too_long:
                self.blocks.count_too_long(tf.row.source, split.too_long)
            return
        ref = tf.ref if tf.ref is not None else tf.ensure_ref()
        assert ref is not None  # a complete line exists, so the first line is known
        self._files[tf.row.id] = tf
        yield from self.blocks.block(ref, split.start, split.end, split.block, split.too_long)

    def floor_of(self, tf: TrackedFile, limit: int) -> float:
        """The floor of `tf` for the merge (`order.merged`): the sort key of the first record
        it has to read (up to byte `limit`), found in the complete lines of the next 64 KiB,
        prepared apart (their counts discarded), up to that record only; -inf when there is
        none (a compressed file, nothing to read, or no record there)."""
        if tf.packed is not None or tf.fd < 0 or tf.pos >= limit:
            return -math.inf
        data = read_at(tf.fd, tf.pos, min(FLOOR_PEEK, limit - tf.pos))
        cut = data.rfind(b"\n")
        if cut < 0:
            return -math.inf
        if self._probe is None:
            stats = PipelineStats()
            preparer = Preparer(self.config, self.secret, stats.prepare)
            self._probe = BlockPreparer(self.config, preparer, stats)
        ref = FileRef(0, tf.row.source, "", "")
        for p in self._probe.block(ref, tf.pos, tf.pos + cut + 1, data[:cut]):
            return p.key
        return -math.inf

    # -- emitting --------------------------------------------------------------------------

    def consume_batch(self, items: list[Prepared]) -> None:
        """Emit a batch of prepared records in order, after one prefetch of every identity the
        batch names."""
        chunk = self.chunk
        # A file's records come in file order: its last one in the batch ends furthest.
        last: dict[int, Prepared] = {}
        for p in items:
            last[p.file_id] = p
        for p in last.values():
            chunk.advance(p.file_id, p.end, p.before)
        devices = {p.device for p in items if p.device is not None}
        named_ids = {p.named for p in items if p.named is not None}
        sessions = {p.session for p in items if p.session is not None}
        chunk.records += len(items)
        resolver = self.resolver
        resolver.prefetch(devices, named_ids, sessions)
        emit = self.emitter.emit
        try:
            for p in items:
                emit(p)
        finally:
            resolver.end_batch()

    def _consume(self, items: list[Prepared]) -> None:
        for i in range(0, len(items), BATCH):
            self.consume_batch(items[i : i + BATCH])

    def advance(self, tf: TrackedFile, end: int, before: bytes) -> None:
        """Move a file's position past lines that produced nothing (skipped, or a split's end).

        Only called once every record before `end` has been emitted."""
        self._files[tf.row.id] = tf
        self.chunk.advance(tf.row.id, end, before)

    # -- driving: tail mode ----------------------------------------------------------------

    def feed(self, tf: TrackedFile, split: Split) -> None:
        """Tail mode: take one split of one file (in file order). App records and access records
        with nothing to wait for are emitted now; others wait in the hold buffer (`release`)."""
        items = list(self.prepared(tf, split))
        source = tf.row.source
        order = self.order
        if order.watches(source):
            order.note_read(source, items)
        if order.active and not self.sources[source].is_app:
            self._files[tf.row.id] = tf
            order.hold(tf.row.id, items, split.end, split.before)
            return
        holding = order.is_holding(tf.row.id)
        self._consume(items)
        if not holding:
            self.advance(tf, split.end, split.before)

    def release(self) -> int:
        """Emit held access records that may go (SPEC §1.4), in event-time order."""
        items, done = self.order.release()
        self._consume(items)
        for file_id, end, before in done:
            self.chunk.advance(file_id, end, before)
        return len(items)

    def held(self) -> int:
        """Access records waiting in the hold buffer."""
        return len(self.order)

    # -- driving: run --once / backfill ----------------------------------------------------

    def run_merged(
        self,
        streams: list[tuple[TrackedFile, Iterable[Split]]],
        pool: PreparePool | None = None,
        *,
        skip: Callable[[Prepared], str | None] | None = None,
        floors: list[float] | None = None,
    ) -> None:
        """Merge every file's records by event time (SPEC §1.4) and emit them in that order,
        committing every COMMIT_EVERY records (`merged_batches`) and at the end."""
        for _n in self.merged_batches(streams, pool, skip=skip, floors=floors):
            if self.chunk.records >= COMMIT_EVERY:
                self.commit()
                self._wait_for_room()
        self.commit()

    def merged_batches(
        self,
        streams: list[tuple[TrackedFile, Iterable[Split]]],
        pool: PreparePool | None = None,
        *,
        skip: Callable[[Prepared], str | None] | None = None,
        floors: list[float] | None = None,
    ) -> Iterator[int]:
        """Emit every file's records merged by event time (SPEC §1.4), yielding after each batch
        (the records it emitted) so the caller commits when it wants — and may pause between
        batches (the daemon runs a handed-off backfill a slice at a time). Never commits.
        With a pool, worker processes parse and prepare; this thread merges and resolves.
        `skip` (backfill's --since/--until) names why a record is not emitted, counted as a
        skipped line; its file's position still moves past it. `floors` (per stream, a sort key
        none of its records is below) lets the merge start a file only once it is reached
        (`order.merged`)."""
        gens = [
            self._pooled_items(tf, splits, pool)
            if pool is not None
            else self._file_items(tf, splits)
            for tf, splits in streams
        ]
        batch: list[Prepared] = []
        skipped = self.stats.skipped
        for item in merged(gens, floors):
            if skip is not None:
                reason = skip(item)
                if reason is not None:
                    skipped[(item.source, reason)] += 1
                    continue
            batch.append(item)
            if len(batch) >= BATCH:
                self.consume_batch(batch)
                yield len(batch)
                batch = []
        if batch:
            self.consume_batch(batch)
            yield len(batch)

    def _wait_for_room(self) -> None:
        """SPEC §5.4 in a batch read: at the outbox's limit, wait for the sender to drain it
        (up to `room_timeout`), else stop reading (OutboxFull; everything read is committed)."""
        level = self.level
        if level is None or not level.full:
            return
        log.warning("outbox_full_reading_paused", messages=level.messages, bytes=level.bytes)
        if not level.wait_room(self.room_timeout):
            raise OutboxFull(
                f"the outbox stayed full ({level.messages} messages, {level.bytes} bytes) for "
                f"{self.room_timeout:.0f}s: the endpoint is not taking messages. What was read "
                "is committed and is sent by the next run; raise sink.outbox.max_events or "
                "fix the endpoint"
            )
        log.info("outbox_drained_reading_resumed", messages=level.messages)

    def _pooled_items(
        self, tf: TrackedFile, splits: Iterable[Split], pool: PreparePool
    ) -> Iterator[Prepared]:
        """A file's prepared records, in file order, from blocks prepared by the pool (a few
        blocks ahead, within the pool's in-flight budget)."""
        pending: deque[tuple[Future[Any] | None, Split]] = deque()
        it = iter(splits)
        more = True
        while True:
            while more and (not pending or pool.in_flight < pool.max_in_flight):
                split = next(it, None)
                if split is None:
                    more = False
                    break
                if not split.count:
                    pending.append((None, split))
                    continue
                ref = tf.ref if tf.ref is not None else tf.ensure_ref()
                assert ref is not None  # a complete line exists, so the first line is known
                self._files[tf.row.id] = tf
                # The block as read: the worker splits it (here only the count is needed).
                pending.append(
                    (pool.submit(ref, split.start, split.end, split.block, split.too_long), split)
                )
                if len(pending) >= 4:
                    break
            if not pending:
                return
            done, split = pending.popleft()
            if done is None:
                if split.too_long:
                    self.blocks.count_too_long(tf.row.source, split.too_long)
            else:
                yield from pool.take(done, self.stats)
            # As in _file_items: every record above was pulled before the position moves.
            self.advance(tf, split.end, split.before)

    def _file_items(self, tf: TrackedFile, splits: Iterable[Split]) -> Iterator[Prepared]:
        for split in splits:
            yield from self.prepared(tf, split)
            # Runs once the merge pulled every record above; `run_merged` emits what it pulled
            # before any commit, so the position may move past the split's skipped tail.
            self.advance(tf, split.end, split.before)

    # -- housekeeping ----------------------------------------------------------------------

    def collect_identities(self) -> tuple[int, int]:
        """identity.forget_after (SPEC §5.1): forget devices unseen that long, measured from the
        newest event time read. Call between commits."""
        watermarks = self.emitter.watermarks
        if not watermarks:
            return 0, 0
        ident = self.config.identity
        deleted = self.store.collect(
            max(watermarks.values()), ident.forget_after, ident.session_ttl
        )
        if any(deleted):
            self.resolver.forget_cached()
            log.info("identities_collected", devices=deleted[0], sessions=deleted[1])
        return deleted

    def identity_counts(self) -> dict[str, int]:
        """`trackd_identities{kind}`: rows in the graph, and derived ids minted since start."""
        counts = self.store.counts()
        derived = self.preparer.derived
        counts["derived"] = derived.minted if derived is not None else 0
        return counts

    # -- the chunk transaction -------------------------------------------------------------

    def commit(self) -> int:
        """One transaction: the chunk's messages + identity changes + positions + watermarks.
        Returns the messages committed. On failure nothing of the chunk is lost: it stays
        pending for the next commit (and StateError says why)."""
        chunk = self.chunk
        changes = self.resolver.take_changes()
        if not chunk and not any(changes):
            return 0
        now = time.time()
        positions = [
            (end, *_marker(end, before), end, now, file_id)
            for file_id, (end, before) in chunk.advanced.items()
        ]
        messages = chunk.messages
        stamper = self.stamper
        stamps = stamper.stamp(messages) if stamper is not None and messages else None
        try:
            self._write(chunk, changes, positions, stamps, now)
        except BaseException as exc:
            self._undo(changes, stamps, exc)
            if isinstance(exc, SinkError):
                # A full disk under the sink file: the chunk stays pending, as for the state.
                log.error("sink_write_failed", error=str(exc), messages=len(messages))
                raise
            if not isinstance(exc, sqlite3.Error):
                raise
            self.state_failures += 1
            log.error("state_commit_failed", error=str(exc), messages=len(messages))
            raise StateError(
                f"could not commit {len(messages)} messages and positions to the state "
                f"database: {exc} (is the disk full, the state directory read-only, or the "
                "database locked by another program?)"
            ) from exc
        self._committed(chunk, positions, stamps)
        return len(messages)

    def _write(
        self,
        chunk: Chunk,
        changes: Changes,
        positions: list[tuple[int, int, bytes | None, int, float, int]],
        stamps: list[int | None] | None,
        now: float,
    ) -> None:
        messages = chunk.messages
        conn = self.conn
        direct = self.direct_sink
        if direct is not None and messages:
            # The file is the outbox: write and fsync first; a crash before the commit leaves
            # bytes past the recorded length, which the next start cuts (SPEC §4).
            direct.write(messages)
        with transaction(conn):
            if direct is not None:
                record = direct.pending_record() if messages else None
                if record is not None:
                    sinkfile.save(conn, record)
            elif messages:
                outbox.enqueue(conn, messages, stamps, now)
                if self.stamper is not None:
                    self.stamper.save(conn)
            self.store.save(changes)
            if positions:
                files_db.update_positions(conn, positions)
            if chunk.watermarks:
                watermarks_db.save(conn, chunk.watermarks)

    def _undo(self, changes: Changes, stamps: list[int | None] | None, exc: BaseException) -> None:
        """The chunk did not commit: its identity changes are pending again, its stamps are
        free again, and bytes the file sink wrote are cut back off — also when the sink's own
        write failed half-way (`abort` never raises; the sink's length stays the committed one
        until `_committed`)."""
        self.resolver.requeue(changes)
        if self.stamper is not None and stamps is not None:
            self.stamper.rolled_back()
        direct = self.direct_sink
        if direct is not None and self.chunk.messages:
            direct.abort()

    def _committed(
        self,
        chunk: Chunk,
        positions: list[tuple[int, int, bytes | None, int, float, int]],
        stamps: list[int | None] | None,
    ) -> None:
        """The chunk is durable: apply it to the in-memory positions and start a new one."""
        n = len(chunk.messages)
        if self.direct_sink is not None:
            if n:
                self.direct_sink.committed()
        elif self.level is not None and n:
            self.level.add(n, sum(map(len, chunk.messages)))
        if self.stamper is not None and stamps is not None:
            self.stamper.committed()
        files = self._files
        for end, marker_len, marker, _size, _now, file_id in positions:
            row = files[file_id].row
            row.offset = end
            row.marker_len = marker_len
            row.marker = marker
        self.stats.enqueued += n
        self.stats.commits += 1
        self.emitter.chunk = Chunk()
        if n and self.on_commit is not None:
            self.on_commit(n)
