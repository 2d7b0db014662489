"""`trackd status` shows each saved file as the generation it is: a rotated file under its new
name with its own size, a compressed one with its size on disk beside the decompressed bytes
read — never an offset compared with the size of another file."""

from __future__ import annotations

import gzip
import re
import shutil
from pathlib import Path

import orjson
import pytest

from tests.helpers import make_config, run_trackd, write_access_log


def _status(cfg: Path) -> tuple[str, list[dict[str, object]]]:
    text = run_trackd("status", "-c", str(cfg))
    data = run_trackd("status", "-c", str(cfg), "--json")
    assert text.returncode == 0 and data.returncode == 0, text.stderr + data.stderr
    return text.stdout, orjson.loads(data.stdout)["files"]


def _once(cfg: Path) -> None:
    proc = run_trackd("run", "--once", "-c", str(cfg))
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def read_then_rotated(tmp_path: Path) -> tuple[Path, Path]:
    """access.log read to its end (100 lines), then renamed to access.log.1 and grown by 10
    lines while trackd was not running, and a new, shorter access.log in its place."""
    log = tmp_path / "access.log"
    write_access_log(log, 0, 100)
    cfg = make_config(tmp_path, paths=[str(log)])
    _once(cfg)
    log.rename(tmp_path / "access.log.1")
    write_access_log(tmp_path / "access.log.1", 100, 10)
    write_access_log(log, 200, 5)
    return cfg, tmp_path


@pytest.mark.timeout(60)
class TestGenerations:
    def test_a_rotated_file_is_shown_under_its_new_name_with_its_own_size(
        self, read_then_rotated: tuple[Path, Path]
    ) -> None:
        """Before trackd has seen the rotation: the row is shown at access.log.1 (found by its
        inode), as rotated, its offset against access.log.1's size and the lag that is left."""
        cfg, tmp = read_then_rotated
        rotated = tmp / "access.log.1"
        text, files = _status(cfg)
        (f,) = files
        assert f["path"] == str(rotated) and f["first_path"] == str(tmp / "access.log")
        assert f["generation"] == "rotated" and f["progress"] == "reading"
        offset = int(str(f["offset"]))
        assert f["size"] == rotated.stat().st_size and f["lag_bytes"] == f["size"] - offset
        assert f"[web] {rotated} (rotated, first seen as {tmp / 'access.log'}, reading)" in text
        assert f"offset {offset:,} of {rotated.stat().st_size:,}" in text

    def test_the_live_file_is_compared_with_its_own_size(
        self, read_then_rotated: tuple[Path, Path]
    ) -> None:
        """After a run read both: the live access.log has offset = its size, lag 0."""
        cfg, tmp = read_then_rotated
        _once(cfg)
        _, files = _status(cfg)
        live = [f for f in files if f["generation"] == "live"]
        assert [(f["path"], f["offset"], f["size"], f["lag_bytes"]) for f in live] == [
            (
                str(tmp / "access.log"),
                (tmp / "access.log").stat().st_size,
                (tmp / "access.log").stat().st_size,
                0,
            )
        ]

    def test_a_compressed_generation_shows_its_size_on_disk_not_offset_of_size(
        self, read_then_rotated: tuple[Path, Path]
    ) -> None:
        """access.log.1 compressed to access.log.1.gz and finished: shown as compressed gz and
        done, with the decompressed bytes read and the .gz's size on disk."""
        cfg, tmp = read_then_rotated
        _once(cfg)
        plain, packed = tmp / "access.log.1", tmp / "access.log.1.gz"
        with plain.open("rb") as src, gzip.open(packed, "wb") as dst:
            shutil.copyfileobj(src, dst)
        plain.unlink()
        _once(cfg)
        text, files = _status(cfg)
        (f,) = [f for f in files if f["generation"] == "compressed"]
        assert f["path"] == str(packed) and f["compression"] == "gz" and f["progress"] == "done"
        assert f["size"] is None and f["size_on_disk"] == packed.stat().st_size
        line = next(ln for ln in text.splitlines() if str(packed) in ln)
        assert f"{packed.stat().st_size:,} bytes on disk, done" in line
        assert f"{int(str(f['offset'])):,} bytes of its decompressed content read" in line
        assert not re.search(r"offset [\d,]+ of", line)

    def test_a_file_moved_out_of_sight_says_its_name_is_not_known(
        self, read_then_rotated: tuple[Path, Path]
    ) -> None:
        """Renamed to a name trackd does not look under: the offset is shown without a size
        (none known for that file), and the text says the new name is not known."""
        cfg, tmp = read_then_rotated
        (tmp / "access.log.1").rename(tmp / "elsewhere")
        text, files = _status(cfg)
        (f,) = files
        assert f["found"] is False and f["size"] is None and f["lag_bytes"] is None
        assert "moved away: its new name is not known" in text
