"""The `file` sink (SPEC §4): compact JSON lines into a file (exactly once) or stdout (at least once).

For a regular file each batch is appended and fsynced, then the outbox rows are deleted and the
file's (device, inode) and new length committed in one transaction. A crash between the two leaves
the file longer than recorded: on start it is truncated back, and the rows, still in the outbox, are
written again. A file replaced meanwhile (rotated away, deleted) is left alone and recorded afresh.
"""

from __future__ import annotations

import os
import sqlite3

import structlog

from agent.errors import SinkError
from agent.sinks.base import Delivered, Outcome

log = structlog.get_logger("trackd.sink")

STDOUT = "-"


class FileSink:
    """Delivered by the pipeline itself: the file is the outbox (SPEC §4 allows it), so a chunk's
    messages are appended and fsynced, then its positions and the new file length commit in one
    transaction. No outbox rows, no sender thread."""

    name = "file"
    max_batch = 50_000
    direct = True

    def __init__(self, path: str) -> None:
        self._path = path
        self._fd: int | None = None
        self._dev = 0
        self._ino = 0
        self._length = 0
        self._pending_length = 0

    def describe(self) -> str:
        return "stdout" if self._path == STDOUT else self._path

    def open(self, conn: sqlite3.Connection) -> None:
        if self._path == STDOUT:
            self._fd = 1
            return
        try:
            fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise SinkError(f"cannot open sink file {self._path}: {exc.strerror}") from None
        st = os.fstat(fd)
        row = conn.execute(
            "SELECT dev, ino, length FROM sink_file WHERE path = ?", (self._path,)
        ).fetchone()
        length = st.st_size
        if row is not None and (row[0], row[1]) == (st.st_dev, st.st_ino):
            recorded = int(row[2])
            if st.st_size > recorded:
                # Written but not committed before a crash: those messages are still in the
                # outbox and will be written again, so cut them off here.
                os.ftruncate(fd, recorded)
                os.fsync(fd)
                log.info(
                    "sink_file_truncated_to_committed",
                    path=self._path,
                    size=st.st_size,
                    committed=recorded,
                )
                length = recorded
            elif st.st_size < recorded:
                log.warning(
                    "sink_file_shorter_than_committed",
                    path=self._path,
                    size=st.st_size,
                    committed=recorded,
                )
        elif row is not None:
            log.info("sink_file_replaced", path=self._path, size=st.st_size)
        self._fd, self._dev, self._ino, self._length = fd, st.st_dev, st.st_ino, length
        conn.execute(
            "INSERT INTO sink_file (path, dev, ino, length) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (path) DO UPDATE SET dev = excluded.dev, ino = excluded.ino, "
            "length = excluded.length",
            (self._path, self._dev, self._ino, self._length),
        )

    def deliver(self, bodies: list[bytes]) -> Outcome:
        fd = self._fd
        if fd is None:
            raise SinkError("file sink used before open()")
        data = memoryview(b"\n".join(bodies) + b"\n")
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            if fd != 1:
                os.fsync(fd)
        except BrokenPipeError:
            raise SinkError("stdout was closed (the reader of trackd's output went away)") from None
        except OSError as exc:
            raise SinkError(f"cannot write sink file {self.describe()}: {exc.strerror}") from None
        self._pending_length = self._length + len(data)
        return Delivered()

    def committed(self, conn: sqlite3.Connection) -> None:
        if self._fd in (None, 1):
            return
        conn.execute(
            "UPDATE sink_file SET dev = ?, ino = ?, length = ? WHERE path = ?",
            (self._dev, self._ino, self._pending_length, self._path),
        )
        self._length = self._pending_length

    def abort(self) -> None:
        """The commit after `deliver` failed: cut the file back to its committed length, so
        the retry appends those messages once (stdout cannot take bytes back: at least once)."""
        if self._fd in (None, 1):
            return
        assert self._fd is not None
        os.ftruncate(self._fd, self._length)
        os.fsync(self._fd)
        self._pending_length = self._length

    def close(self) -> None:
        if self._fd is not None and self._fd != 1:
            os.close(self._fd)
        self._fd = None
