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
import zlib
from collections.abc import Iterator
from typing import IO, Protocol, cast

from agent.sources.fileid import FP_MAX, MARKER_MAX, marker_matches

#: Magic numbers: compression is detected by content, never by the file name alone.
_MAGIC = ((b"\x1f\x8b", "gz"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"))
BLOCK = 1 << 20

#: What a damaged or still-being-written compressed file raises while it is decompressed.
DecompressError = (EOFError, OSError, lzma.LZMAError, ValueError, zlib.error)
#: Compressed bytes fed per step: a damaged archive loses at most the step around the damage.
_FEED = 2 << 10


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


class _Decompressor(Protocol):
    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes) -> bytes: ...


def _decompressor(kind: str) -> _Decompressor:
    if kind == "gz":
        return zlib.decompressobj(wbits=31)
    if kind == "bz2":
        return bz2.BZ2Decompressor()
    return lzma.LZMADecompressor()


class Damaged(Exception):
    """A compressed file that stops (truncated) or breaks (corrupt) before its end."""


class PackedReader:
    """Reads a compressed file's decompressed bytes from an offset to the end, once. It feeds
    the decompressor itself, in small pieces: a truncated or corrupt archive yields every byte
    decompressed before the damage (the library's buffered readers drop the block in progress),
    and `consumed` tells how far into the file reading got."""

    __slots__ = ("_gen", "consumed", "damage", "failed", "kind", "offset", "path", "size")

    def __init__(self, path: str, kind: str) -> None:
        self.path = path
        self.kind = kind
        self._gen: Iterator[bytes] | None = None
        #: Compressed bytes read, the file's size, decompressed bytes produced.
        self.consumed = 0
        self.size = 0
        self.offset = 0
        #: What went wrong, when the archive is damaged ("" while it is not).
        self.damage = ""
        #: Why the file itself could not be read on (the system's words: gone, no permission,
        #: too many open files): not damage, the rest is still there to read later.
        self.failed = ""

    def _chunks(self) -> Iterator[bytes]:
        """Decompressed pieces from the start; raises Damaged (after yielding what was read)."""
        with open(self.path, "rb") as fh:
            self.size = os.fstat(fh.fileno()).st_size
            dec = _decompressor(self.kind)
            fresh = True  # at a stream boundary: the file may end here
            while True:
                raw = fh.read(_FEED)
                if not raw:
                    if fresh:
                        return
                    raise Damaged(
                        f"truncated: the archive ends at byte {self.consumed:,} before its "
                        "end-of-stream marker"
                    )
                self.consumed += len(raw)
                while raw:
                    try:
                        out = dec.decompress(raw)
                    except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError) as exc:
                        raise Damaged(
                            f"corrupt near byte {self.consumed:,} of {self.size:,}: {exc}"
                        ) from None
                    fresh = False
                    if out:
                        self.offset += len(out)
                        yield out
                    if not dec.eof:
                        break
                    # End of one stream: another may follow (multi-member gzip, concatenated
                    # bz2/xz); trailing zero padding ends the file.
                    raw = dec.unused_data
                    fresh = True
                    dec = _decompressor(self.kind)
                    if not raw.strip(b"\x00"):
                        raw = b""

    def seek_checked(self, offset: int, marker_len: int, marker: bytes | None) -> bool:
        self.close()
        self.consumed = self.offset = 0
        self.damage = ""
        chunks = self._chunks()
        keep = max(marker_len, MARKER_MAX)
        before = b""
        pending = b""
        try:
            while self.offset < offset:
                data = next(chunks)
                if self.offset > offset:
                    cut = len(data) - (self.offset - offset)
                    pending = data[cut:]
                    data = data[:cut]
                before = (before + data)[-keep:]
        except StopIteration:
            return False
        except Damaged as exc:
            self.damage = str(exc)
            return False
        self._gen = _prepend(pending, chunks)
        return marker_matches(before, marker_len, marker)

    def blocks(self) -> Iterator[bytes]:
        gen = self._gen
        if gen is None:
            return
        try:
            yield from gen
        except Damaged as exc:
            self.damage = str(exc)
            raise EOFError(str(exc)) from None  # TrackedFile.read_packed logs and stops
        except OSError as exc:  # opening or reading the file (decompression raises Damaged)
            self.failed = exc.strerror or str(exc)
            raise

    def close(self) -> None:
        gen = self._gen
        if gen is not None:
            self._gen = None
            if hasattr(gen, "close"):
                gen.close()

    def __repr__(self) -> str:
        return f"PackedReader({os.path.basename(self.path)!r}, {self.kind})"


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest
