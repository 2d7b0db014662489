"""Compressed files (`.gz`, `.bz2`, `.xz`, detected by content): rotated generations read by their
decompressed bytes (SPEC §5.3).

A compressed file never grows, so it is read once: from the saved offset of the plain file it was
made from (matched by the fingerprint and offset marker of its decompressed content) to its end.
Offsets are offsets in the decompressed stream, as for messageIds (SPEC §3.4).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
from collections.abc import Iterator
from typing import IO, cast

from agent.sources.fileid import FP_MAX, MARKER_MAX, marker_matches

#: Magic numbers: compression is detected by content, never by the file name alone.
_MAGIC = ((b"\x1f\x8b", "gz"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"))
BLOCK = 1 << 20

#: What a damaged or still-being-written compressed file raises while it is decompressed.
DecompressError = (EOFError, OSError, lzma.LZMAError, ValueError)


def compression_of(path: str) -> str | None:
    """`gz`, `bz2` or `xz` when the file starts with that format's magic number, else None."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(6)
    except OSError:
        return None
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    return None


def open_stream(path: str, kind: str) -> IO[bytes]:
    """A binary file object of the decompressed content (seekable forward)."""
    if kind == "gz":
        return cast(IO[bytes], gzip.GzipFile(path, "rb"))  # typeshed: GzipFile is no IO[bytes]
    if kind == "bz2":
        return bz2.open(path, "rb")
    return lzma.open(path, "rb")


def read_exact(stream: IO[bytes], size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        chunk = stream.read(size - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def head_of(path: str, kind: str) -> bytes | None:
    """The first decompressed bytes (up to 1 KiB), or None when the file cannot be decompressed."""
    try:
        with open_stream(path, kind) as stream:
            return read_exact(stream, FP_MAX)
    except DecompressError:
        return None


class PackedReader:
    """Reads a compressed file's decompressed bytes from an offset to the end, once."""

    __slots__ = ("_stream", "kind", "path")

    def __init__(self, path: str, kind: str) -> None:
        self.path = path
        self.kind = kind
        self._stream: IO[bytes] | None = None

    def seek_checked(self, offset: int, marker_len: int, marker: bytes | None) -> bool:
        """Position the stream at `offset`; True when the content there is at least `offset`
        long and the bytes before it match the saved marker."""
        self.close()
        try:
            stream = open_stream(self.path, self.kind)
            start = max(0, offset - max(marker_len, MARKER_MAX))
            stream.seek(start)
            before = read_exact(stream, offset - start)
        except DecompressError:
            return False
        self._stream = stream
        if len(before) < offset - start:
            return False
        return marker_matches(before, marker_len, marker)

    def blocks(self) -> Iterator[bytes]:
        """Decompressed blocks from the current position to the end; raises DecompressError on
        a damaged or incomplete file (what was read before it stays read)."""
        stream = self._stream
        if stream is None:
            return
        while True:
            data = stream.read(BLOCK)
            if not data:
                return
            yield data

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def __repr__(self) -> str:
        return f"PackedReader({os.path.basename(self.path)!r}, {self.kind})"
