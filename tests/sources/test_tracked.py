"""`run --once` snapshots (SPEC §6): every matched file and every rotated generation the state says
has unread bytes, read up to its snapshot; a final partial line waits, unless the file is no
longer live."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import (
    access_line,
    make_config,
    page_seqs,
    read_messages,
    run_trackd,
    write_access_log,
)
from tests.sources.tailing import assert_exactly_once, file_rows, logrotate


def _once(cfg: Path) -> list[int]:
    proc = run_trackd("run", "--once", "-c", str(cfg))
    assert proc.returncode == 0, proc.stderr
    return page_seqs(read_messages(cfg.parent / "out.jsonl"))


@pytest.mark.timeout(60)
def test_once_reads_the_rotated_generation_with_unread_bytes(tmp_path: Path) -> None:
    """A generation rotated between two `run --once` (cron style) is read from its saved offset
    — its final line without a newline too, since it is no longer live — while the live file's
    partial last line is left for the next run."""
    log = tmp_path / "access.log"
    write_access_log(log, 0, 100)
    cfg = make_config(tmp_path, paths=[str(log)])
    assert _once(cfg) == list(range(100))
    write_access_log(log, 100, 50)
    with log.open("a") as fh:
        fh.write(access_line(150)[:-1])  # no newline: the app died mid-line, then rotation
    logrotate(tmp_path, log, "create")
    write_access_log(log, 151, 20)
    with log.open("a") as fh:
        fh.write(access_line(171)[:30])
    assert_exactly_once(_once(cfg), range(171))
    with log.open("a") as fh:
        fh.write(access_line(171)[30:])
    assert_exactly_once(_once(cfg), range(172))


@pytest.mark.timeout(60)
def test_once_marks_an_idle_rotated_generation_done(tmp_path: Path) -> None:
    """A rotated generation read to its end and idle for rotate_wait is finished (`done`): later
    runs no longer look for it."""
    log = tmp_path / "access.log"
    write_access_log(log, 0, 10)
    cfg = make_config(tmp_path, paths=[str(log)], extra={"rotate_wait": "0s"})
    _once(cfg)
    logrotate(tmp_path, log, "create")
    write_access_log(log, 10, 5)
    assert_exactly_once(_once(cfg), range(15))
    states = sorted(r["state"] for r in file_rows(tmp_path / "state"))
    assert states == ["done", "live"]


@pytest.mark.timeout(30)
def test_a_file_is_read_in_blocks_that_start_small_and_double(tmp_path: Path) -> None:
    """A file's first read is FIRST_BLOCK bytes and each next one twice the last, up to
    READ_BLOCK, so a merged read of many files holds a small block per waiting file; the
    splits still give every line exactly once, in order."""
    import os

    from agent.sources.splitter import LineSplitter
    from agent.sources.tracked import FIRST_BLOCK, READ_BLOCK, TrackedFile
    from agent.state.files import FileRow

    log = tmp_path / "access.log"
    lines = [f"line {i:07d} {'x' * (i % 300)}".encode() for i in range(40_000)]
    log.write_bytes(b"".join(line + b"\n" for line in lines))
    size = log.stat().st_size
    assert size > 4 * READ_BLOCK
    fd = os.open(log, os.O_RDONLY)
    try:
        row = FileRow(
            1, "web", str(log), None, 0, 0, 0, b"", None, 0, 0, None, 0, 0.0, 0.0, None, ""
        )
        tf = TrackedFile(row, fd, str(log), LineSplitter(0, 65536))
        splits = list(tf.read(size, size))
    finally:
        os.close(fd)
    spans = [s.end - s.start for s in splits]
    # A split also takes the partial line the read before left (lines here are < 320 bytes).
    assert spans[0] <= FIRST_BLOCK and spans[1] <= 2 * FIRST_BLOCK + 320 < spans[2]
    assert max(spans) <= READ_BLOCK + 320 and spans[4] > READ_BLOCK // 2
    assert [line for s in splits for line in s.lines] == lines


@pytest.mark.timeout(30)
def test_a_compressed_file_is_read_in_the_same_blocks(tmp_path: Path) -> None:
    """A gzipped generation is split in the blocks a plain file is, not in the decompressor's
    pieces of tens of KiB (one worker job per block: backfill of a .gz ran at half the speed of
    the same lines plain); every line still comes once, in order, the last one without its
    newline too."""
    import gzip

    from agent.sources.compressed import PackedReader
    from agent.sources.splitter import LineSplitter
    from agent.sources.tracked import FIRST_BLOCK, READ_BLOCK, TrackedFile
    from agent.state.files import FileRow

    log = tmp_path / "access.log.2.gz"
    lines = [f"line {i:07d} {'x' * (i % 300)}".encode() for i in range(40_000)]
    log.write_bytes(gzip.compress(b"\n".join(lines)))  # no newline after the last line
    row = FileRow(1, "web", str(log), None, 0, 0, 0, b"", None, 0, 0, None, 0, 0.0, 0.0, None, "")
    tf = TrackedFile(row, -1, str(log), LineSplitter(0, 65536))
    tf.packed = PackedReader(str(log), "gz")
    assert tf.packed.seek_checked(0, 0, None)
    splits = list(tf.read_packed())
    spans = [s.end - s.start for s in splits]
    # Every split is one read-size block (give or take a partial line) but the archive's rest
    # and its last line, which has no newline.
    steps = [min(FIRST_BLOCK << i, READ_BLOCK) for i in range(len(spans))]
    assert len(spans) == 11
    assert all(abs(span - step) <= 320 for span, step in zip(spans[:-2], steps, strict=False))
    assert spans[-2] < READ_BLOCK and splits[-1].lines == [lines[-1]]
    assert [line for s in splits for line in s.lines] == lines
