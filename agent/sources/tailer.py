"""Live tailing: discover files, read what was appended, follow renames and truncations.

The tailer is synchronous and runs on the pipeline thread; the supervisor wakes it on watchfiles
events and on a short timer (watchfiles is a hint, not the clock). Each `poll()` reads at most a
budget of bytes per file so one busy file cannot starve the others.

Rotation by rename: the open descriptor keeps reading the old file while it grows, until it has
been idle for `rotate_wait`, even when no glob matches its new name; the new file at the path is
then a new file, read from 0. Truncation (size below the read position): read again from 0.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import structlog

from agent.config import Config
from agent.sources.discovery import expand
from agent.sources.splitter import LineSplitter, Split
from agent.sources.tracked import PositionStore, TrackedFile, open_found
from agent.state.files import FileRow

log = structlog.get_logger("trackd.tailer")

READ_BLOCK = 1 << 20
PER_FILE_BUDGET = 4 << 20


class Tailer:
    def __init__(
        self,
        config: Config,
        store: PositionStore,
        saved: list[FileRow],
        *,
        first_start: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._store = store
        self._saved = saved
        self._first_start = first_start
        self._clock = clock
        #: Open files by (dev, inode), with the source they belong to.
        self.files: dict[tuple[int, int], TrackedFile] = {}
        #: Files renamed or deleted away from their path: (file, monotonic time of last growth).
        self.rotated: dict[tuple[int, int], float] = {}
        self.truncations = 0

    def discover(self) -> list[TrackedFile]:
        """Open files that appeared; returns the newly opened ones."""
        opened = []
        for src in self._config.sources:
            for found in expand(src.paths, src.exclude):
                key = (found.dev, found.ino)
                if key in self.files:
                    continue
                tf = open_found(
                    found,
                    src.name,
                    self._saved,
                    self._store,
                    first_start=self._first_start,
                    start_at=self._config.start_at,
                    max_line_bytes=self._config.max_line_bytes,
                )
                if tf is not None:
                    self.files[key] = tf
                    opened.append(tf)
        self._first_start = False
        return opened

    def poll(self) -> Iterator[tuple[TrackedFile, Split]]:
        """Read appended complete lines from every open file (bounded per file)."""
        now = self._clock()
        for key, tf in list(self.files.items()):
            try:
                st = os.fstat(tf.fd)
            except OSError:
                self._close(key)
                continue
            pos = tf.splitter.offset + tf.splitter.pending_bytes
            if st.st_size < tf.splitter.offset:
                self._truncated(tf, st.st_size)
                pos = 0
            grew = False
            budget = PER_FILE_BUDGET
            while pos < st.st_size and budget > 0:
                data = os.pread(tf.fd, min(READ_BLOCK, st.st_size - pos, budget), pos)
                if not data:
                    break
                pos += len(data)
                budget -= len(data)
                grew = True
                if tf.grow_fingerprint(pos):
                    self._store.update(tf.row)
                split = tf.splitter.feed(data)
                if split is not None:
                    yield tf, split
            self._check_rotation(key, tf, now, grew)

    def _truncated(self, tf: TrackedFile, size: int) -> None:
        log.warning(
            "file_truncated",
            path=tf.path,
            source=tf.row.source,
            offset=tf.splitter.offset,
            size=size,
        )
        self.truncations += 1
        tf.reset_content(LineSplitter(0, self._config.max_line_bytes))
        self._store.update(tf.row)  # safe: the caller commits after every poll

    def _check_rotation(
        self, key: tuple[int, int], tf: TrackedFile, now: float, grew: bool
    ) -> None:
        try:
            st = os.stat(tf.path)
            moved = (st.st_dev, st.st_ino) != key
        except FileNotFoundError:
            moved = True
        except OSError:
            return
        if not moved:
            return
        if key not in self.rotated:
            log.info("file_rotated", path=tf.path, source=tf.row.source)
            self.rotated[key] = now
        elif grew:
            self.rotated[key] = now
        elif now - self.rotated[key] >= self._config.rotate_wait:
            self._close(key)

    def _close(self, key: tuple[int, int]) -> None:
        tf = self.files.pop(key, None)
        self.rotated.pop(key, None)
        if tf is not None:
            tf.row.state = "rotated"
            tf.row.cur_path = None
            tf.row.gone_since = time.time()
            self._store.update(tf.row)
            tf.close()
            log.info("file_closed", path=tf.path, source=tf.row.source, offset=tf.splitter.offset)

    def lag(self) -> list[tuple[str, str, int]]:
        """(source, path, unread bytes) per open file."""
        out = []
        for tf in self.files.values():
            try:
                size = os.fstat(tf.fd).st_size
            except OSError:
                continue
            out.append((tf.row.source, tf.path, max(0, size - tf.splitter.offset)))
        return out

    def watch_dirs(self) -> list[str]:
        """Existing directories to watch for changes (the fixed prefix of each glob)."""
        dirs = set()
        for src in self._config.sources:
            for pattern in src.paths:
                d = os.path.dirname(pattern)
                while d and any(ch in d for ch in "*?["):
                    d = os.path.dirname(d)
                if d and os.path.isdir(d):
                    dirs.add(d)
        return sorted(dirs)

    def close_all(self) -> None:
        for tf in self.files.values():
            tf.close()
        self.files.clear()
        self.rotated.clear()
