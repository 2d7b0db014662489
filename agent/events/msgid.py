"""Deterministic message ids (SPEC §3.4).

    messageId = UUIDv5(6ba7b811-9dad-11d1-80b4-00c04fd430c8,
                       "trackd:v1\\n" + source + "\\n" + hex(fp) + "\\n" + offset + "\\n"
                       + hex(sha256(line)[:16]) + "\\n" + slot)

The same bytes give the same ids whichever command read them. `uuid.uuid5` builds UUID objects and
re-hashes the common prefix each call; here the prefix's SHA-1 state is computed once per file and
copied per message, and the UUID text is formatted directly.
"""

from __future__ import annotations

import hashlib
import uuid

NAMESPACE = uuid.UUID("6ba7b811-9dad-11d1-80b4-00c04fd430c8")
_VARIANT = {h: "89ab"[int(h, 16) & 3] for h in "0123456789abcdef"}


def line_hash(line: bytes) -> bytes:
    """hex(sha256(line)[:16]) as ASCII bytes; `line` excludes its line break."""
    return hashlib.sha256(line).hexdigest()[:32].encode("ascii")


class MessageIdPrefix:
    """The per-file part of messageIds; `__call__(offset, line_hash, slot)` gives one id."""

    __slots__ = ("_base",)

    def __init__(self, source: str, fp_hex: str) -> None:
        self._base = hashlib.sha1(  # noqa: S324 - UUIDv5 is defined over SHA-1; not for security
            NAMESPACE.bytes + f"trackd:v1\n{source}\n{fp_hex}\n".encode()
        )

    def __call__(self, offset: int, lhash: bytes, slot: bytes) -> str:
        h = self._base.copy()
        h.update(b"%d\n%s\n%s" % (offset, lhash, slot))
        x = h.hexdigest()
        # UUIDv5 over the first 16 bytes: version nibble 5 at hex digit 12, RFC 4122 variant
        # (binary 10xx) at hex digit 16.
        return f"{x[:8]}-{x[8:12]}-5{x[13:16]}-{_VARIANT[x[16]]}{x[17:20]}-{x[20:32]}"


def message_id(source: str, fp_hex: str, offset: int, line: bytes, slot: str) -> str:
    """One messageId from scratch (reference form; the pipeline uses MessageIdPrefix)."""
    name = f"trackd:v1\n{source}\n{fp_hex}\n{offset}\n{line_hash(line).decode()}\n{slot}"
    return str(uuid.uuid5(NAMESPACE, name))
