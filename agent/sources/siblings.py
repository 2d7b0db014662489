"""Rotated siblings of a path (SPEC §5.3): where a file trackd was reading may have gone.

logrotate and friends move `access.log` to `access.log.1`, `access.log-20261128` (dateext), and
compress them to `.gz`/`.bz2`/`.xz`. A saved file that is no longer at its path is looked for among
these, by identity (never by name): the name only narrows the search.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import structlog

from agent.sources.compressed import PackedReader, compression_of, head_of
from agent.sources.fileid import (
    FP_MAX,
    head_matches,
    line_fp_of_head,
    marker_ok,
    matches_fingerprint,
    read_at,
)
from agent.sources.tracked import Key, TrackedFile
from agent.state.files import FileRow

if TYPE_CHECKING:
    from agent.sources.catalog import Catalog

log = structlog.get_logger("trackd.sources")

_PACKED = re.compile(r"\.(gz|bz2|xz)$")
#: logrotate's numbered (`.1`) and dateext (`-20261128`, `-20261128-1732780800`) suffixes.
_ROTATED = re.compile(r"(\.\d+|-\d{8}([-_.]?\d+)?)$")


class Sibling(NamedTuple):
    path: str
    dev: int
    ino: int
    size: int
    mtime: float
    #: `gz`, `bz2` or `xz` when compressed (by content), else None.
    packed: str | None


def siblings_of(path: str) -> list[Sibling]:
    """Regular files next to `path` named `<name>.…` or `<name>-…`, most recently modified first.

    `path` itself is not among them. A directory that cannot be listed yields nothing (the caller
    logs what it could not find).
    """
    directory, name = os.path.split(path)
    out: list[Sibling] = []
    try:
        entries = list(os.scandir(directory or "."))
    except OSError:
        return out
    dot, dash = name + ".", name + "-"
    for entry in entries:
        if entry.name == name or not entry.name.startswith((dot, dash)):
            continue
        try:
            st = entry.stat()
        except OSError:
            continue
        if not entry.is_file():
            continue
        full = os.path.join(directory, entry.name)
        out.append(
            Sibling(full, st.st_dev, st.st_ino, st.st_size, st.st_mtime, compression_of(full))
        )
    out.sort(key=lambda s: (-s.mtime, s.path))
    return out


def unseen_generations(
    cat: Catalog, path: str, source: str, claimed: set[Key], since: float
) -> list[TrackedFile]:
    """A new file took the place of a known one at `path`: rotated siblings modified since
    that one was first seen, whose content no row knows, are generations that came and were
    rotated away between two looks (or while trackd was stopped): read them from 0."""
    out = []
    for sib in reversed(siblings_of(path)):  # oldest first: they hold older lines
        if (sib.dev, sib.ino) in claimed or sib.mtime < since:
            continue
        if sib.packed is not None:
            head = head_of(sib.path, sib.packed)
            if head is None or _known_content(cat, source, head):
                continue
            found = cat.open_packed(sib.path, source, sib.packed, (sib.dev, sib.ino), set())
            if isinstance(found, TrackedFile):
                out.append(found)
            continue
        opened = _open(sib.path)
        if opened is None:
            continue
        fd, st = opened
        head = read_at(fd, 0, FP_MAX)
        if cat.match(source, fd, st) is not None or _known_content(cat, source, head):
            os.close(fd)
            continue
        log.warning(
            "file_unseen_generation",
            path=sib.path,
            was=path,
            source=source,
            hint="rotated away before trackd saw it at its path: read from 0",
        )
        tf = cat.new_plain(source, sib.path, fd, st, 0, live=False)
        tf.left_at = cat.clock()
        out.append(tf)
    return out


def _known_content(cat: Catalog, source: str, head: bytes) -> bool:
    """Does a row of `source` start with these bytes (a copy of a file already known)?"""
    return any(
        r.source == source and head_matches(head, r.fp_len, r.fp_hash) for r in cat.rows.values()
    )


def rotation_base(path: str) -> str:
    """The live name a rotated name came from: `access.log.2.gz`, `access.log-20261128` ->
    `access.log` (a name without a rotation suffix is its own base)."""
    return _ROTATED.sub("", _PACKED.sub("", path))


def search_candidates(row: FileRow) -> list[Sibling]:
    """Where a saved file may be now: the path it was last seen at, then the rotated siblings of
    that path, of the path it was first seen at, and of their rotation bases; same inode first,
    then most recently modified."""
    bases = {p for p in (row.path, row.cur_path) if p}
    bases |= {rotation_base(p) for p in bases}
    found: dict[str, Sibling] = {}
    for base in sorted(bases):
        for sib in siblings_of(base):
            found.setdefault(sib.path, sib)
    if row.cur_path and row.cur_path not in found:
        try:
            st = os.stat(row.cur_path)
        except OSError:
            st = None
        if st is not None and stat.S_ISREG(st.st_mode):
            packed = compression_of(row.cur_path)
            found[row.cur_path] = Sibling(
                row.cur_path, st.st_dev, st.st_ino, st.st_size, st.st_mtime, packed
            )
    return sorted(found.values(), key=lambda s: ((s.dev, s.ino) != (row.dev, row.ino), -s.mtime))


def find_copy(cat: Catalog, row: FileRow, claimed: set[Key]) -> TrackedFile | None:
    """The row's content among the places it may be now (same inode first, then by
    fingerprint, at least as long as the saved offset, marker intact). The row moves there."""
    base = row.cur_path or row.path
    for sib in search_candidates(row):
        key = (sib.dev, sib.ino)
        if key in claimed:
            continue
        if sib.packed is not None:
            tf = _packed_copy(cat, row, sib.path, sib.packed)
        elif sib.size >= row.offset:
            tf = _plain_copy(cat, row, sib.path, key)
        else:
            tf = None
        if tf is not None:
            cat.move(row, sib.dev, sib.ino)
            cat.seen(row, sib.path, "rotated")
            log.info(
                "file_found_rotated",
                path=sib.path,
                was=base,
                source=row.source,
                offset=row.offset,
                compressed=sib.packed or False,
            )
            return tf
    return None


def _plain_copy(cat: Catalog, row: FileRow, path: str, key: Key) -> TrackedFile | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    st = os.fstat(fd)
    if (
        (st.st_dev, st.st_ino) == key
        and matches_fingerprint(fd, row.fp_len, row.fp_hash)
        and st.st_size >= row.offset
        and marker_ok(fd, row.offset, row.marker_len, row.marker)
    ):
        tf = cat.tracked(row, fd, path, row.offset, live=False)
        tf.size = st.st_size
        tf.left_at = cat.clock()
        return tf
    os.close(fd)
    return None


def _packed_copy(cat: Catalog, row: FileRow, path: str, kind: str) -> TrackedFile | None:
    head = head_of(path, kind)
    if head is None or not head_matches(head, row.fp_len, row.fp_hash):
        return None
    reader = PackedReader(path, kind)
    if not reader.seek_checked(row.offset, row.marker_len, row.marker):
        reader.close()
        return None
    if row.line_fp is None:
        row.line_fp = line_fp_of_head(head)
    tf = cat.tracked(row, -1, path, row.offset, live=False)
    tf.packed = reader
    tf.left_at = cat.clock()
    return tf


def recover_saved(
    cat: Catalog,
    sources: set[str],
    open_rows: set[int],
    claimed_of: Callable[[str], set[Key]],
) -> list[TrackedFile]:
    """At start: saved files still being read at the last stop but not found by the globs are
    looked for among the rotated siblings of their path; those found nowhere are logged."""
    out = []
    for row in list(cat.rows.values()):
        if row.state not in ("live", "rotated") or row.id in open_rows or row.source not in sources:
            continue
        tf = find_copy(cat, row, claimed_of(row.source))
        if tf is not None:
            out.append(tf)
            continue
        log.warning(
            "file_missing",
            path=row.cur_path or row.path,
            source=row.source,
            offset=row.offset,
            unread_bytes_seen=max(0, row.size - row.offset),
            hint="it is not at its path nor among its rotated siblings (.N, -*, .gz/.bz2/.xz); "
            "if it was moved elsewhere, read it with `trackd backfill`",
        )
        cat.retire(row, "done")
    return out


def stale_copies(cat: Catalog, row: FileRow, claimed: set[Key]) -> None:
    """A truncated row had no copy long enough to hold its unread tail; shorter copies made since
    it was first seen (copytruncate's copy, taken before trackd read past it) hold only lines
    already read: record them as read, so a glob matching them never reads them again."""
    for sib in search_candidates(row):
        key = (sib.dev, sib.ino)
        if sib.packed or key in claimed or sib.size >= row.offset or sib.mtime < row.first_seen:
            continue
        if cat.rows_at(key):
            continue
        opened = _open(sib.path)
        if opened is None:
            continue
        fd, st = opened
        if (st.st_dev, st.st_ino) == key and matches_fingerprint(fd, row.fp_len, row.fp_hash):
            log.info("file_copy_already_read", path=sib.path, source=row.source, of=row.path)
            tf = cat.new_plain(row.source, sib.path, fd, st, st.st_size, live=False)
            cat.retire(tf.row, "done")
            tf.close()
        else:
            os.close(fd)


def _open(path: str) -> tuple[int, os.stat_result] | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    return fd, os.fstat(fd)
