"""File identity (SPEC §5.3): (device, inode) + a fingerprint of the first bytes + an offset marker.

The fingerprint is the SHA-256 of the first `fp_len` bytes, `fp_len` growing with the file until
1 KiB; two files are the same when one's fingerprint matches the other's first `fp_len` bytes. The
marker is the SHA-256 of the bytes just before the saved offset: a file rewritten in place to at
least the old size is caught by it. Neither is ever the path.
"""

from __future__ import annotations

import hashlib
import os

FP_MAX = 1024
MARKER_MAX = 64


def digest16(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()[:16]


def fingerprint(head: bytes) -> tuple[int, bytes]:
    """(fp_len, fp_hash) of a file whose first bytes are `head`."""
    head = head[:FP_MAX]
    return len(head), hashlib.sha256(head).digest()


def read_at(fd: int, offset: int, size: int) -> bytes:
    """Read exactly `size` bytes at `offset` (fewer only at EOF)."""
    out = bytearray()
    while len(out) < size:
        chunk = os.pread(fd, size - len(out), offset + len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def matches_fingerprint(fd: int, fp_len: int, fp_hash: bytes) -> bool:
    """Does the open file start with the bytes the fingerprint was taken of?"""
    head = read_at(fd, 0, fp_len)
    return len(head) == fp_len and hashlib.sha256(head).digest() == fp_hash


def marker_ok(fd: int, offset: int, marker_len: int, marker: bytes | None) -> bool:
    """Are the bytes before `offset` still the ones the marker was taken of?"""
    if marker_len == 0 or marker is None:
        return True
    start = max(0, offset - marker_len)
    return marker_matches(read_at(fd, start, offset - start), marker_len, marker)


def marker_matches(before: bytes, marker_len: int, marker: bytes | None) -> bool:
    """Do the bytes just before an offset (`before`, at least `marker_len` of them) match?

    A position after a flushed partial last line (a rotated file's final line without a newline)
    was committed with a marker taken as if a newline followed the line: that form is accepted
    too, so such a file found again is not mistaken for a rewritten one.
    """
    if marker_len == 0 or marker is None:
        return True
    if len(before) >= marker_len and digest16(before[len(before) - marker_len :]) == marker:
        return True
    if len(before) < marker_len - 1 or before.endswith(b"\n"):
        return False
    return digest16(before[len(before) - marker_len + 1 :] + b"\n") == marker


def first_line_fp(first_line: bytes) -> str:
    """hex(SHA-256 of the file's first line, at most 1 KiB): the `fp` of messageIds (SPEC §3.4)."""
    return hashlib.sha256(first_line[:FP_MAX]).hexdigest()


def first_line_of(fd: int) -> bytes | None:
    """The file's first line (at most 1 KiB), or None while it has no newline and < 1 KiB."""
    head = read_at(fd, 0, FP_MAX)
    nl = head.find(b"\n")
    if nl >= 0:
        line = head[:nl]
        return line[:-1] if line.endswith(b"\r") else line
    return head if len(head) >= FP_MAX else None


def last_line_end(fd: int, size: int) -> int:
    """The offset just past the last newline at or before `size` (0 if none): where `end` starts."""
    pos = size
    while pos > 0:
        step = min(65536, pos)
        chunk = os.pread(fd, step, pos - step)
        nl = chunk.rfind(b"\n")
        if nl >= 0:
            return pos - step + nl + 1
        pos -= step
    return 0


def head_matches(head: bytes, fp_len: int, fp_hash: bytes) -> bool:
    """Do these first bytes (of a decompressed file, say) carry the fingerprint?"""
    return len(head) >= fp_len and hashlib.sha256(head[:fp_len]).digest() == fp_hash


def line_fp_of_head(head: bytes) -> str:
    """The messageId fingerprint of a compressed file's first line (the whole head when it has no
    newline: a compressed file is final, so that is its only line)."""
    nl = head.find(b"\n")
    if nl < 0:
        return first_line_fp(head)
    line = head[:nl]
    return first_line_fp(line[:-1] if line.endswith(b"\r") else line)
