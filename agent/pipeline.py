"""The one place a chunk of lines becomes messages: parse -> merge -> filter -> identity -> encode,
then one state transaction holding the chunk's outbox rows, identity changes and file positions.

Runs synchronously on the pipeline thread (the event loop only schedules it). A kill -9 at any
instruction loses nothing and duplicates nothing: rows and the positions that produced them
commit together (SPEC §5.2).
"""

from __future__ import annotations

import heapq
import sqlite3
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

import structlog

from agent.config import Config, SourceConfig
from agent.errors import StateError
from agent.events.messages import NamedOut, Timestamps, alias_message, encode, page_message
from agent.events.msgid import MessageIdPrefix, line_hash
from agent.events.pageviews import PageviewFilter
from agent.events.urls import UrlBuilder
from agent.identity.clientip import ClientIp
from agent.identity.derived import DerivedIds
from agent.identity.normalize import Normalizer
from agent.identity.resolver import IdentityEvent, Resolver
from agent.identity.sqlite_store import SqliteIdentityStore
from agent.parse import AccessParser, AppParser, build_access_parser, build_app_parser
from agent.parse.cookies import CookieExtractor
from agent.records import AccessRecord, AppRecord, Continuation
from agent.sinks.base import Sink
from agent.sources.fileid import digest16
from agent.sources.splitter import Split
from agent.sources.tracked import TrackedFile
from agent.state import files as files_db
from agent.state import outbox

log = structlog.get_logger("trackd.pipeline")

#: SPEC §1.2 R6: events before 2009-01-01 are dropped as too old.
MIN_EVENT_TS = 1230768000.0
FUTURE_SLACK = 3600.0
COMMIT_EVERY = 16384
#: Records resolved together (one identity prefetch per batch).
BATCH = 2048
SAMPLE_MAX = 20
_INTAKE_CACHE_MAX = 200_000

#: A parsed line on its way through the merge: (sort key, source, offset, file index, file,
#: the line's raw bytes without its newline, the record, the offset just past the line).
Item = tuple[float, str, int, int, TrackedFile, bytes, AccessRecord | AppRecord, int]


class SourceContext:
    """What the pipeline needs per source: its kind, parser and URL builder."""

    __slots__ = ("is_app", "name", "parser", "urls")

    def __init__(self, src: SourceConfig, redact: tuple[str, ...]) -> None:
        self.name = src.name
        self.is_app = src.kind == "app"
        self.parser: AccessParser | AppParser = (
            build_app_parser(
                src.format,
                time_field=src.time_field,
                time_format=src.time_format,
                timezone=src.timezone,
            )
            if self.is_app
            else build_access_parser(src.format, src.log_format)
        )
        self.urls = UrlBuilder(redact, src.base_url)


class PipelineStats:
    """Counters the pipeline keeps; metrics and summaries read them (never values, only counts)."""

    def __init__(self) -> None:
        self.lines: Counter[str] = Counter()
        self.skipped: Counter[tuple[str, str]] = Counter()
        self.messages: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        #: Page views by how their person was decided: named, device, derived.
        self.resolutions: Counter[str] = Counter()
        #: App lines that continue the entry before them (tracebacks): not records, not errors.
        self.continuations: Counter[str] = Counter()
        self.enqueued = 0
        self.commits = 0
        #: A bounded sample of skipped lines per source, for `check` and debug logs.
        self.samples: dict[str, deque[tuple[str, str]]] = {}


class Pipeline:
    """Owns parsing, identity and encoding state, and the pipeline thread's DB connection."""

    def __init__(self, config: Config, conn: sqlite3.Connection, secret: bytes) -> None:
        self.config = config
        self.conn = conn
        ident = config.identity
        self.store = SqliteIdentityStore(conn)
        self.resolver = Resolver(
            self.store,
            max_named_per_device=ident.max_named_per_device,
            max_devices_per_named=ident.max_devices_per_named,
            session_timeout=ident.session_timeout,
        )
        self.normalizer = Normalizer(
            lowercase_emails=ident.lowercase_emails, blocklist=ident.blocklist
        )
        self.derived = DerivedIds(secret, ident.site) if ident.cookieless == "derived" else None
        self.client_ip = ClientIp(ident.trusted_proxies, config.privacy.ip)
        self._anon_names = ident.anonymous_cookies
        self._named_names = ident.named_cookies
        self._optout = config.privacy.optout_cookie
        wanted = [*ident.anonymous_cookies, *ident.named_cookies]
        if self._optout:
            wanted.append(self._optout)
        self.cookies = CookieExtractor(wanted)
        pv = config.events.pageviews
        self.pageviews = PageviewFilter(pv) if pv.enabled else None
        self.timestamps = Timestamps()
        self.named_out = NamedOut(secret if config.privacy.hash_named == "sha256" else None)
        self.max_line = config.max_line_bytes
        self.sources = {
            s.name: SourceContext(s, config.privacy.redact_params) for s in config.sources
        }
        self.stats = PipelineStats()
        self._rows: list[bytes] = []
        self._advanced: dict[int, tuple[TrackedFile, int, bytes]] = {}
        self._dirty_files: dict[int, TrackedFile] = {}
        self._ids: dict[int, MessageIdPrefix] = {}
        self._intake_cache: dict[str, tuple[str | None, str | None, bool, tuple[str, ...]]] = {}
        self._watermarks: dict[str, float] = dict(
            conn.execute("SELECT source, newest FROM watermarks").fetchall()
        )
        self._wm_dirty: set[str] = set()
        self._since_commit = 0
        #: Called (on the pipeline thread) after every commit that enqueued messages.
        self.on_commit: Callable[[], None] | None = None
        #: A sink that is its own outbox (the file sink): delivered inside `commit`.
        self.direct_sink: Sink | None = None

    def reload_sources(self, sources: tuple[SourceConfig, ...]) -> None:
        """SIGHUP (issue 3): contexts for added or changed sources; unchanged ones are kept."""
        old = {s.name: s for s in self.config.sources}
        redact = self.config.privacy.redact_params
        self.sources = {
            s.name: self.sources[s.name] if old.get(s.name) == s else SourceContext(s, redact)
            for s in sources
        }
        self.config = self.config.model_copy(update={"sources": sources})

    # -- parsing ---------------------------------------------------------------------------

    def parsed(self, tf: TrackedFile, split: Split, index: int = 0) -> Iterator[Item]:
        """Parse a split's lines; yields merge items, counts what it skips."""
        source = tf.row.source
        ctx = self.sources[source]
        parser = ctx.parser
        is_app = ctx.is_app
        max_line = self.max_line
        stats = self.stats
        if split.too_long:
            self._skip(source, "too_long", "", split.too_long)
        stats.lines[source] += len(split.lines) + split.too_long
        offset = split.start
        end_of_split = split.end
        for line in split.lines:
            lo = offset
            offset = lo + len(line) + 1
            if offset > end_of_split:
                offset = end_of_split
            if len(line) > max_line:
                self._skip(source, "too_long", "")
                continue
            body = line[:-1] if line[-1:] == b"\r" else line
            if is_app:
                # An app entry whose bytes are not UTF-8 has no trustworthy structure (SPEC §2).
                try:
                    text = body.decode("utf-8")
                except UnicodeDecodeError:
                    self._skip(source, "encoding", "")
                    continue
            else:
                text = body.decode("utf-8", "replace")
            rec = parser(text)
            if rec is None:
                self._skip(source, "parse_error", text, explain=parser)
                continue
            if isinstance(rec, Continuation):
                stats.continuations[source] += 1
                continue
            yield (rec.ts + rec.precision, source, lo, index, tf, line, rec, offset)

    def _skip(
        self,
        source: str,
        reason: str,
        text: str,
        n: int = 1,
        explain: AccessParser | AppParser | None = None,
    ) -> None:
        self.stats.skipped[(source, reason)] += n
        sample = self.stats.samples.setdefault(source, deque(maxlen=SAMPLE_MAX))
        if len(sample) < SAMPLE_MAX and explain is not None:
            sample.append((reason, explain.explain(text)))

    # -- consuming -------------------------------------------------------------------------

    def consume_batch(self, items: list[Item]) -> None:
        """Resolve a batch of parsed records and encode their messages (appended to the chunk).

        Three passes: intake (time checks, cookies, the page-view filter), one prefetch of every
        identity the batch names, then resolution and encoding in order.
        """
        work: list[tuple[Item, str | None, str | None, bool]] = []
        devices: set[str] = set()
        named_ids: set[str] = set()
        advanced = self._advanced
        for item in items:
            tf, end = item[4], item[7]
            prev = advanced.get(tf.row.id)
            if prev is None or end > prev[1]:
                advanced[tf.row.id] = (tf, end, item[5])
            intake = self._intake(item)
            if intake is None:
                continue
            device, named, is_page = intake
            if device is not None:
                devices.add(device)
            if named is not None:
                named_ids.add(named)
            work.append((item, device, named, is_page))
        self._since_commit += len(items)
        resolver = self.resolver
        resolver.prefetch(devices, named_ids)
        try:
            for item, device, named, is_page in work:
                if is_page:
                    self._page(item, device, named)
                else:
                    resolver.hit(item[6].ts, device, named, None)  # a login by cookie binds (R2)
        finally:
            resolver.end_batch()

    def _intake(self, item: Item) -> tuple[str | None, str | None, bool] | None:
        """Time checks, cookie intake and the page-view filter; None when the record stops here."""
        source, rec = item[1], item[6]
        ts = rec.ts
        if not self._in_time(source, ts):
            return None
        if isinstance(rec, AppRecord):
            return None  # app records feed rules (identify/logout/events), none configured yet
        if rec.cookies:
            device, named, optout, junk = self._cookie_intake(rec.cookie_header, rec.cookies)
        else:
            key = rec.cookie_header
            hit = self._intake_cache.get(key)
            if hit is None:
                hit = self._cookie_intake(key, None)
                if len(self._intake_cache) >= _INTAKE_CACHE_MAX:
                    self._intake_cache.clear()
                self._intake_cache[key] = hit
            device, named, optout, junk = hit
        if junk:
            counts = self.normalizer.junk
            for kind in junk:
                counts[kind] += 1
        if optout:
            self.stats.dropped["optout"] += 1
            return None
        pv = self.pageviews
        if pv is not None and pv(rec):
            return device, named, True
        if device is not None and named is not None:
            return device, named, False
        return None

    def _in_time(self, source: str, ts: float) -> bool:
        """R6: drop events before 2009 or over an hour past the source's newest (counted)."""
        if ts < MIN_EVENT_TS:
            self.stats.skipped[(source, "too_old")] += 1
            return False
        wm = self._watermarks.get(source)
        if wm is None or ts > wm:
            if wm is not None and ts > wm + FUTURE_SLACK:
                self.stats.skipped[(source, "future")] += 1
                return False
            if wm is None and ts > time.time() + 86400.0:
                self.stats.skipped[(source, "future")] += 1
                return False
            self._watermarks[source] = ts
            self._wm_dirty.add(source)
        return True

    def _cookie_intake(
        self, header: str, captured: dict[str, str] | None
    ) -> tuple[str | None, str | None, bool, tuple[str, ...]]:
        """(device, named, opted out, junk kinds seen) from a Cookie header (SPEC §1.1)."""
        jar = self.cookies(header) if header else {}
        if captured:
            jar = {**jar, **captured}
        if not jar:
            return None, None, False, ()
        if self._optout is not None and self._optout in jar:
            return None, None, True, ()
        check = self.normalizer.check
        junk: list[str] = []
        device = named = None
        for name in self._anon_names:
            value = jar.get(name)
            if value is not None:
                device = check("device", value)
                if device is not None:
                    break
                junk.append("device")
        for name in self._named_names:
            value = jar.get(name)
            if value is not None:
                named = check("named", value)
                if named is not None:
                    break
                junk.append("named")
        if device is not None and device == named:
            device = None
        return device, named, False, tuple(junk)

    def _page(self, item: Item, device: str | None, named: str | None) -> None:
        """Resolve one page view and encode its messages: aliases first, then the page."""
        _key, source, lo, _index, tf, raw, any_rec, _end = item
        rec = cast(AccessRecord, any_rec)  # only access records are page views
        ts = rec.ts
        ip = self.client_ip.client(rec.ip, rec.forwarded_for)
        events: list[IdentityEvent]
        if device is None and named is None:
            if self.derived is None:
                self.stats.dropped["cookieless"] += 1
                return
            anonymous_id: str | None = self.derived(
                self.client_ip.normalized(ip), rec.user_agent, ts
            )
            user_id = None
            resolution = "derived"
            contested = False
            events = []
        else:
            attribution, events = self.resolver.hit(ts, device, named, None)
            anonymous_id, user_id, resolution, contested = attribution
        self.stats.resolutions[resolution] += 1
        if tf.ref is None:
            ref = tf.ensure_ref()
            assert ref is not None  # a complete line exists, so the first line is known
            self._ids[tf.row.id] = MessageIdPrefix(source, ref.line_fp)
        ids = self._ids[tf.row.id]
        lhash = line_hash(raw[:-1] if raw[-1:] == b"\r" else raw)
        stamp = self.timestamps(ts)
        urls = self.sources[source].urls
        page_url = urls.page(rec.target, rec.host, None)
        # orjson encodes a fresh dict faster than any cache keyed by these strings could be hit.
        page: dict[str, str] = {"path": page_url.path, "search": page_url.search}
        if page_url.url is not None:
            page["url"] = page_url.url
        page["referrer"] = urls.referrer(rec.referrer) if rec.referrer else ""
        context: dict[str, Any] = {}
        ip_out = self.client_ip.for_context(ip)
        if ip_out is not None:
            context["ip"] = ip_out
        if rec.user_agent:
            context["userAgent"] = rec.user_agent
        context["page"] = page
        context["identity"] = {"resolution": resolution, "contested": contested}
        context["source"] = {"name": source, "file": tf.row.path, "offset": lo}
        out = self.named_out
        rows = self._rows
        messages = self.stats.messages
        for ev in events:
            rows.append(
                encode(
                    alias_message(
                        ids(lo, lhash, ev.slot.encode()), stamp, out(ev.user), ev.previous, context
                    )
                )
            )
            messages["alias"] += 1
        rows.append(
            encode(
                page_message(
                    ids(lo, lhash, b"page"),
                    stamp,
                    out(user_id) if user_id is not None else None,
                    anonymous_id,
                    None,
                    page,
                    context,
                )
            )
        )
        messages["page"] += 1

    def advance(self, tf: TrackedFile, end: int, marker_source: bytes) -> None:
        """Move a file's position past lines that produced nothing (skipped, or a split's end).

        Only called once every record before `end` has been consumed (see `_file_items`)."""
        prev = self._advanced.get(tf.row.id)
        if prev is None or end > prev[1]:
            self._advanced[tf.row.id] = (tf, end, marker_source)

    def mark_dirty(self, tf: TrackedFile) -> None:
        """The file's row changed beyond its position (fingerprint, path): write it at commit."""
        self._dirty_files[tf.row.id] = tf

    # -- driving ---------------------------------------------------------------------------

    def feed(self, tf: TrackedFile, split: Split) -> None:
        """Tail mode: process one split of one file in file order."""
        items = list(self.parsed(tf, split))
        for i in range(0, len(items), BATCH):
            self.consume_batch(items[i : i + BATCH])
        self.advance(tf, split.end, split.marker)

    def run_merged(self, streams: list[tuple[TrackedFile, Iterable[Split]]]) -> None:
        """`run --once` / backfill: merge every file's records by event time (SPEC §1.4)."""
        gens = [self._file_items(tf, splits, i) for i, (tf, splits) in enumerate(streams)]
        merged: Iterable[Item] = gens[0] if len(gens) == 1 else heapq.merge(*gens)
        batch: list[Item] = []
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

    def _file_items(self, tf: TrackedFile, splits: Iterable[Split], index: int) -> Iterator[Item]:
        for split in splits:
            yield from self.parsed(tf, split, index)
            # Runs once the merge pulled every record above; `run_merged` consumes what it pulled
            # before any commit, so the position may move past the split's skipped tail.
            self.advance(tf, split.end, split.marker)

    # -- the chunk transaction -------------------------------------------------------------

    def commit(self) -> int:
        """One transaction: outbox rows + identity changes + positions + watermarks."""
        rows = self._rows
        changes = self.resolver.take_changes()
        if not rows and not self._advanced and not self._dirty_files and not changes.devices:
            return 0
        now = time.time()
        positions = []
        for tf, end, tail in self._advanced.values():
            marker = tail[-64:] if tail.endswith(b"\n") else (tail + b"\n")[-64:]
            if end == 0:
                marker = b""
            tf.row.offset = end
            tf.row.marker_len = len(marker)
            tf.row.marker = digest16(marker) if marker else None
            positions.append((end, tf.row.marker_len, tf.row.marker, end, now, tf.row.id))
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
            self.store.save(changes.devices, changes.named, changes.aliases)
            for tf in self._dirty_files.values():
                files_db.update_file(conn, tf.row)
            if positions:
                files_db.update_positions(conn, positions)
            if self._wm_dirty:
                conn.executemany(
                    "INSERT INTO watermarks (source, newest) VALUES (?, ?) "
                    "ON CONFLICT (source) DO UPDATE SET newest = excluded.newest",
                    [(s, self._watermarks[s]) for s in self._wm_dirty],
                )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            log.error("state_commit_failed", error=str(exc), rows=len(rows))
            raise StateError(
                f"could not commit {len(rows)} messages and positions to the state database: "
                f"{exc} (is the disk full, or the state directory read-only?)"
            ) from exc
        n = len(rows)
        self.stats.enqueued += n
        self.stats.commits += 1
        self._rows = []
        self._advanced = {}
        self._dirty_files = {}
        self._wm_dirty = set()
        self._since_commit = 0
        if n and self.on_commit is not None:
            self.on_commit()
        return n
