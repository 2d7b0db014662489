"""Compressed generations (SPEC §5.3): detected by content, matched by decompressed fingerprint
and marker, read from the saved offset."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.sources.compressed import PackedReader, compression_of, head_of
from agent.sources.fileid import digest16
from agent.sources.siblings import siblings_of

DATA = b"".join(b"line %05d of a rotated generation\n" % i for i in range(2000))
PACKERS: dict[str, Callable[[bytes], bytes]] = {
    "gz": gzip.compress,
    "bz2": bz2.compress,
    "xz": lzma.compress,
}


@pytest.mark.parametrize("kind", sorted(PACKERS))
def test_detected_by_content_and_read_from_an_offset(tmp_path: Path, kind: str) -> None:
    """gz, bz2 and xz are recognised by their magic (whatever the name), and read from a saved
    offset once the bytes before it match the marker."""
    path = tmp_path / "access.log.2"  # no suffix: detection is by content
    path.write_bytes(PACKERS[kind](DATA))
    assert compression_of(str(path)) == kind
    assert head_of(str(path), kind) == DATA[:1024]
    offset = 35 * 1000
    marker = DATA[offset - 64 : offset]
    reader = PackedReader(str(path), kind)
    assert reader.seek_checked(offset, 64, digest16(marker))
    assert b"".join(reader.blocks()) == DATA[offset:]
    assert not reader.seek_checked(offset, 64, digest16(b"x" * 64))
    assert not reader.seek_checked(len(DATA) + 10, 0, None)
    reader.close()


def test_incomplete_archive_is_not_readable_yet(tmp_path: Path) -> None:
    """An archive still being written (cut short) yields no head: it is looked at again later."""
    path = tmp_path / "access.log.1.gz"
    path.write_bytes(gzip.compress(DATA)[:100])
    assert compression_of(str(path)) == "gz"
    assert head_of(str(path), "gz") is None or len(head_of(str(path), "gz") or b"") < 1024


def test_siblings_are_the_rotated_names_newest_first(tmp_path: Path) -> None:
    """`<name>.N`, `<name>-*` and their compressed forms are siblings; other files are not."""
    names = ["access.log", "access.log.1", "access.log.2.gz", "access.log-20261128", "error.log"]
    for i, name in enumerate(names):
        (tmp_path / name).write_bytes(b"x\n")
        os.utime(tmp_path / name, (1000 + i, 1000 + i))
    got = [Path(s.path).name for s in siblings_of(str(tmp_path / "access.log"))]
    assert got == ["access.log-20261128", "access.log.2.gz", "access.log.1"]
