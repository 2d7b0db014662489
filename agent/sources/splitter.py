"""Cutting a byte stream into complete lines (SPEC §2, §5.3).

Reading is binary; only `\\n` ends a line (a CRLF's `\\r` is stripped later, a bare `\\r` is data).
A partial last line waits for its newline. A line longer than `max_line_bytes` with no newline in
sight is dropped as it streams in (memory stays bounded even for a 100 MB line) and counted when its
newline arrives; lines over the limit inside a block are left to the pipeline, which sees each
line's length anyway while it computes offsets.
"""

from __future__ import annotations

from typing import NamedTuple


class Split(NamedTuple):
    #: Offset of the first byte of `lines[0]`.
    start: int
    lines: list[bytes]
    #: Offset just past the last consumed byte.
    end: int
    #: Over-long lines that ended inside this feed (dropped while streaming).
    too_long: int
    #: Up to 64 bytes just before `end` (the offset marker, SPEC §5.3).
    before: bytes


class LineSplitter:
    """Stateful splitter for one file: `feed(data)` with consecutive bytes from `offset`."""

    __slots__ = ("_dropping", "_max", "_pending", "offset")

    def __init__(self, offset: int, max_line_bytes: int) -> None:
        #: Offset of the first byte not yet consumed (the start of the pending partial line).
        self.offset = offset
        self._max = max_line_bytes
        self._pending = b""
        #: Bytes of an over-long line dropped so far (its newline not yet seen), or 0.
        self._dropping = 0

    @property
    def pending_bytes(self) -> int:
        """Bytes read but not yet part of a complete line."""
        return len(self._pending) + self._dropping

    def feed(self, data: bytes) -> Split | None:
        """Consume `data`; returns the complete lines it finished, or None if it finished none."""
        too_long = 0
        before = b""
        if self._dropping:
            nl = data.find(b"\n")
            if nl < 0:
                self._dropping += len(data)
                return None
            self.offset += self._dropping + nl + 1
            self._dropping = 0
            too_long = 1
            before = data[max(0, nl - 63) : nl + 1]
            data = data[nl + 1 :]
            if not data:
                return Split(self.offset, [], self.offset, too_long, before)
        buf = self._pending + data if self._pending else data
        last = buf.rfind(b"\n")
        if last < 0:
            if len(buf) > self._max:
                # No newline yet and already too long: stop buffering, drop until the newline.
                self._dropping = len(buf)
                self._pending = b""
            else:
                self._pending = buf
            if too_long:
                return Split(self.offset, [], self.offset, too_long, before)
            return None
        start = self.offset
        lines = buf[:last].split(b"\n")
        self._pending = buf[last + 1 :]
        if len(self._pending) > self._max:
            self._dropping = len(self._pending)
            self._pending = b""
        self.offset = start + last + 1
        return Split(start, lines, self.offset, too_long, buf[max(0, last - 63) : last + 1])

    def take_partial(self) -> bytes:
        """The pending partial line (for a file that is no longer live: flushed as a line)."""
        data, self._pending = self._pending, b""
        return data

    def take_dropping(self) -> int:
        """Bytes of an over-long final line that never got its newline (the file is no longer
        live): the offset moves past them; the caller counts the line as too long."""
        dropped, self._dropping = self._dropping, 0
        self.offset += dropped
        return dropped

    def __repr__(self) -> str:
        return f"LineSplitter(offset={self.offset}, pending={self.pending_bytes})"
