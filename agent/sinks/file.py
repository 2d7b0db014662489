"""The `file` sink (SPEC §4): compact JSON lines into a file (exactly once) or stdout (at least once).

For a regular file each batch is appended and fsynced, then the outbox rows are deleted and the
file's (device, inode) and new length committed in one transaction. A crash between the two leaves
the file longer than recorded: on start it is truncated back, and the rows, still in the outbox, are
written again. A file replaced meanwhile (rotated away, deleted) is left alone and recorded afresh.

A write that fails (a full disk under the sink: ENOSPC part-way through a chunk, or at fsync)
takes its own bytes back before raising SinkError, so no torn line stays behind; a cut that
fails itself (an I/O error) is made again before the next write. The file is therefore never
longer than its committed length plus the one chunk in flight.
"""

from __future__ import annotations

import contextlib
import errno
import os

import structlog

from agent.config.paths import file_sink_problem
from agent.errors import EXIT_CONFIG, SinkError, StartupError
from agent.state.sinkfile import SinkFileRecord

log = structlog.get_logger("trackd.sink")

STDOUT = "-"
#: Opening fails for one of these: the path or its directory is wrong, not a passing condition
#: (a full disk is one, and stays a runtime SinkError: systemd restarts, and it may pass).
_SETUP_ERRNOS = frozenset(
    (errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.EROFS,
     errno.ELOOP, errno.ENAMETOOLONG)
)  # fmt: skip


class SinkSetupError(SinkError, StartupError):
    """The sink file cannot be opened because of where it is (a missing or unwritable
    directory, a directory in its place): a startup failure, exit 3 (SPEC §6), not a crash
    systemd would restart into again."""

    exit_code = EXIT_CONFIG


class FileSink:
    """A `DirectSink`: the file is the outbox (SPEC §4 allows it), so a chunk's messages are
    appended and fsynced, then its positions and the new file length commit in one transaction.
    No outbox rows, no sender."""

    name = "file"

    def __init__(self, path: str) -> None:
        self._path = path
        self._fd: int | None = None
        self._dev = 0
        self._ino = 0
        self._length = 0
        self._pending_length = 0
        #: Bytes past `_length` may be in the file (an abort whose cut failed): cut first.
        self._must_cut = False

    def describe(self) -> str:
        return "stdout" if self._path == STDOUT else self._path

    @property
    def path(self) -> str:
        return self._path

    def open(self, recorded: SinkFileRecord | None) -> SinkFileRecord | None:
        """Open for appending; cut bytes past the `recorded` length (written, never committed).
        Returns the record to save in the opening transaction (None for stdout)."""
        if self._path == STDOUT:
            self._fd = 1
            return None
        try:
            fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            if exc.errno in _SETUP_ERRNOS:
                why = file_sink_problem(self._path) or exc.strerror
                raise SinkSetupError(
                    f"sink.path: cannot open the sink file {self._path}: {why}"
                ) from None
            raise SinkError(f"cannot open sink file {self._path}: {exc.strerror}") from None
        st = os.fstat(fd)
        row = recorded
        length = st.st_size
        if row is not None and (row.dev, row.ino) == (st.st_dev, st.st_ino):
            committed = row.length
            if st.st_size > committed:
                # Written but not committed before a crash: those messages are still in the
                # outbox and will be written again, so cut them off here.
                os.ftruncate(fd, committed)
                os.fsync(fd)
                log.info(
                    "sink_file_truncated_to_committed",
                    path=self._path,
                    size=st.st_size,
                    committed=committed,
                )
                length = committed
            elif st.st_size < committed:
                log.warning(
                    "sink_file_shorter_than_committed",
                    path=self._path,
                    size=st.st_size,
                    committed=committed,
                )
        elif row is not None:
            log.info("sink_file_replaced", path=self._path, size=st.st_size)
        self._fd, self._dev, self._ino, self._length = fd, st.st_dev, st.st_ino, length
        self._pending_length = length
        return SinkFileRecord(self._path, st.st_dev, st.st_ino, length)

    def write(self, bodies: list[bytes]) -> None:
        """Append and fsync a chunk's messages (before the chunk's transaction)."""
        fd = self._fd
        if fd is None:
            raise SinkError("file sink used before open()")
        bodies.append(b"")  # the final newline, without copying the joined chunk once more
        try:
            data = memoryview(b"\n".join(bodies))
        finally:
            bodies.pop()
        if self._must_cut:
            self._cut()
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            if fd != 1:
                os.fsync(fd)
        except BrokenPipeError:
            raise SinkError("stdout was closed (the reader of trackd's output went away)") from None
        except OSError as exc:
            if fd != 1:
                # A full disk part-way through: take the torn chunk back (truncating frees
                # space, so it works on a full disk); the caller retries the whole chunk.
                self._must_cut = True
                with contextlib.suppress(SinkError):
                    self._cut()
            raise SinkError(f"cannot write sink file {self.describe()}: {exc.strerror}") from None
        self._pending_length = self._length + len(data)

    def pending_record(self) -> SinkFileRecord | None:
        """The length to commit with the chunk that `write` appended (None for stdout)."""
        if self._fd in (None, 1):
            return None
        return SinkFileRecord(self._path, self._dev, self._ino, self._pending_length)

    def committed(self) -> None:
        """The chunk's transaction committed: its bytes are delivered."""
        self._length = self._pending_length

    def abort(self) -> None:
        """The chunk's transaction failed: cut the file back to its committed length, so the
        retry appends those messages once (stdout cannot take bytes back: at least once). Never
        raises: a cut that fails is made again before the next write."""
        if self._fd in (None, 1):
            return
        self._pending_length = self._length
        self._must_cut = True
        try:
            self._cut()
        except SinkError as exc:
            log.error("sink_file_cut_failed", path=self._path, error=str(exc))

    def _cut(self) -> None:
        """Truncate to the committed length (and fsync); SinkError when the system refuses."""
        fd = self._fd
        assert fd is not None and fd != 1
        try:
            os.ftruncate(fd, self._length)
            os.fsync(fd)
        except OSError as exc:
            raise SinkError(
                f"cannot cut sink file {self._path} back to its committed length "
                f"{self._length}: {exc.strerror}"
            ) from None
        self._must_cut = False

    def close(self) -> None:
        if self._fd is not None and self._fd != 1:
            os.close(self._fd)
        self._fd = None
