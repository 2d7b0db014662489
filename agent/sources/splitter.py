"""Cutting a byte stream into complete lines (SPEC §2, §5.3).

Reading is binary; only `\\n` ends a line (a CRLF's `\\r` is stripped later, a bare `\\r` is data).
A partial last line waits for its newline. A line longer than `max_line_bytes` with no newline in
sight is dropped as it streams in (memory stays bounded even for a 100 MB line) and counted when its
newline arrives; lines over the limit inside a block are left to the pipeline, which sees each
line's length anyway while it computes offsets.
"""

from __future__ import annotations

from typing import Any


class Split:
    """Complete lines of one feed: where they start and end, and how many over-long lines ended
    inside it. The lines are split from the block only when asked for (`lines`): a worker pool
    takes the block as it was read (`block`), and only the count is needed here."""

    __slots__ = ("_block", "_lines", "before", "end", "start", "too_long")

    def __init__(
        self, start: int, lines: list[bytes], end: int, too_long: int, before: bytes
    ) -> None:
        #: Offset of the first byte of `lines[0]`.
        self.start = start
        #: Offset just past the last consumed byte.
        self.end = end
        #: Over-long lines that ended inside this feed (dropped while streaming).
        self.too_long = too_long
        #: Up to 64 bytes just before `end` (the offset marker, SPEC §5.3).
        self.before = before
        self._lines: list[bytes] | None = lines
        self._block: bytes | None = None

    @classmethod
    def of_block(cls, start: int, block: bytes, end: int, too_long: int, before: bytes) -> Split:
        """A split of at least one line: `block` is the lines joined by `\\n` (without the
        last one's)."""
        split = cls(start, [], end, too_long, before)
        split._lines = None
        split._block = block
        return split

    @property
    def lines(self) -> list[bytes]:
        """The complete lines, without their `\\n`."""
        if self._lines is None:
            assert self._block is not None
            self._lines = self._block.split(b"\n")
        return self._lines

    @property
    def block(self) -> bytes:
        """The lines joined by `\\n`, as read (no copy for a split made from a block)."""
        if self._block is None:
            self._block = b"\n".join(self.lines)
        return self._block

    @property
    def count(self) -> int:
        """How many complete lines (without splitting them)."""
        if self._lines is not None:
            return len(self._lines)
        assert self._block is not None
        return self._block.count(b"\n") + 1

    def _key(self) -> tuple[Any, ...]:
        return (self.start, self.lines, self.end, self.too_long, self.before)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Split) and self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]  # mutable cache inside: not hashable

    def __repr__(self) -> str:
        return (
            f"Split(start={self.start}, lines={self.count}, end={self.end}, "
            f"too_long={self.too_long}, before={self.before!r})"
        )


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
        self._pending = buf[last + 1 :]
        if len(self._pending) > self._max:
            self._dropping = len(self._pending)
            self._pending = b""
        self.offset = start + last + 1
        before = buf[max(0, last - 63) : last + 1]
        return Split.of_block(start, buf[:last], self.offset, too_long, before)

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
