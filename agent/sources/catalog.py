"""Known files: tying what is on disk to saved rows, and deciding where reading starts (SPEC §5.3).

A plain file is a saved row's file when their (device, inode) match and its first bytes still
match the row's fingerprint (an inode reused by another file fails that). It resumes at the saved
offset — unless it shrank below it or the bytes before it changed (the offset marker): then it was
truncated or rewritten, and the unread tail is looked for in a copy among its rotated siblings
before the file is read again from 0 as new content. A saved file no longer at its path is looked
for among the siblings too, by identity; a compressed file by its decompressed fingerprint and
marker. Anything else is a new file: read from 0, or from its end at the very first start with
`start_at: end`.

Rows are written through the PositionStore as soon as a decision is made: such a write only says
where reading starts or where a file went, never that lines were delivered (the pipeline's chunk
transaction owns positions, SPEC §5.2), so a crash between the two repeats the same decision.
"""

from __future__ import annotations

import errno
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Protocol

import structlog

from agent.sources.compressed import PackedReader, head_of
from agent.sources.fileid import (
    FP_MAX,
    MARKER_MAX,
    fingerprint,
    head_matches,
    last_line_end,
    line_fp_of_head,
    marker_ok,
    matches_fingerprint,
    read_at,
)
from agent.sources.siblings import find_copy, stale_copies, unseen_generations
from agent.sources.splitter import LineSplitter
from agent.sources.tracked import Key, TrackedFile
from agent.state.files import FileRow

log = structlog.get_logger("trackd.sources")

TRUNCATED = (
    "its unread tail is read from a rotated copy when one holds it (else counted as a gap); "
    "the new content is read from 0"
)
#: A compressed file that continues a row another TrackedFile still reads: look again later.
DEFER = "defer"


class PositionStore(Protocol):
    """Where file rows persist (the state database)."""

    def insert(self, row: FileRow) -> int: ...

    def update(self, row: FileRow) -> None: ...

    def delete(self, ids: list[int]) -> None: ...


def open_failed_hint(exc: OSError) -> str:
    """What to do about a matched file that could not be opened."""
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        return (
            "too many open files: raise the descriptor limit (ulimit -n, or LimitNOFILE= in "
            "the systemd unit); trackd retries at the next discovery"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "check the file's permissions; trackd retries at the next discovery"
    return "trackd retries at the next discovery"


class Catalog:
    """Every saved row, indexed by (device, inode); makes and records the identity decisions."""

    def __init__(
        self,
        rows: list[FileRow],
        store: PositionStore,
        *,
        first_start: bool,
        start_at: str,
        max_line_bytes: int,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.first_start = first_start
        self.start_at = start_at
        self.max_line_bytes = max_line_bytes
        self._wall = wall
        self.clock = clock
        self.rows: dict[int, FileRow] = {}
        self._by_key: dict[Key, list[FileRow]] = {}
        for row in rows:
            self._add(row)
        #: Lines lost to truncation (an estimate) per source: trackd_truncation_gap_lines_total.
        self.gaps: Counter[str] = Counter()
        #: Matched files that could not be opened, and why (the system's words): until they are.
        self.open_failures: dict[str, str] = {}

    # -- the index -------------------------------------------------------------------------

    def _add(self, row: FileRow) -> None:
        self.rows[row.id] = row
        self._by_key.setdefault((row.dev, row.ino), []).append(row)

    def move(self, row: FileRow, dev: int, ino: int) -> None:
        old = self._by_key.get((row.dev, row.ino))
        if old is not None and row in old:
            old.remove(row)
            if not old:
                del self._by_key[(row.dev, row.ino)]
        row.dev, row.ino = dev, ino
        self._by_key.setdefault((dev, ino), []).append(row)

    def rows_at(self, key: Key) -> list[FileRow]:
        """The rows whose file is (or was) at this (device, inode)."""
        return self._by_key.get(key, [])

    def forget(self, older_than: float) -> int:
        """Drop rows of files gone since before `older_than` (wall clock); returns how many."""
        ids = [r.id for r in self.rows.values() if r.gone_since and r.gone_since < older_than]
        if ids:
            self.store.delete(ids)
            for i in ids:
                row = self.rows.pop(i)
                self._by_key[(row.dev, row.ino)].remove(row)
                if not self._by_key[(row.dev, row.ino)]:
                    del self._by_key[(row.dev, row.ino)]
            log.info("file_positions_forgotten", count=len(ids))
        return len(ids)

    def seen(self, row: FileRow, path: str, state: str) -> None:
        """The row's file is at `path` now (visible again if it was gone)."""
        if row.cur_path != path or row.gone_since is not None or row.state != state:
            row.cur_path, row.gone_since, row.state = path, None, state
            row.updated = self._wall()
            self.store.update(row)

    def gone(self, row: FileRow) -> None:
        """The row's file is nowhere to be seen: start its `forget_files_after` clock."""
        if row.gone_since is None:
            row.gone_since = self._wall()
            self.store.update(row)

    def retire(self, row: FileRow, state: str) -> None:
        """Reading of the row's file ended (`done`) or its bytes are gone (`deleted`)."""
        row.state = state
        if state == "deleted":
            row.gone_since = row.gone_since or self._wall()
        row.updated = self._wall()
        self.store.update(row)

    # -- plain files -----------------------------------------------------------------------

    def match(self, source: str, fd: int, st: os.stat_result) -> FileRow | None:
        """The saved row of this open file: same (device, inode) and fingerprint; rows still being
        read win over finished ones, newer over older."""
        rows = [
            r
            for r in self._by_key.get((st.st_dev, st.st_ino), ())
            if r.source == source and r.state not in ("deleted", "skipped")
        ]
        rows.sort(key=lambda r: (r.state == "done", -r.id))
        for row in rows:
            if matches_fingerprint(fd, row.fp_len, row.fp_hash):
                return row
        return None

    def open_plain(
        self,
        path: str,
        source: str,
        claimed: set[Key],
        reading: Mapping[int, TrackedFile] | None = None,
        *,
        live: bool = True,
    ) -> list[TrackedFile]:
        """Open a plain file found at `path`: its tracked file(s) — a recovered copy of a truncated
        file's unread tail first, then the file itself. Empty when it vanished meanwhile, or when
        it is a copy of a file being read (`reading`: open files by row id) whose lines are still
        to be read from the original."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # gone since it was listed: nothing to read
                self.open_failures[path] = exc.strerror or str(exc)
            log.warning(
                "file_open_failed",
                path=path,
                source=source,
                error=exc.strerror,
                hint=open_failed_hint(exc),
            )
            return []
        self.open_failures.pop(path, None)
        st = os.fstat(fd)
        row = self.match(source, fd, st)
        if row is None:
            if self.first_start:
                offset = last_line_end(fd, st.st_size) if self.start_at == "end" else 0
                return [self.new_plain(source, path, fd, st, offset, live=live)]
            continued = self._copy_of(source, path, fd, st, reading or {}, live)
            if continued is not None:
                return continued
            before = [r.first_seen for r in self.rows.values() if path in (r.path, r.cur_path)]
            fresh = self.new_plain(source, path, fd, st, 0, live=live)
            if not before:
                return [fresh]
            claimed = claimed | {(st.st_dev, st.st_ino)}
            return [*unseen_generations(self, path, source, claimed, max(before)), fresh]
        if st.st_size < row.offset or not marker_ok(fd, row.offset, row.marker_len, row.marker):
            what = "file_truncated" if st.st_size < row.offset else "file_rewritten"
            log.warning(
                what, path=path, source=source, offset=row.offset, size=st.st_size, hint=TRUNCATED
            )
            copy, fresh = self.truncated(row, path, fd, st, claimed)
            if copy is None:
                # Stopped meanwhile: only the bytes seen but not read are known to be lost.
                self.count_gap(row, max(0, row.size - row.offset), 200.0, path)
            return [copy, fresh] if copy is not None else [fresh]
        self.seen(row, path, "live" if live else row.state)
        tf = self.tracked(row, fd, path, row.offset, live=live)
        tf.size = st.st_size
        return [tf]

    def _copy_of(
        self,
        source: str,
        path: str,
        fd: int,
        st: os.stat_result,
        reading: Mapping[int, TrackedFile],
        live: bool,
    ) -> list[TrackedFile] | None:
        """A file never seen whose first bytes are a known file's may be its copy (copytruncate's
        `app.log.1` under a glob like `app.log*`, a backup): never read its lines twice. None when
        it is no copy (a new file, read from 0)."""
        head = read_at(fd, 0, FP_MAX)
        key = (st.st_dev, st.st_ino)
        rows = [
            r
            for r in self.rows.values()
            if r.source == source
            and r.state != "skipped"
            and (r.dev, r.ino) != key
            and head_matches(head, r.fp_len, r.fp_hash)
        ]
        for row in sorted(rows, key=lambda r: -r.id):
            tf = reading.get(row.id)
            if tf is not None:
                if tf.fd < 0:
                    continue
                size = os.fstat(tf.fd).st_size
                if size < tf.pos or tf.rewritten():
                    os.close(fd)  # the original's truncation is handled next: it claims this copy
                    return []
                k = min(st.st_size, size)
                n = min(MARKER_MAX, k)
                if read_at(fd, k - n, n) != read_at(tf.fd, k - n, n):
                    continue  # same first bytes, other content (identical headers)
                if st.st_size <= tf.splitter.offset:
                    log.info("file_copy_already_read", path=path, source=source, of=tf.path)
                    return [self.new_plain(source, path, fd, st, st.st_size, live=live)]
                os.close(fd)  # its unread lines are read from the original
                return []
            if st.st_size < row.offset or not marker_ok(fd, row.offset, row.marker_len, row.marker):
                continue
            log.info("file_copy_found", path=path, source=source, of=row.cur_path or row.path)
            if row.state in ("live", "rotated"):  # the original is lost: this file continues it
                self.move(row, *key)
                self.seen(row, path, "live" if live else "rotated")
                tf = self.tracked(row, fd, path, row.offset, live=live)
                tf.size = st.st_size
                return [tf]
            clone = self.new_plain(source, path, fd, st, row.offset, live=live)
            clone.row.marker_len, clone.row.marker = row.marker_len, row.marker
            self.store.update(clone.row)
            return [clone]
        return None

    def new_plain(
        self, source: str, path: str, fd: int, st: os.stat_result, offset: int, *, live: bool
    ) -> TrackedFile:
        """A row for a file seen for the first time (or new content in a truncated file)."""
        fp_len, fp_hash = fingerprint(read_at(fd, 0, FP_MAX))
        now = self._wall()
        row = FileRow(
            id=0,
            source=source,
            path=path,
            cur_path=path,
            dev=st.st_dev,
            ino=st.st_ino,
            fp_len=fp_len,
            fp_hash=fp_hash,
            line_fp=None,
            offset=offset,
            marker_len=0,
            marker=None,
            size=st.st_size,
            first_seen=now,
            updated=now,
            gone_since=None,
            state="live" if live else "rotated",
        )
        row.id = self.store.insert(row)
        self._add(row)
        log.info("file_new", path=path, source=source, offset=offset, size=st.st_size)
        tf = self.tracked(row, fd, path, offset, live=live)
        tf.size = st.st_size
        return tf

    def truncated(
        self, row: FileRow, path: str, fd: int, st: os.stat_result, claimed: set[Key]
    ) -> tuple[TrackedFile | None, TrackedFile]:
        """The row's file at `path` (open as `fd`) lost the row's content. The row moves to a
        sibling copy holding that content when there is one (its unread tail is read from
        there), else it is retired; the file's current content becomes a new row read from 0."""
        copy = find_copy(self, row, claimed | {(st.st_dev, st.st_ino)})
        if copy is None:
            self.retire(row, "deleted")
            stale_copies(self, row, claimed | {(st.st_dev, st.st_ino)})
        fresh = self.new_plain(row.source, path, fd, st, 0, live=True)
        return copy, fresh

    def count_gap(self, row: FileRow, lost_bytes: int, avg_line: float, path: str) -> None:
        """Count (and log) lines lost to a truncation, estimated from bytes."""
        if lost_bytes <= 0:
            return
        lines = max(1, round(lost_bytes / max(avg_line, 1.0)))
        self.gaps[row.source] += lines
        log.warning(
            "truncation_gap",
            path=path,
            source=row.source,
            lost_bytes=lost_bytes,
            lost_lines_estimate=lines,
            hint="the file was truncated before trackd read these lines and no rotated copy "
            "holds them (copytruncate's copy window, or a truncation while behind)",
        )

    # -- compressed files --------------------------------------------------------------------

    def open_packed(
        self, path: str, source: str, kind: str, key: Key, open_rows: set[int]
    ) -> TrackedFile | str | None:
        """A compressed file matched by a glob: the generation of a known row (read from that
        row's offset), a new file (read from 0), or nothing to read (None). DEFER while the row it
        continues is still read from its plain form."""
        head = head_of(path, kind)
        if head is None:
            return None  # incomplete (still being compressed) or damaged: looked at again later
        cands = [
            r
            for r in self.rows.values()
            if r.source == source and head_matches(head, r.fp_len, r.fp_hash)
        ]
        cands.sort(key=lambda r: ((r.dev, r.ino) != key, -r.id))
        for row in cands:
            if row.id in open_rows:
                return DEFER
            if row.state == "skipped":
                self.move(row, *key)
                self.seen(row, path, "skipped")
                return None
            reader = PackedReader(path, kind)
            if reader.seek_checked(row.offset, row.marker_len, row.marker):
                self.move(row, *key)
                self.seen(row, path, "rotated")
                if row.line_fp is None:
                    row.line_fp = line_fp_of_head(head)
                tf = self.tracked(row, -1, path, row.offset, live=False)
                tf.packed = reader
                return tf
            reader.close()
        fp_len, fp_hash = fingerprint(head)
        now = self._wall()
        skip = self.first_start and self.start_at == "end"
        row = FileRow(
            0, source, path, path, *key, fp_len, fp_hash, line_fp_of_head(head), 0, 0, None,
            0, now, now, None, "skipped" if skip else "rotated",
        )  # fmt: skip
        row.id = self.store.insert(row)
        self._add(row)
        log.info("file_new", path=path, source=source, offset=0, compressed=kind, skipped=skip)
        if skip:
            return None
        reader = PackedReader(path, kind)
        reader.seek_checked(0, 0, None)
        tf = self.tracked(row, -1, path, 0, live=False)
        tf.packed = reader
        return tf

    def tracked(self, row: FileRow, fd: int, path: str, offset: int, *, live: bool) -> TrackedFile:
        tf = TrackedFile(row, fd, path, LineSplitter(offset, self.max_line_bytes), live=live)
        tf.pos = offset
        if fd >= 0 and offset:
            tf.before = read_at(fd, max(0, offset - MARKER_MAX), min(offset, MARKER_MAX))
        tf.grew_at = self.clock()
        return tf
