"""Deterministic messageIds (SPEC §3.4)."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from agent.events.msgid import NAMESPACE, MessageIdPrefix, line_hash, message_id


@given(
    st.text(min_size=1, max_size=20),
    st.integers(min_value=0, max_value=2**40),
    st.binary(max_size=200),
    st.sampled_from(["page", "identify", "alias:dev~1", "rule:signup", "change"]),
)
def test_fast_path_equals_uuid5_of_the_spec_name(
    source: str, offset: int, line: bytes, slot: str
) -> None:
    """The per-file prefix fast path gives exactly UUIDv5(namespace, the SPEC's name string)."""
    fp = "ab" * 32
    name = f"trackd:v1\n{source}\n{fp}\n{offset}\n{line_hash(line).decode()}\n{slot}"
    expected = str(uuid.uuid5(NAMESPACE, name))
    assert MessageIdPrefix(source, fp)(offset, line_hash(line), slot.encode()) == expected
    assert message_id(source, fp, offset, line, slot) == expected


def test_line_hash_is_the_first_16_bytes_of_sha256_in_hex() -> None:
    """hex(sha256(line)[:16]) — 32 hex characters."""
    assert line_hash(b"abc") == b"ba7816bf8f01cfea414140de5dae2223"
