"""Damaged rotated archives under a glob (issue 13, defects 2 and 3): `run --once` neither
crashes nor loses what can be read — every complete line before the damage is delivered, the
file is named in a warning, and every other file keeps flowing."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from tests.helpers import access_line, make_config, read_messages, run_trackd


def _seqs(out: Path) -> set[int]:
    return {
        int(str(m["properties"]["path"]).rsplit("/", 1)[1])
        for m in read_messages(out)
        if m["type"] == "page"
    }


def _history(tmp_path: Path) -> tuple[bytes, bytes]:
    """access.log (seq 0-99) and two archives made from other lines (seq 1000+, 5000+)."""
    (tmp_path / "access.log").write_text("".join(access_line(s) for s in range(100)))
    older = gzip.compress("".join(access_line(s) for s in range(1000, 4000)).encode())
    oldest = gzip.compress("".join(access_line(s) for s in range(5000, 8000)).encode())
    return older, oldest


@pytest.mark.timeout(60)
def test_truncated_archive_yields_every_line_before_the_cut(tmp_path: Path) -> None:
    """A .gz cut in half: the complete lines before the cut arrive (a contiguous run from the
    first), the archive is named in a warning, and the live file is read whole."""
    older, _ = _history(tmp_path)
    (tmp_path / "access.log.1.gz").write_bytes(older[: len(older) // 2])
    cfg = make_config(tmp_path, paths=[str(tmp_path / "access.log*")])
    done = run_trackd("run", "--once", "-c", str(cfg))
    assert done.returncode == 0, done.stderr
    seqs = _seqs(tmp_path / "out.jsonl")
    assert set(range(100)) <= seqs
    salvaged = sorted(s for s in seqs if s >= 1000)
    assert len(salvaged) > 1000, "most of the first half of the archive is readable"
    assert salvaged == list(range(1000, 1000 + len(salvaged)))
    assert "compressed_file_unreadable" in done.stderr and "access.log.1.gz" in done.stderr


@pytest.mark.timeout(60)
def test_corrupt_archive_does_not_stop_the_others(tmp_path: Path) -> None:
    """A .gz with a damaged block: no crash (exit 0), the lines before the damage arrive, the
    file is named, and the next archive and the live file are read whole."""
    older, oldest = _history(tmp_path)
    broken = bytearray(oldest)
    middle = len(broken) // 2
    broken[middle : middle + 64] = b"\xff" * 64
    (tmp_path / "access.log.1.gz").write_bytes(older)
    (tmp_path / "access.log.2.gz").write_bytes(bytes(broken))
    cfg = make_config(tmp_path, paths=[str(tmp_path / "access.log*")])
    done = run_trackd("run", "--once", "-c", str(cfg))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    seqs = _seqs(tmp_path / "out.jsonl")
    assert set(range(100)) <= seqs and set(range(1000, 4000)) <= seqs
    assert 5000 in seqs, "the lines before the damage were read"
    assert "compressed_file_unreadable" in done.stderr and "access.log.2.gz" in done.stderr
