"""The file sink under a full disk (issue 13 #1): a write or fsync that fails half-way leaves no
torn line, and the retry appends the chunk exactly once, so the committed length is the file size.

Faults are injected at the system-call seam: `os.write` / `os.fsync` / `os.ftruncate` fail for the
sink file's descriptor only (found by its /proc link), every other descriptor is untouched.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.errors import SinkError
from agent.state import sinkfile
from tests.sinks.support import deliver, opened

pytestmark = pytest.mark.timeout(20)


@dataclass
class DiskFull:
    """Makes the sink file's next `times` calls of `call` fail with ENOSPC; a `write` first
    writes `partial` bytes of what it was given (a torn line), as a filling disk does."""

    target: str
    call: str = "write"
    times: int = 1
    partial: int = 0
    failed: int = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real = getattr(os, self.call)

        def faulty(fd: int, *args: Any) -> Any:
            if self.failed < self.times and _path_of(fd) == self.target:
                self.failed += 1
                if self.call == "write" and self.partial:
                    real(fd, bytes(args[0])[: self.partial])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(fd, *args)

        monkeypatch.setattr(os, self.call, faulty)


def _path_of(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def committed(conn: sqlite3.Connection, out: Path) -> int:
    record = sinkfile.load(conn, str(out))
    assert record is not None
    return record.length


FIRST = b'{"n":1}\n'
CHUNK = [b'{"n":2,"pad":"' + b"x" * 40 + b'"}', b'{"n":3}']
CHUNK_BYTES = b"\n".join(CHUNK) + b"\n"

#: Where a full disk can hit a chunk: before its first byte, part-way (a torn line), or at fsync.
FAILURE_POINTS: dict[str, Callable[[str], DiskFull]] = {
    "write_before_first_byte": lambda p: DiskFull(p),
    "write_torn_after_1_byte": lambda p: DiskFull(p, partial=1),
    "write_torn_mid_line": lambda p: DiskFull(p, partial=20),
    "write_torn_after_first_line": lambda p: DiskFull(p, partial=len(CHUNK[0]) + 1),
    "write_torn_one_byte_short": lambda p: DiskFull(p, partial=len(CHUNK_BYTES) - 1),
    "fsync": lambda p: DiskFull(p, call="fsync"),
    "write_fails_three_times": lambda p: DiskFull(p, times=3, partial=7),
}


@pytest.mark.parametrize("point", FAILURE_POINTS)
def test_a_failed_write_leaves_the_file_at_its_committed_length(
    tmp_path: Path, conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    """A write or fsync that fails (disk full) raises SinkError and leaves no byte of the chunk:
    no torn line, the file is exactly its committed length."""
    out = tmp_path / "out.jsonl"
    sink = opened(conn, out)
    deliver(conn, sink, FIRST.rstrip(b"\n"))
    FAILURE_POINTS[point](str(out)).install(monkeypatch)
    with pytest.raises(SinkError, match="No space left"):
        deliver(conn, sink, *CHUNK)
    assert out.read_bytes() == FIRST
    assert committed(conn, out) == out.stat().st_size


@pytest.mark.parametrize("point", FAILURE_POINTS)
def test_the_retry_after_a_full_disk_appends_the_chunk_once(
    tmp_path: Path, conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    """Retrying a chunk until the disk has room again delivers it exactly once, and the
    committed length is the file's size."""
    out = tmp_path / "out.jsonl"
    sink = opened(conn, out)
    deliver(conn, sink, FIRST.rstrip(b"\n"))
    fault = FAILURE_POINTS[point](str(out))
    fault.install(monkeypatch)
    for _attempt in range(fault.times + 1):
        try:
            deliver(conn, sink, *CHUNK)
            break
        except SinkError:
            continue
    assert fault.failed == fault.times
    assert out.read_bytes() == FIRST + CHUNK_BYTES
    assert committed(conn, out) == out.stat().st_size


def test_a_cut_that_failed_is_made_before_the_next_write(
    tmp_path: Path, conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When even cutting an aborted chunk back fails, the next write cuts first: the chunk is
    never behind bytes that were not committed."""
    out = tmp_path / "out.jsonl"
    sink = opened(conn, out)
    deliver(conn, sink, FIRST.rstrip(b"\n"))
    sink.write(CHUNK)  # written; then the state transaction fails ...
    real = os.ftruncate
    cuts: list[int] = []

    def refuse_once(fd: int, length: int) -> None:
        if not cuts:
            cuts.append(length)
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(fd, length)

    monkeypatch.setattr(os, "ftruncate", refuse_once)
    sink.abort()  # ... and taking the bytes back fails too
    deliver(conn, sink, *CHUNK)
    assert out.read_bytes() == FIRST + CHUNK_BYTES
    assert committed(conn, out) == out.stat().st_size
