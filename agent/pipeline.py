"""The one place a chunk of lines becomes messages: parse -> order -> emit (rules, identity,
encoding) -> one state transaction holding the chunk's messages, identity changes and positions.

Runs synchronously on the pipeline thread (the event loop only schedules it). A kill -9 at any
instruction loses nothing and duplicates nothing: messages and the positions that produced them
commit together (SPEC §5.2).

Ordering (SPEC §1.4): `run --once` merges every file's records by event time (`run_merged`).
While tailing, app records are emitted at once and access records wait in a hold buffer until
every app source that logins/logouts come from has read past their time — or has not grown for
`identity.max_hold`, or they have waited `max_hold` — so a hit is resolved after the login it
follows. A held record is never lost: its file's committed position stays before it.
"""

from __future__ import annotations

import heapq
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any

import structlog

from agent.config import Config, SourceConfig
from agent.emit import Emitter, PipelineStats
from agent.errors import StateError
from agent.identity.sqlite_store import SqliteIdentityStore
from agent.lines import LinePreparer, SourceContext
from agent.prepare import Prepared, Where
from agent.sinks.base import Sink
from agent.sources.fileid import digest16
from agent.sources.splitter import Split
from agent.sources.tracked import TrackedFile
from agent.state import files as files_db
from agent.state import outbox
from agent.workers import PreparePool

log = structlog.get_logger("trackd.pipeline")

COMMIT_EVERY = 16384
#: Records resolved together (one identity prefetch per batch).
BATCH = 2048


class Pipeline:
    """Owns parsing, ordering and the chunk transaction; the emitter owns the rest."""

    def __init__(
        self,
        config: Config,
        conn: sqlite3.Connection,
        secret: bytes,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.conn = conn
        self.store = SqliteIdentityStore(conn)
        self.stats = PipelineStats()
        watermarks = dict(conn.execute("SELECT source, newest FROM watermarks").fetchall())
        self.emitter = Emitter(config, self.store, secret, self.stats, watermarks)
        self.secret = secret
        self.resolver = self.emitter.resolver
        self.preparer = self.emitter.preparer
        self.normalizer = self.preparer.normalizer
        self.lines = LinePreparer(config, self.preparer, self.stats)
        self._clock = clock
        self._advanced: dict[int, tuple[TrackedFile, int, bytes]] = {}
        self._since_commit = 0
        # The hold buffer (tail mode): app sources whose logins/logouts access hits wait for.
        ordering = {
            r.source
            for r in config.events.rules
            if (r.identify is not None or r.logout is not None)
            and config.source(r.source).kind == "app"
        }
        self._hold_for: tuple[str, ...] = tuple(sorted(ordering))
        self._max_hold = config.identity.max_hold
        started = clock()
        #: Per app source: newest event time read, and when it last grew (monotonic).
        self._read_wm: dict[str, float] = {}
        self._grew: dict[str, float] = dict.fromkeys(self._hold_for, started)
        self._held: dict[int, deque[tuple[float, Prepared]]] = {}
        #: Files by id: prepared records name their file by id (they cross processes).
        self._files: dict[int, TrackedFile] = {}
        self._held_end: dict[int, tuple[TrackedFile, int, bytes]] = {}
        #: Called (on the pipeline thread) after every commit that produced messages.
        self.on_commit: Callable[[], None] | None = None
        #: A sink that is its own outbox (the file sink): delivered inside `commit`.
        self.direct_sink: Sink | None = None
        #: Commits the state database refused (disk full, read-only, locked).
        self.state_failures = 0

    @property
    def sources(self) -> dict[str, SourceContext]:
        return self.lines.sources

    def reload_sources(self, sources: tuple[SourceConfig, ...]) -> None:
        """SIGHUP: contexts for added or changed sources; unchanged ones keep theirs."""
        self.lines.reload_sources(sources, self.config.sources)
        self.preparer.reload_sources(sources)
        self.config = self.config.model_copy(update={"sources": sources})

    # -- parsing ---------------------------------------------------------------------------

    def parsed(self, tf: TrackedFile, split: Split) -> Iterator[Prepared]:
        """Parse and prepare a split's lines; yields what can produce messages, counts the rest.

        Lines that produce nothing are not yielded: the split's end moves the file's position
        past them (`advance`)."""
        if not split.lines:
            if split.too_long:
                self.lines.count_too_long(tf.row.source, split.too_long)
            return
        ref = tf.ref if tf.ref is not None else tf.ensure_ref()
        assert ref is not None  # a complete line exists, so the first line is known
        self._files[tf.row.id] = tf
        where = Where(tf.row.source, ref.path, ref.line_fp, tf.row.id)
        yield from self.lines.lines(where, split.start, split.end, split.lines, split.too_long)

    # -- emitting --------------------------------------------------------------------------

    def consume_batch(self, items: list[Prepared]) -> None:
        """Emit a batch of prepared records in order, after one prefetch of every identity the
        batch names."""
        advanced = self._advanced
        files = self._files
        devices: set[str] = set()
        named_ids: set[str] = set()
        sessions: set[str] = set()
        for p in items:
            fid = p.file_id
            prev = advanced.get(fid)
            if prev is None or p.end > prev[1]:
                advanced[fid] = (files[fid], p.end, p.tail)
            if p.device is not None:
                devices.add(p.device)
            if p.named is not None:
                named_ids.add(p.named)
            if p.session is not None:
                sessions.add(p.session)
        self._since_commit += len(items)
        resolver = self.resolver
        resolver.prefetch(devices, named_ids, sessions)
        emit = self.emitter.emit
        try:
            for p in items:
                emit(p)
        finally:
            resolver.end_batch()

    def advance(self, tf: TrackedFile, end: int, marker_source: bytes) -> None:
        """Move a file's position past lines that produced nothing (skipped, or a split's end).

        Only called once every record before `end` has been emitted."""
        prev = self._advanced.get(tf.row.id)
        if prev is None or end > prev[1]:
            self._advanced[tf.row.id] = (tf, end, marker_source)

    # -- driving: tail mode ----------------------------------------------------------------

    def feed(self, tf: TrackedFile, split: Split) -> None:
        """Tail mode: take one split of one file (in file order). App records and access records
        with nothing to wait for are emitted now; others wait in the hold buffer (`release`)."""
        items = list(self.parsed(tf, split))
        source = tf.row.source
        if source in self._grew:
            self._grew[source] = self._clock()
            if items:
                newest = max(p.key for p in items)
                if newest > self._read_wm.get(source, 0.0):
                    self._read_wm[source] = newest
        held = self._held.get(tf.row.id)
        if self._hold_for and not self.sources[source].is_app:
            now = self._clock()
            queue = self._held.setdefault(tf.row.id, deque())
            queue.extend((now, item) for item in items)
            self._held_end[tf.row.id] = (tf, split.end, split.marker)
            return
        for i in range(0, len(items), BATCH):
            self.consume_batch(items[i : i + BATCH])
        if not held:
            self.advance(tf, split.end, split.marker)

    def release(self) -> int:
        """Emit held access records that may go (SPEC §1.4), in event-time order."""
        if not self._held:
            return 0
        now = self._clock()
        batch: list[Prepared] = []
        released = 0
        heads = [(q[0][1].key, q[0][1].offset, fid) for fid, q in self._held.items() if q]
        heapq.heapify(heads)
        while heads:
            key, _offset, fid = heads[0]
            queue = self._held[fid]
            read_at, item = queue[0]
            if not (now - read_at >= self._max_hold or self._caught_up(key, now)):
                break
            queue.popleft()
            batch.append(item)
            if queue:
                heapq.heapreplace(heads, (queue[0][1].key, queue[0][1].offset, fid))
            else:
                heapq.heappop(heads)
            if len(batch) >= BATCH:
                self.consume_batch(batch)
                released += len(batch)
                batch = []
        if batch:
            self.consume_batch(batch)
            released += len(batch)
        for fid in [fid for fid, q in self._held.items() if not q]:
            del self._held[fid]
            tf, end, marker = self._held_end.pop(fid)
            self.advance(tf, end, marker)
        return released

    def _caught_up(self, key: float, now: float) -> bool:
        """Has every app source the hit waits for read past `key`, or gone quiet?"""
        for source in self._hold_for:
            if self._read_wm.get(source, 0.0) < key and now - self._grew[source] < self._max_hold:
                return False
        return True

    def held(self) -> int:
        """Access records waiting in the hold buffer."""
        return sum(len(q) for q in self._held.values())

    # -- driving: run --once / backfill ----------------------------------------------------

    def run_merged(
        self, streams: list[tuple[TrackedFile, Iterable[Split]]], pool: PreparePool | None = None
    ) -> None:
        """Merge every file's records by event time (SPEC §1.4) and emit them in that order.
        With a pool, worker processes parse and prepare; this thread merges, resolves, commits."""
        gens = [
            self._pooled_items(tf, splits, pool)
            if pool is not None
            else self._file_items(tf, splits)
            for tf, splits in streams
        ]
        merged: Iterable[Prepared] = gens[0] if len(gens) == 1 else heapq.merge(*gens)
        batch: list[Prepared] = []
        for item in merged:
            batch.append(item)
            if len(batch) >= BATCH:
                self.consume_batch(batch)
                batch = []
                if self._since_commit >= COMMIT_EVERY:
                    self.commit()
        if batch:
            self.consume_batch(batch)
        self.commit()

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
                if not split.lines:
                    pending.append((None, split))
                    continue
                ref = tf.ref if tf.ref is not None else tf.ensure_ref()
                assert ref is not None  # a complete line exists, so the first line is known
                self._files[tf.row.id] = tf
                where = Where(tf.row.source, ref.path, ref.line_fp, tf.row.id)
                block = b"\n".join(split.lines)
                pending.append(
                    (pool.submit(where, split.start, split.end, block, split.too_long), split)
                )
                if len(pending) >= 4:
                    break
            if not pending:
                return
            done, split = pending.popleft()
            if done is None:
                if split.too_long:
                    self.lines.count_too_long(tf.row.source, split.too_long)
            else:
                yield from pool.take(done, self.stats)
            # As in _file_items: every record above was pulled before the position moves.
            self.advance(tf, split.end, split.marker)

    def _file_items(self, tf: TrackedFile, splits: Iterable[Split]) -> Iterator[Prepared]:
        for split in splits:
            yield from self.parsed(tf, split)
            # Runs once the merge pulled every record above; `run_merged` emits what it pulled
            # before any commit, so the position may move past the split's skipped tail.
            self.advance(tf, split.end, split.marker)

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
        """One transaction: messages + identity changes + positions + watermarks."""
        emitter = self.emitter
        rows = emitter.rows
        changes = self.resolver.take_changes()
        if not rows and not self._advanced and not any(changes) and not emitter.watermarks_dirty:
            return 0
        now = time.time()
        positions = []
        for tf, end, tail in self._advanced.values():
            marker = tail[-64:] if tail.endswith(b"\n") else (tail + b"\n")[-64:]
            if end == 0:
                marker = b""
            digest = digest16(marker) if marker else None
            positions.append((end, len(marker), digest, end, now, tf.row.id))
        conn = self.conn
        direct = self.direct_sink
        if direct is not None and rows:
            # The file is the outbox: write and fsync first; a crash before COMMIT leaves bytes
            # past the recorded length, which the next start truncates (SPEC §4).
            direct.deliver(rows)
        try:
            conn.execute("BEGIN IMMEDIATE")
            if direct is not None:
                if rows:
                    direct.committed(conn)
            elif rows:
                outbox.enqueue(conn, rows, now)
            self.store.save(changes.devices, changes.named, changes.sessions, changes.aliases)
            if positions:
                files_db.update_positions(conn, positions)
            if emitter.watermarks_dirty:
                conn.executemany(
                    "INSERT INTO watermarks (source, newest) VALUES (?, ?) "
                    "ON CONFLICT (source) DO UPDATE SET newest = excluded.newest",
                    [(s, emitter.watermarks[s]) for s in emitter.watermarks_dirty],
                )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            # Nothing of the chunk is lost: its messages, positions and identity changes stay
            # pending for the next commit; bytes the file sink wrote are cut back off.
            self.resolver.requeue(changes)
            if direct is not None and rows:
                direct.abort()
            self.state_failures += 1
            log.error("state_commit_failed", error=str(exc), rows=len(rows))
            raise StateError(
                f"could not commit {len(rows)} messages and positions to the state database: "
                f"{exc} (is the disk full, the state directory read-only, or the database "
                "locked by another program?)"
            ) from exc
        for tf, end, tail in self._advanced.values():
            row = tf.row
            marker = tail[-64:] if tail.endswith(b"\n") else (tail + b"\n")[-64:]
            row.offset = end
            row.marker_len = len(marker) if end else 0
            row.marker = digest16(marker) if end else None
        n = len(rows)
        self.stats.enqueued += n
        self.stats.commits += 1
        emitter.rows = []
        emitter.watermarks_dirty = set()
        self._advanced = {}
        self._since_commit = 0
        if n and self.on_commit is not None:
            self.on_commit()
        return n
