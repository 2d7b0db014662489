"""Live tailing: discover files, read what was appended, follow renames, truncations and deletions.

The tailer is synchronous and runs on the pipeline thread. The supervisor calls `poll` on a short
timer while some file is hot (grew lately, or is a rotated generation being drained), on watchfiles
hints naming a file, and on a slower sweep of every file (the stat-polling fallback for idle files,
networked filesystems and lost inotify events): watchfiles is a hint, never the clock.

- Rename rotation: the open descriptor keeps reading the old file while it grows, until it has been
  idle for `rotate_wait` (or held for `max_rotated_hold`), even when no glob matches its new name;
  its final partial line is then flushed. The new file at the path is a new file, read from 0.
- A file deleted while open is read to its end, then closed.
- Truncation or an in-place rewrite (size below the read position, or the bytes before it
  changed): the unread tail is recovered from a rotated copy when one holds it (copytruncate),
  else counted in `truncation_gap`; the new content is read from 0 (see `catalog.py`).
- Open descriptors are capped: idle live files are parked (closed) and reopened by identity.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import structlog

from agent.config import Config
from agent.sources.catalog import DEFER, TRUNCATED, Catalog
from agent.sources.compressed import compression_of
from agent.sources.discovery import expand, watch_dirs
from agent.sources.siblings import find_copy, recover_saved
from agent.sources.splitter import Split
from agent.sources.tracked import Key, TrackedFile, default_max_open
from agent.state.files import FileRow

log = structlog.get_logger("trackd.tailer")

#: Bytes read from one file per poll, so one busy file cannot starve the others.
READ_BUDGET = 4 << 20
#: A file that grew this recently is polled on the fast timer (seconds).
HOT_WINDOW = 5.0
#: How often positions of long-gone files are collected (seconds).
FORGET_EVERY = 3600.0

FKey = tuple[str, int, int]
Polled = tuple[TrackedFile, Split]


class Tailer:
    def __init__(
        self,
        config: Config,
        catalog: Catalog,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        max_open: int | None = None,
    ) -> None:
        self.config = config
        self.catalog = catalog
        self._clock = clock
        self._wall = wall
        self.max_open = max_open or default_max_open()
        #: Tracked files by (source, device, inode).
        self.files: dict[FKey, TrackedFile] = {}
        #: Compressed files already looked at: their size then (read once, never tailed).
        self._static: dict[FKey, int] = {}
        self._nudged: set[str] = set()
        #: Rows of files closed since the last commit, and the state they end in.
        self._closing: list[tuple[FileRow, str]] = []
        #: Files polled on the fast timer between sweeps (hot, rotated, compressed, nudged).
        self._warm: set[FKey] = set()
        self._recovered = False
        self._last_forget = float("-inf")
        #: Lines dropped unread from rotated files held past `max_rotated_hold`.
        self.dropped_hold = 0
        #: Some file wants the fast timer (set by each poll).
        self.hot = False
        #: The last discovery stopped at the descriptor cap: run another one soon.
        self.incomplete = False
        #: Some file still has unread bytes after the last poll (its read budget ran out).
        self.behind = False
        #: Seconds the last discovery took (the supervisor spaces discoveries by it).
        self.discover_seconds = 0.0
        #: Files a backfill job of the daemon reads now (`pipeline/jobs.py`): left to it.
        self.busy: set[FKey] = set()

    # -- discovery -------------------------------------------------------------------------

    def discover(self) -> list[TrackedFile]:
        """Open files that appeared; on the first call, also find saved files that were rotated
        while trackd was stopped. Returns the newly tracked files."""
        started = self._clock()
        opened: list[TrackedFile] = []
        found_keys: set[FKey] = set()
        room = self._room(started)
        self.incomplete = False  # set again below when the cap stops this pass
        for src in self.config.sources:
            claimed = self._claimed(src.name)
            reading = {t.row.id: t for t in self.files.values() if t.row.source == src.name}
            # Files known by (device, inode) first: a copy of one of them is then told apart.
            found_files = expand(src.paths, src.exclude)
            found_files.sort(key=lambda f: not self.catalog.rows_at((f.dev, f.ino)))
            for found in found_files:
                fkey = (src.name, found.dev, found.ino)
                found_keys.add(fkey)
                if fkey in self.busy:
                    continue
                tf = self.files.get(fkey)
                if tf is not None:
                    if tf.packed is None and (not tf.live or tf.path != found.path):
                        self._relive(tf, found.path)
                    continue
                if self._static.get(fkey) == found.size:
                    continue
                if room <= 0:
                    # At the descriptor cap: the rest waits for the next pass (soon), once
                    # what was just opened is read and parked.
                    self.incomplete = True
                    continue
                kind = compression_of(found.path)
                if kind is not None:
                    open_rows = {t.row.id for t in self.files.values()}
                    res = self.catalog.open_packed(
                        found.path, src.name, kind, (found.dev, found.ino), open_rows
                    )
                    if res == DEFER:
                        continue
                    self._static[fkey] = found.size
                    if isinstance(res, TrackedFile):
                        opened.append(self._register(res))
                    continue
                for tf in self.catalog.open_plain(found.path, src.name, claimed, reading):
                    claimed.add(tf.key)
                    reading[tf.row.id] = tf
                    opened.append(self._register(tf))
                    room -= 1
        if not self._recovered:
            self._recovered = True
            opened.extend(self._recover())
        if not self.incomplete:
            self._unwatch(found_keys)
        self._mark_gone(found_keys)
        now = self._clock()
        if now - self._last_forget >= FORGET_EVERY:
            self._last_forget = now
            self.catalog.forget(self._wall() - self.config.state.forget_files_after)
        self.catalog.first_start = False
        self.discover_seconds = self._clock() - started
        return opened

    def _recover(self) -> list[TrackedFile]:
        """Saved files still being read at the last stop but not found by the globs."""
        sources = {s.name for s in self.config.sources}
        open_rows = {tf.row.id for tf in self.files.values()}
        # Files of a backfill job the daemon takes up again: the job resumes them, in slices.
        open_rows |= {
            r.id for r in self.catalog.rows.values() if (r.source, r.dev, r.ino) in self.busy
        }
        found = recover_saved(self.catalog, sources, open_rows, self._claimed)
        return [self._register(tf) for tf in found]

    def _claimed(self, source: str) -> set[Key]:
        """(device, inode) of the files a source is reading now."""
        return {(d, i) for (s, d, i) in self.files if s == source}

    def _unwatch(self, found_keys: set[FKey]) -> None:
        """Live files still at their path that the globs no longer match (an exclude or a glob
        removed by a reload) are closed; their positions stay saved."""
        for fkey, tf in list(self.files.items()):
            if tf.live and not tf.deleted and fkey not in found_keys and not self._moved(tf):
                log.info("file_unwatched", path=tf.path, source=tf.row.source)
                self._close(tf, "done")

    def _mark_gone(self, found_keys: set[FKey]) -> None:
        for row in self.catalog.rows.values():
            if row.gone_since is None:
                fkey = (row.source, row.dev, row.ino)
                if fkey not in found_keys and fkey not in self.files:
                    self.catalog.gone(row)

    def _register(self, tf: TrackedFile) -> TrackedFile:
        fkey = (tf.row.source, tf.row.dev, tf.row.ino)
        self.files[fkey] = tf
        self._warm.add(fkey)
        return tf

    def _relive(self, tf: TrackedFile, path: str) -> None:
        """A tracked file is (again) at a path its source's globs match."""
        tf.live, tf.left_at, tf.path = True, None, path
        self.catalog.seen(tf.row, path, "live")

    def _room(self, now: float) -> int:
        """Park fully read live files, least recently grown first, until an eighth of the
        descriptor cap is free for new files (half while new files wait for room); returns how
        many may be opened now."""
        opened = [tf for tf in self.files.values() if tf.fd >= 0]
        free = self.max_open // 2 if self.incomplete else self.max_open // 8
        excess = len(opened) - (self.max_open - free)
        if excess > 0:
            idle = [tf for tf in opened if tf.live and tf.pos >= tf.size and tf.grew_at < now]
            idle.sort(key=lambda tf: tf.grew_at)
            for tf in idle[:excess]:
                tf.close()  # fd = -1: parked; reopened by identity when its path shows growth
            opened = [tf for tf in opened if tf.fd >= 0]
        return self.max_open - len(opened)

    def settle(self) -> None:
        """After the pipeline committed: record the files closed meanwhile as finished."""
        closing, self._closing = self._closing, []
        for row, state in closing:
            self.catalog.retire(row, state)
            self.catalog.gone(row)  # until a glob finds it again (then it is seen anew)

    def _unpark(self, tf: TrackedFile) -> bool:
        """Reopen a parked file if it grew. A file no longer at its path (rotated while parked)
        is looked for among its siblings, as at a restart."""
        reopened = tf.reopen(self.catalog.max_line_bytes)
        if reopened is not None:
            return reopened
        del self.files[(tf.row.source, *tf.key)]
        found = find_copy(self.catalog, tf.row, self._claimed(tf.row.source))
        if found is not None:
            self._register(found)
        else:
            self.catalog.retire(tf.row, "done")
        return False

    # -- reading ---------------------------------------------------------------------------

    def nudge(self, paths: set[str]) -> bool:
        """watchfiles named these paths. Returns True when one is not a tracked file's (a new
        file, or a rename target: discovery should run)."""
        hit = {fkey for fkey, tf in self.files.items() if tf.path in paths}
        hit_paths = {self.files[fkey].path for fkey in hit}
        self._warm |= hit
        self._nudged |= hit_paths
        return not paths <= hit_paths

    def poll(self, sweep: bool, paths: bool = True) -> Iterator[Polled]:
        """Appended complete lines of every file (sweep; `paths`: check each is still at its
        path) or of warm ones (hot, rotated, nudged); older generations first."""
        now = self._clock()
        nudged, self._nudged = self._nudged, set()
        keys = list(self.files) if sweep else [k for k in self._warm if k in self.files]
        todo = sorted((self.files[k] for k in keys), key=lambda t: t.live)
        warm: set[FKey] = set()
        self.behind = False
        for tf in todo:
            fkey = (tf.row.source, *tf.key)
            nudge = tf.path in nudged
            yield from self._poll_one(tf, now, sweep or nudge, (sweep and paths) or nudge)
            if self.files.get(fkey) is tf and (not tf.live or now - tf.grew_at < HOT_WINDOW):
                warm.add(fkey)
        # Files registered while polling (a truncation's new content, a recovered copy) stay warm.
        self._warm = warm | (self._warm - set(keys))
        self.hot = bool(self._warm)

    def hold_only(self) -> Iterator[Polled]:
        """Reading is paused (the outbox is full, SPEC §5.4): read nothing, but notice files
        that left their path, and give up rotated files held open past `max_rotated_hold`
        (their unread lines are dropped, counted and logged) so descriptors stay bounded."""
        now = self._clock()
        self.behind = False
        for tf in list(self.files.values()):
            if tf.packed is not None or tf.parked or tf.fd < 0:
                continue
            if tf.live:
                if self._moved(tf):
                    self._left(tf, now)
                continue
            if tf.left_at is None or now - tf.left_at < self.config.max_rotated_hold:
                continue
            try:
                size = os.fstat(tf.fd).st_size
            except OSError:
                continue
            if tf.pos < size:
                log.warning(
                    "rotated_hold_expired",
                    path=tf.path,
                    source=tf.row.source,
                    unread_bytes=size - tf.pos,
                    hint="the outbox stayed full longer than max_rotated_hold: the unread rest of "
                    "this rotated file is dropped (counted in trackd_dropped_total)",
                )
                yield from self._drop_held(tf, size)

    def _poll_one(
        self, tf: TrackedFile, now: float, check: bool, paths: bool = True
    ) -> Iterator[Polled]:
        """`check`: a parked file too; `paths`: see whether it left its path."""
        if tf.packed is not None:
            yield from self._drain_packed(tf)
            return
        if tf.parked and not (check and self._unpark(tf)):
            return
        try:
            st = os.fstat(tf.fd)
        except OSError:
            self._close(tf, "done")
            return
        size = st.st_size
        if st.st_nlink == 0 and not tf.deleted:
            self._deleted(tf, size, now)
        if size < tf.pos or (size != tf.size and tf.rewritten()):
            yield from self._truncated(tf, st, now)
            return
        tf.size = size
        if size > tf.pos:
            yield from self._read_grown(tf, size, now)
        if tf.live:
            if paths and self._moved(tf):
                self._left(tf, now)
            return
        yield from self._rotated(tf, size, now)

    def _deleted(self, tf: TrackedFile, size: int, now: float) -> None:
        tf.deleted = True
        log.info("file_deleted", path=tf.path, source=tf.row.source, unread=size - tf.pos)
        if tf.live:
            self._left(tf, now)

    def _read_grown(self, tf: TrackedFile, size: int, now: float) -> Iterator[Polled]:
        """Read what was appended (at most READ_BUDGET a poll: `behind` says there is more)."""
        tf.grew_at = now
        for split in tf.read(size, READ_BUDGET):
            yield tf, split
        if tf.pos < size:
            self.behind = True
        if tf.grow_fingerprint():
            self.catalog.store.update(tf.row)

    def _rotated(self, tf: TrackedFile, size: int, now: float) -> Iterator[Polled]:
        """SPEC §5.3: a rotated generation is read while it grows, closed once idle for
        `rotate_wait` (or deleted); past `max_rotated_hold` what is still unread is dropped."""
        held = tf.left_at is not None and now - tf.left_at >= self.config.max_rotated_hold
        if held and tf.pos < size:
            yield from self._drop_held(tf, size)
            return
        if tf.pos < size:
            return  # more to read at the next poll
        if not (tf.deleted or held or now - tf.grew_at >= self.config.rotate_wait):
            return
        if held:
            log.warning(
                "rotated_hold_expired",
                path=tf.path,
                source=tf.row.source,
                dropped_lines=0,
                hint="the rotated file still grew after max_rotated_hold: lines its writer "
                "appends from now on are not read (make the app reopen its log on rotation)",
            )
        final = tf.flush()
        if final is not None:
            yield tf, final
        self._close(tf, "deleted" if tf.deleted else "done")

    def _drain_packed(self, tf: TrackedFile) -> Iterator[Polled]:
        for split in tf.read_packed():
            yield tf, split
        self._close(tf, "done")

    def _drop_held(self, tf: TrackedFile, size: int) -> Iterator[Polled]:
        """A rotated file held open past `max_rotated_hold` while behind: drop what is unread
        (counted, logged), commit its position at its end, close it."""
        lines, split = tf.drop_unread(size)
        self.dropped_hold += lines
        yield tf, split
        self._close(tf, "done")

    def _truncated(self, tf: TrackedFile, st: os.stat_result, now: float) -> Iterator[Polled]:
        """The file lost the content being read: recover the unread tail from a copy, count what
        is lost, read the new content from 0."""
        row = tf.row
        log.warning(
            "file_truncated" if st.st_size < tf.pos else "file_rewritten",
            path=tf.path,
            source=row.source,
            offset=tf.splitter.offset,
            size=st.st_size,
            hint=TRUNCATED,
        )
        del self.files[(row.source, *tf.key)]
        fd, tf.fd = tf.fd, -1  # the descriptor now belongs to the new content
        copy, fresh = self.catalog.truncated(row, tf.path, fd, st, self._claimed(row.source))
        # Bytes seen in the file but neither read nor in the copy are lost; bytes written after
        # the copy was taken and before the truncation were never seen and cannot be counted.
        covered = tf.splitter.offset if copy is None else max(tf.pos, copy.size)
        if copy is not None and copy.packed is not None:
            covered = tf.size
        self.catalog.count_gap(row, tf.size - covered, tf.avg_line(), tf.path)
        self._register(fresh)
        if copy is not None:
            self._register(copy)
            yield from self._poll_one(copy, now, True)
        yield from self._poll_one(fresh, now, True)

    def _moved(self, tf: TrackedFile) -> bool:
        try:
            st = os.stat(tf.path)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return (st.st_dev, st.st_ino) != tf.key

    def _left(self, tf: TrackedFile, now: float) -> None:
        """The file is no longer at its path (renamed or deleted): a rotated generation now."""
        tf.live, tf.left_at = False, now
        tf.grew_at = max(tf.grew_at, now - HOT_WINDOW)  # the rotate_wait clock starts no earlier
        log.info("file_rotated", path=tf.path, source=tf.row.source, offset=tf.splitter.offset)
        self.catalog.seen(tf.row, tf.row.cur_path or tf.path, "rotated")

    def _close(self, tf: TrackedFile, state: str) -> None:
        """Close a finished file. Its row is retired by `settle`, after the commit of the lines
        read last (a crash before that commit must find it still being read)."""
        self.files.pop((tf.row.source, *tf.key), None)
        tf.close()
        self._closing.append((tf.row, state))
        where = {"path": tf.path, "source": tf.row.source, "offset": tf.splitter.offset}
        log.info("file_closed", **where, state=state)

    # -- reporting and lifecycle -----------------------------------------------------------

    def lag(self) -> list[tuple[str, str, int]]:
        """(source, path, bytes seen but not yet read) per tracked file, without a syscall."""
        return [
            (tf.row.source, tf.path, max(0, tf.size - tf.splitter.offset))
            for tf in self.files.values()
        ]

    def watch_dirs(self) -> tuple[list[str], bool]:
        """Directories to watch for the configured globs, and whether recursively."""
        return watch_dirs([p for src in self.config.sources for p in src.paths])

    def rescan(self) -> None:
        """After a reload: the next discovery also looks for saved files of (re)added sources
        among rotated siblings, as at start."""
        self._recovered = False
        self._static.clear()

    def drop_source(self, name: str) -> None:
        """A source was removed by a reload: close its files (their positions stay saved)."""
        for fkey, tf in list(self.files.items()):
            if fkey[0] == name:
                del self.files[fkey]
                tf.close()

    def close_all(self) -> None:
        for tf in self.files.values():
            tf.close()
        self.files.clear()
