"""An open file being read (`TrackedFile`), and how lines are read from it.

A TrackedFile holds one saved row (identity + committed position), a descriptor (or a decompressing
reader for a compressed generation) and a line splitter. Its read position can run ahead of the
committed one (a partial last line waits in the splitter); the committed one only moves in the
pipeline's chunk transaction (SPEC §5.2).
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from dataclasses import dataclass

import structlog

from agent.records import FileRef
from agent.sources.compressed import DecompressError, PackedReader
from agent.sources.fileid import (
    FP_MAX,
    MARKER_MAX,
    fingerprint,
    first_line_fp,
    first_line_of,
    matches_fingerprint,
    read_at,
)
from agent.sources.splitter import LineSplitter, Split
from agent.state.files import FileRow

log = structlog.get_logger("trackd.sources")

READ_BLOCK = 1 << 20
#: A file's first read: reads double from here up to READ_BLOCK. A merged read (run --once,
#: backfill) holds one pending block per file until the merge reaches it, so with many files
#: it is the first block's size that bounds memory (100 files: 892 -> 190 MiB peak RSS).
FIRST_BLOCK = 64 << 10

Key = tuple[int, int]


@dataclass(slots=True, eq=False)
class TrackedFile:
    """One file's reading state. `fd` is -1 while parked (the open-file cap) or compressed."""

    row: FileRow
    fd: int
    path: str
    splitter: LineSplitter
    #: At a path its source's globs match (False once renamed/deleted away, or a recovered copy).
    live: bool = True
    #: Set for a compressed generation: read once, from the row's offset to the end.
    packed: PackedReader | None = None
    #: Set once the first line is known (messageIds need it).
    ref: FileRef | None = None
    #: Bytes read so far (the splitter's offset plus what it holds back).
    pos: int = 0
    #: Up to 64 bytes just before `pos`: a live rewrite check (cheaper than a marker hash).
    before: bytes = b""
    #: Size at the last look.
    size: int = 0
    #: When the file last grew, and when it left its path (monotonic; None while live).
    grew_at: float = 0.0
    left_at: float | None = None
    #: Lines and bytes read since opened (for bytes-to-lines estimates).
    lines_read: int = 0
    bytes_read: int = 0
    #: Deleted (its last link gone): read to the end, then closed.
    deleted: bool = False
    #: The size of the next read (FIRST_BLOCK, doubling up to READ_BLOCK).
    block: int = FIRST_BLOCK

    def _step(self) -> int:
        step = self.block
        if step < READ_BLOCK:
            self.block = step * 2
        return step

    @property
    def key(self) -> Key:
        return (self.row.dev, self.row.ino)

    @property
    def parked(self) -> bool:
        return self.fd < 0 and self.packed is None

    def avg_line(self) -> float:
        """Average bytes per line read so far (a guess until some lines were read)."""
        return self.bytes_read / self.lines_read if self.lines_read else 200.0

    def ensure_ref(self) -> FileRef | None:
        """The FileRef, computing the first-line fingerprint once the first line is complete."""
        if self.ref is None:
            if self.row.line_fp is None:
                if self.fd < 0:
                    return None
                line = first_line_of(self.fd)
                if line is None:
                    return None
                self.row.line_fp = first_line_fp(line)
            self.ref = FileRef(self.row.id, self.row.source, self.row.path, self.row.line_fp)
        return self.ref

    def read(self, size: int, budget: int) -> Iterator[Split]:
        """Complete lines between `pos` and `size` (at most `budget` bytes read)."""
        fd = self.fd
        pos = self.pos
        feed = self.splitter.feed
        while pos < size and budget > 0:
            data = os.pread(fd, min(self._step(), size - pos, budget), pos)
            if not data:
                break
            pos += len(data)
            budget -= len(data)
            self.pos = pos
            self.before = (self.before + data[-MARKER_MAX:])[-MARKER_MAX:]
            split = feed(data)
            if split is not None:
                self.lines_read += len(split.lines) + split.too_long
                self.bytes_read += split.end - split.start
                yield split

    def read_packed(self) -> Iterator[Split]:
        """Every complete line of a compressed generation, then its final partial line. A damaged
        or incomplete archive ends early, logged: what was read before the damage stays read."""
        assert self.packed is not None
        # The decompressor hands out pieces of tens of KiB: they are gathered into blocks of
        # the read size, as a plain file is read (one worker job per block, not per piece).
        gathered: list[bytes] = []
        have = 0
        pieces = iter(self.packed.blocks())
        failure: Exception | None = None
        while True:
            try:
                data = next(pieces, None)
            except DecompressError as exc:
                failure = exc
                break
            if data is None:
                break
            gathered.append(data)
            have += len(data)
            while have >= self.block:
                joined = b"".join(gathered)
                step = self._step()
                rest = joined[step:]
                gathered = [rest] if rest else []
                have = len(rest)
                yield from self._feed_packed(joined[:step])
        if gathered:
            # The end of the archive — or what was decompressed before its damage: read too.
            yield from self._feed_packed(b"".join(gathered))
        if failure is not None:
            self._log_unreadable(failure)
            return
        final = self.flush()
        if final is not None:
            yield final

    def _log_unreadable(self, exc: Exception) -> None:
        assert self.packed is not None
        if self.packed.failed:
            log.error(
                "compressed_file_read_failed",
                path=self.path,
                source=self.row.source,
                offset=self.splitter.offset,
                error=self.packed.failed,
                hint="the file could not be read on (removed, no permission, or too many "
                "open files): it is not marked read, and the next backfill reads the rest",
            )
            return
        log.warning(
            "compressed_file_unreadable",
            path=self.path,
            source=self.row.source,
            offset=self.splitter.offset,
            error=str(exc),
            hint="a damaged or incomplete archive: the lines before the damage were read",
        )

    def _feed_packed(self, piece: bytes) -> Iterator[Split]:
        """One block of decompressed bytes into the splitter."""
        self.pos += len(piece)
        self.before = (self.before + piece[-MARKER_MAX:])[-MARKER_MAX:]
        split = self.splitter.feed(piece)
        if split is not None:
            self.lines_read += len(split.lines) + split.too_long
            self.bytes_read += split.end - split.start
            yield split

    def snapshot(self, limit: int, *, final: bool) -> Iterator[Split]:
        """`run --once`: complete lines up to byte `limit` (a compressed file: to its end). A last
        line without a newline is left for the next run — unless `final` (the file is no longer
        live and will not grow): then it is returned as a line of its own."""
        if self.packed is not None:
            yield from self.read_packed()
            return
        yield from self.read(limit, limit)
        if final:
            last = self.flush()
            if last is not None:
                yield last

    def drop_unread(self, size: int) -> tuple[int, Split]:
        """Skip everything up to `size` unread: (lines skipped, a split that moves the position
        to `size` without lines)."""
        lines = 0
        pos = self.pos
        while pos < size:
            data = os.pread(self.fd, min(READ_BLOCK, size - pos), pos)
            if not data:
                break
            lines += data.count(b"\n")
            pos += len(data)
        start = self.splitter.offset
        if pos > start and read_at(self.fd, pos - 1, 1) != b"\n":
            lines += 1  # the final partial line
        log.warning(
            "rotated_hold_expired",
            path=self.path,
            source=self.row.source,
            dropped_lines=lines,
            dropped_bytes=pos - start,
            hint="the rotated file was kept open for max_rotated_hold while trackd could not keep "
            "up (a full outbox); raise max_rotated_hold or fix the sink",
        )
        self.splitter.take_partial()
        marker = read_at(self.fd, max(0, pos - MARKER_MAX), min(pos, MARKER_MAX))
        self.splitter.offset = self.pos = pos
        return lines, Split(start, [], pos, 0, marker)

    def rewritten(self) -> bool:
        """Are the bytes before `pos` no longer the ones read (truncated and rewritten past it)?"""
        if not self.before or self.fd < 0:
            return False
        return read_at(self.fd, self.pos - len(self.before), len(self.before)) != self.before

    def flush(self) -> Split | None:
        """The held-back partial last line as a line of its own (the file is no longer live)."""
        start = self.splitter.offset
        if self.splitter.take_dropping():
            return Split(start, [], self.splitter.offset, 1, self.before)
        partial = self.splitter.take_partial()
        if not partial:
            return None
        if self.row.line_fp is None and start == 0:
            self.row.line_fp = first_line_fp(partial[:FP_MAX])
        self.splitter.offset = start + len(partial)
        self.lines_read += 1
        return Split(start, [partial], self.splitter.offset, 0, partial[-MARKER_MAX:])

    def grow_fingerprint(self) -> bool:
        """Extend the identity fingerprint while the file is under 1 KiB; True if it changed."""
        row = self.row
        if row.fp_len >= FP_MAX or self.pos <= row.fp_len or self.fd < 0:
            return False
        row.fp_len, row.fp_hash = fingerprint(read_at(self.fd, 0, FP_MAX))
        return True

    def reopen(self, max_line_bytes: int) -> bool | None:
        """A parked file: reopen it by identity if it grew since it was parked (True; reading
        resumes at the splitter's offset). False: not grown, or cannot be opened now. None: its
        path holds another file or none (it was rotated while parked)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        if (st.st_dev, st.st_ino) != self.key:
            return None
        if st.st_size == self.size:
            return False
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != self.key or not matches_fingerprint(
            fd, self.row.fp_len, self.row.fp_hash
        ):
            os.close(fd)
            return None
        offset = self.splitter.offset
        self.fd, self.pos = fd, offset
        self.splitter = LineSplitter(offset, max_line_bytes)
        self.before = read_at(fd, max(0, offset - MARKER_MAX), min(offset, MARKER_MAX))
        return True

    def close(self) -> None:
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1
        if self.packed is not None:
            self.packed.close()

    def __repr__(self) -> str:
        return f"TrackedFile(id={self.row.id}, {self.path!r}, pos={self.pos}, live={self.live})"


def default_max_open() -> int:
    """Half the soft descriptor limit (the rest is for the state database, sockets, the sink),
    at most 1024."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1024
    return max(16, min(1024, soft // 2))
