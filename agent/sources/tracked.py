"""Known files: matching what discovery finds to saved positions, and where to start reading.

A found file is the saved one when its (device, inode) match and its first bytes still match the
saved fingerprint; it then resumes at the saved offset — unless it shrank below it or the bytes
before it changed (the offset marker), which means it was truncated or rewritten: read from 0.
Anything else is a new file: read from 0, or from its end at the very first start with
`start_at: end`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from agent.records import FileRef
from agent.sources.discovery import Found
from agent.sources.fileid import (
    FP_MAX,
    fingerprint,
    first_line_fp,
    first_line_of,
    last_line_end,
    marker_ok,
    matches_fingerprint,
    read_at,
)
from agent.sources.splitter import LineSplitter
from agent.state.files import FileRow

log = structlog.get_logger("trackd.sources")


class PositionStore(Protocol):
    """Where file rows persist (the state database)."""

    def insert(self, row: FileRow) -> int: ...

    def update(self, row: FileRow) -> None: ...


@dataclass(slots=True)
class TrackedFile:
    """An open file being read: its saved row, descriptor and line splitter."""

    row: FileRow
    fd: int
    path: str
    splitter: LineSplitter
    #: Set once the first line is known (messageIds need it).
    ref: FileRef | None = None
    #: Truncation/rewrite detected when opening (for logs and the gap counter).
    restarted_from: int | None = None
    lines_skipped: int = 0
    extra: dict[str, object] = field(default_factory=dict)

    def ensure_ref(self) -> FileRef | None:
        """The FileRef, computing the first-line fingerprint once the first line is complete."""
        if self.ref is None:
            if self.row.line_fp is None:
                line = first_line_of(self.fd)
                if line is None:
                    return None
                self.row.line_fp = first_line_fp(line)
            self.ref = FileRef(self.row.id, self.row.source, self.row.path, self.row.line_fp)
        return self.ref

    def reset_content(self, splitter: LineSplitter) -> None:
        """The file was truncated or rewritten: read from 0 with a fresh fingerprint and ids."""
        self.splitter = splitter
        self.row.offset, self.row.marker_len, self.row.marker = 0, 0, None
        self.row.fp_len, self.row.fp_hash = fingerprint(read_at(self.fd, 0, FP_MAX))
        self.row.line_fp = None
        self.ref = None

    def grow_fingerprint(self, size: int) -> bool:
        """Extend the fingerprint while the file is shorter than 1 KiB; True if it changed."""
        if self.row.fp_len >= FP_MAX or size <= self.row.fp_len:
            return False
        self.row.fp_len, self.row.fp_hash = fingerprint(read_at(self.fd, 0, FP_MAX))
        return True

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


def open_found(
    found: Found,
    source: str,
    saved: list[FileRow],
    store: PositionStore,
    *,
    first_start: bool,
    start_at: str,
    max_line_bytes: int,
) -> TrackedFile | None:
    """Open a discovered file and decide where reading starts. None if it vanished meanwhile."""
    try:
        fd = os.open(found.path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        log.warning("file_open_failed", path=found.path, source=source, error=exc.strerror)
        return None
    st = os.fstat(fd)
    now = time.time()
    for row in saved:
        if row.source != source or (row.dev, row.ino) != (st.st_dev, st.st_ino):
            continue
        if not matches_fingerprint(fd, row.fp_len, row.fp_hash):
            continue  # inode reuse: a different file now lives at this inode
        restarted: int | None = None
        if st.st_size < row.offset:
            log.warning(
                "file_truncated", path=found.path, source=source, offset=row.offset, size=st.st_size
            )
            restarted = row.offset
        elif not marker_ok(fd, row.offset, row.marker_len, row.marker):
            log.warning("file_rewritten", path=found.path, source=source, offset=row.offset)
            restarted = row.offset
        if restarted is not None:
            row.offset, row.marker_len, row.marker = 0, 0, None
            row.fp_len, row.fp_hash = fingerprint(read_at(fd, 0, FP_MAX))
            row.line_fp = None
        row.cur_path = found.path
        row.gone_since = None
        row.updated = now
        store.update(row)
        tf = TrackedFile(row, fd, found.path, LineSplitter(row.offset, max_line_bytes))
        tf.restarted_from = restarted
        return tf
    head = read_at(fd, 0, FP_MAX)
    fp_len, fp_hash = fingerprint(head)
    offset = 0
    if first_start and start_at == "end":
        offset = last_line_end(fd, st.st_size)
    row = FileRow(
        id=0,
        source=source,
        path=found.path,
        cur_path=found.path,
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
        state="live",
    )
    row.id = store.insert(row)
    saved.append(row)
    log.info("file_new", path=found.path, source=source, offset=offset)
    return TrackedFile(row, fd, found.path, LineSplitter(offset, max_line_bytes))
