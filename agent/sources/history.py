"""Backfill's files (SPEC §6 `backfill`): which source each file belongs to, in which order they
are read, where each resumes, and a decompressing reader that keeps every line before damage.

A file belongs to the configured source one of whose `paths` matches it, or matches the name it
was rotated from: `<name>.N`, `<name>-*` and their `.gz`/`.bz2`/`.xz` forms (the names
`siblings.py` searches). A file that no source claims goes to the single `--source` given.

Whether a file was read before is decided by content, never by name: the saved rows of the state
(`Catalog`) are matched by (device, inode) + fingerprint for a plain file, and by the fingerprint
and offset marker of the decompressed content for any copy (a `.gz` of a file `run` read, a
decompressed copy, a file moved elsewhere). A match resumes at the row's offset, so a file read to
its end yields nothing and a half-read one continues where the last reader stopped.
"""

from __future__ import annotations

import fnmatch
import glob
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from agent.config import SourceConfig
from agent.errors import EXIT_USAGE, TrackdError
from agent.pipeline.blocks import BlockPreparer
from agent.records import FileRef
from agent.sources.catalog import Catalog
from agent.sources.compressed import Damaged, PackedReader, compression_of
from agent.sources.fileid import (
    FP_MAX,
    fingerprint,
    head_matches,
    line_fp_of_head,
    marker_ok,
    matches_fingerprint,
    read_at,
)
from agent.sources.siblings import rotation_base
from agent.sources.tracked import TrackedFile
from agent.state.files import FileRow

log = structlog.get_logger("trackd.backfill")

_NUMBER = re.compile(r"\.(\d+)(?:\.(?:gz|bz2|xz))?$")
#: Compressed bytes fed to the decompressor at a time: what a corrupt block can take with it.


class UsageError(TrackdError):
    """A backfill argument that cannot work (no such file, no source for a file, a bad time)."""

    exit_code = EXIT_USAGE


# -- which files, which source --------------------------------------------------------------


def expand(patterns: Sequence[str]) -> list[str]:
    """Every file the arguments name (globs expanded, absolute, each once, in argument order).
    A pattern matching no regular file is a usage error naming it."""
    out: dict[str, None] = {}
    missing = []
    for pattern in patterns:
        found = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        files = [os.path.abspath(f) for f in found if os.path.isfile(f)]
        if not files:
            missing.append(pattern)
        out.update(dict.fromkeys(files))
    if missing:
        raise UsageError(
            "no such file: " + ", ".join(missing) + " (give files or globs matching files)"
        )
    return list(out)


def _names(path: str) -> list[str]:
    """`path` and every name it may have been rotated from: cut at each `.` or `-` of its base
    name (`access.log.2.gz` -> `access.log.2`, `access.log`, `access`), and `rotation_base`."""
    directory, name = os.path.split(path)
    out = [path, rotation_base(path)]
    for i, ch in enumerate(name):
        if ch in ".-" and i > 0:
            out.append(os.path.join(directory, name[:i]))
    return out


def is_live(path: str, source: SourceConfig) -> bool:
    """Does one of the source's globs match the path itself (a file `run` tails, may grow)?"""
    return any(fnmatch.fnmatchcase(path, p) for p in source.paths)


def sources_matching(path: str, sources: Sequence[SourceConfig]) -> list[str]:
    names = _names(path)
    return [
        s.name for s in sources if any(fnmatch.fnmatchcase(n, p) for n in names for p in s.paths)
    ]


def assign(
    files: Sequence[str], sources: Sequence[SourceConfig], chosen: Sequence[str]
) -> list[tuple[str, str]]:
    """(path, source) for each file. Every problem at once, as a usage error naming the files."""
    known = [s.name for s in sources]
    unknown = [c for c in chosen if c not in known]
    if unknown:
        raise UsageError(
            f"--source {', '.join(unknown)}: no such source (configured: {', '.join(known)})"
        )
    out = []
    problems = []
    for path in files:
        matched = sources_matching(path, sources)
        picked = [m for m in matched if m in chosen] if len(matched) > 1 else matched
        if len(picked) == 1:
            out.append((path, picked[0]))
        elif len(matched) > 1:
            problems.append(
                f"{path}: matched by the paths of several sources ({', '.join(matched)}); "
                "say which with --source"
            )
        elif len(chosen) == 1:
            out.append((path, chosen[0]))
        elif chosen:
            problems.append(
                f"{path}: matches no source's paths and several --source were given "
                f"({', '.join(chosen)}); backfill it with one --source"
            )
        else:
            problems.append(
                f"{path}: matches no source's paths (nor their rotated forms); "
                "name its source with --source NAME"
            )
    if problems:
        raise UsageError("; ".join(problems))
    return out


# -- order -----------------------------------------------------------------------------------


def rotation_number(path: str) -> int:
    """logrotate's generation number (`access.log.3.gz` -> 3; 0 without one): higher is older."""
    m = _NUMBER.search(path)
    return int(m.group(1)) if m else 0


def first_event_time(head: bytes, source: str, blocks: BlockPreparer) -> float:
    """The event time of the first record in a file's first bytes (inf when none parses)."""
    cut = head.rfind(b"\n")
    block = head[:cut] if cut >= 0 else head  # complete lines, else the head as one line
    ref = FileRef(0, source, "", "")
    for p in blocks.block(ref, 0, len(block) + 1, block):
        return p.ts
    return math.inf


# -- a decompressing reader that keeps everything before damage -------------------------------


#: The salvaging reader now serves every compressed read (agent/sources/compressed.py).
HistoryReader = PackedReader


def salvage_head(path: str, kind: str) -> bytes:
    """The first decompressed bytes (up to 1 KiB) that can be read, damage or not."""
    reader = HistoryReader(path, kind)
    out = b""
    try:
        for data in reader._chunks():
            out += data
            if len(out) >= FP_MAX:
                break
    except Damaged:
        pass
    return out[:FP_MAX]


# -- opening by content -------------------------------------------------------------------------


@dataclass(slots=True)
class HistoryFile:
    """One file to backfill: opened (`tf`, reading from the offset the state holds), or not."""

    path: str
    source: str
    kind: str | None
    size: int
    live: bool
    tf: TrackedFile | None = None
    #: First event time and logrotate number: the read order (oldest first).
    first_ts: float = math.inf
    number: int = 0
    #: A sort key no record of the file (read from its start) is below: its first record's
    #: time, when its head held complete lines; else -inf (the merge starts it at once).
    floor: float = -math.inf
    #: Why it is not read: "already read", "copy of …", "unreadable: …".
    skipped: str = ""
    #: Where reading started (a resumed file: > 0) and what the damage report says.
    resumed_at: int = 0
    head: bytes = b""

    @property
    def sort_key(self) -> tuple[float, int, str]:
        return (self.first_ts, -self.number, self.path)


def _rows_with_head(cat: Catalog, source: str, head: bytes) -> list[FileRow]:
    rows = [
        r
        for r in cat.rows.values()
        if r.source == source and r.state != "skipped" and head_matches(head, r.fp_len, r.fp_hash)
    ]
    rows.sort(key=lambda r: (-r.offset, -r.id))
    return rows


def _original_present(row: FileRow, exclude: tuple[int, int]) -> bool:
    """Is the row's file still at its last path (another inode than `exclude`)?"""
    path = row.cur_path or row.path
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        return (
            key == (row.dev, row.ino)
            and key != exclude
            and matches_fingerprint(fd, row.fp_len, row.fp_hash)
        )
    finally:
        os.close(fd)


def _continue_or_clone(
    cat: Catalog, row: FileRow, hf: HistoryFile, key: tuple[int, int]
) -> FileRow:
    """This file holds the row's content up to its offset. While the row's own file is still at
    its path (`run` reads it), a new row starting at that offset; else the row moves here."""
    if row.state in ("live", "rotated") and _original_present(row, key):
        now = cat._wall()
        clone = FileRow(
            0, hf.source, hf.path, hf.path, *key, row.fp_len, row.fp_hash, row.line_fp,
            row.offset, row.marker_len, row.marker, 0, now, now, None, "rotated",
        )  # fmt: skip
        clone.id = cat.store.insert(clone)
        cat._add(clone)
        return clone
    cat.move(row, *key)
    cat.seen(row, hf.path, row.state if row.state == "live" and hf.live else "rotated")
    return row


def open_history(cat: Catalog, hf: HistoryFile) -> None:
    """Open `hf` at the position the state holds for its content (a new row at 0 if none).
    Sets `hf.tf`, or `hf.skipped` when there is nothing to read."""
    if hf.kind is not None:
        _open_packed(cat, hf)
    else:
        _open_plain(cat, hf)


def _open_plain(cat: Catalog, hf: HistoryFile) -> None:
    try:
        fd = os.open(hf.path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        hf.skipped = f"unreadable: {exc.strerror}"
        return
    st = os.fstat(fd)
    key = (st.st_dev, st.st_ino)
    head = read_at(fd, 0, FP_MAX)
    hf.head = head
    row = cat.match(hf.source, fd, st)
    if row is not None and not (
        st.st_size >= row.offset and marker_ok(fd, row.offset, row.marker_len, row.marker)
    ):
        row = None  # rewritten in place since: its content is new
    if row is None:
        for cand in _rows_with_head(cat, hf.source, head):
            if st.st_size >= cand.offset and marker_ok(
                fd, cand.offset, cand.marker_len, cand.marker
            ):
                log.info("file_copy_found", path=hf.path, source=hf.source, of=cand.cur_path)
                row = _continue_or_clone(cat, cand, hf, key)
                break
    if row is None:
        hf.tf = cat.new_plain(hf.source, hf.path, fd, st, 0, live=hf.live)
        return
    if row.offset >= st.st_size:
        os.close(fd)
        hf.skipped = "already read"
        return
    hf.resumed_at = row.offset
    tf = cat.tracked(row, fd, hf.path, row.offset, live=hf.live)
    tf.size = st.st_size
    hf.tf = tf


def _open_packed(cat: Catalog, hf: HistoryFile) -> None:
    assert hf.kind is not None
    try:
        st = os.stat(hf.path)
    except OSError as exc:
        hf.skipped = f"unreadable: {exc.strerror}"
        return
    key = (st.st_dev, st.st_ino)
    head = salvage_head(hf.path, hf.kind)
    hf.head = head
    if not head:
        hf.skipped = "unreadable: " + (_damage_of(hf) or "empty")
        return
    for cand in _rows_with_head(cat, hf.source, head):
        reader = HistoryReader(hf.path, hf.kind)
        if reader.seek_checked(cand.offset, cand.marker_len, cand.marker):
            row = _continue_or_clone(cat, cand, hf, key)
            if row.line_fp is None:
                row.line_fp = line_fp_of_head(head)
            hf.resumed_at = row.offset
            tf = cat.tracked(row, -1, hf.path, row.offset, live=False)
            tf.packed = reader
            hf.tf = tf
            return
        reader.close()
        if reader.damage and reader.offset <= cand.offset:
            # Damaged before the saved offset: nothing past it can be read from this copy.
            hf.skipped = "already read"
            return
    fp_len, fp_hash = fingerprint(head)
    now = cat._wall()
    row = FileRow(
        0, hf.source, hf.path, hf.path, *key, fp_len, fp_hash, line_fp_of_head(head), 0, 0, None,
        0, now, now, None, "rotated",
    )  # fmt: skip
    row.id = cat.store.insert(row)
    cat._add(row)
    log.info("file_new", path=hf.path, source=hf.source, offset=0, compressed=hf.kind)
    reader = HistoryReader(hf.path, hf.kind)
    reader.seek_checked(0, 0, None)
    tf = cat.tracked(row, -1, hf.path, 0, live=False)
    tf.packed = reader
    hf.tf = tf


def _damage_of(hf: HistoryFile) -> str:
    assert hf.kind is not None
    reader = HistoryReader(hf.path, hf.kind)
    reader.seek_checked(1 << 62, 0, None)
    return reader.damage


def describe(hf: HistoryFile) -> str:
    kind = f", {hf.kind}" if hf.kind else ""
    return f"{hf.path} ({hf.source}{kind}, {hf.size:,} bytes)"


#: The bytes of each file `plan` reads for its first event time.
_HEAD = 64 << 10


def plan(cat: Catalog, files: list[HistoryFile], blocks: BlockPreparer) -> list[HistoryFile]:
    """Order `files` oldest first and open them in that order (new rows get ids in it: ties of
    the event-time merge go to the older file). Two arguments with the same content (a file and
    its `.gz` copy) are read once: the plain one, or the first."""
    for hf in files:
        if hf.kind is None:
            try:
                with open(hf.path, "rb") as fh:
                    hf.head = fh.read(_HEAD)
            except OSError:
                hf.head = b""
        else:
            hf.head = _head_of_packed(hf.path, hf.kind, _HEAD)
        hf.first_ts = first_event_time(hf.head, hf.source, blocks)
        if math.isfinite(hf.first_ts) and (b"\n" in hf.head or len(hf.head) < _HEAD):
            hf.floor = hf.first_ts
        # Only the fingerprint's bytes stay (a year of hourly files would keep 560 MiB).
        hf.head = hf.head[: FP_MAX + 1]
        hf.number = rotation_number(hf.path)
    files.sort(key=lambda h: h.sort_key)
    seen: dict[tuple[str, int, bytes], HistoryFile] = {}
    for hf in sorted(files, key=lambda h: (h.kind is not None, h.sort_key)):
        if not hf.head:
            continue
        fp = (hf.source, *fingerprint(hf.head[:FP_MAX]))
        first = seen.get(fp)
        if first is not None and len(hf.head) >= FP_MAX:
            hf.skipped = f"same content as {first.path} (read once)"
        else:
            seen[fp] = hf
    for hf in files:
        if not hf.skipped:
            open_history(cat, hf)
    return files


def _head_of_packed(path: str, kind: str, size: int) -> bytes:
    out = b""
    try:
        for data in HistoryReader(path, kind)._chunks():
            out += data
            if len(out) >= size:
                break
    except Damaged:
        pass
    return out[:size]


def kind_of(path: str) -> str | None:
    """`gz`, `bz2`, `xz` by content (a `.gz` name holding plain text is plain)."""
    return compression_of(path)
