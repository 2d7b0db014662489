"""`trackd check` looks at the disk as `run` will: a state_dir others can read, `~` in paths, a
file sink whose directory is missing, and which file of a source it samples (the newest it can
read, listing those it cannot)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.commands.check import check_sources, config_warnings, render_text
from agent.config import load_config
from tests.helpers import run_trackd
from tests.test_cli_errors import run_read_only

T = "28/Nov/2026:10:00:00 +0000"
COMMON = f'198.51.100.7 - - [{T}] "GET /p HTTP/1.1" 200 5\n'
COMBINED = f'198.51.100.7 - - [{T}] "GET /p HTTP/1.1" 200 5 "-" "curl/8"\n'


def _write(tmp: Path, **cfg: Any) -> Path:
    path = tmp / "trackd.yaml"
    data = {"state_dir": str(tmp / "state"), "metrics": {"listen": ""}, **cfg}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _source(*paths: str, fmt: str = "common") -> dict[str, Any]:
    return {"name": "web", "kind": "access", "paths": list(paths), "format": fmt}


@pytest.mark.timeout(10)
class TestStateDirMode:
    def test_a_state_dir_others_can_read_is_a_warning_saying_chmod_700(
        self, tmp_path: Path
    ) -> None:
        """state_dir mode 0755: a warning naming the path, the mode and `chmod 700 PATH`."""
        state = tmp_path / "state"
        state.mkdir()
        state.chmod(0o755)
        config = load_config(str(_write(tmp_path)))
        (warning,) = [w for w in config_warnings(config, []) if "state_dir" in w]
        assert f"state_dir {state} is readable by its group and others (mode 0755)" in warning
        assert warning.endswith(f"chmod 700 {state}")

    def test_a_group_writable_state_dir_says_writable(self, tmp_path: Path) -> None:
        """Mode 0770 is reported as readable and writable by its group (not by others)."""
        state = tmp_path / "state"
        state.mkdir()
        state.chmod(0o770)
        config = load_config(str(_write(tmp_path)))
        (warning,) = [w for w in config_warnings(config, []) if "state_dir" in w]
        assert "is readable and writable by its group (mode 0770)" in warning

    @pytest.mark.parametrize("mode", [0o700, 0o711, None])
    def test_a_private_or_missing_state_dir_is_not_a_warning(
        self, tmp_path: Path, mode: int | None
    ) -> None:
        """0700, 0711 (others may only traverse) and a state_dir `run` will create 0700: no warning."""
        if mode is not None:
            (tmp_path / "state").mkdir()
            (tmp_path / "state").chmod(mode)
        config = load_config(str(_write(tmp_path)))
        assert not [w for w in config_warnings(config, []) if "state_dir" in w]


@pytest.mark.timeout(30)
class TestHomeDirectory:
    def test_check_shows_each_source_pattern_with_home_expanded(self, tmp_path: Path) -> None:
        """`paths: [~/logs/*.log]` is read under $HOME, and `check` prints the resolved pattern."""
        (tmp_path / "logs").mkdir()
        (tmp_path / "logs" / "a.log").write_text(COMMON)
        cfg = _write(tmp_path, sources=[_source("~/logs/*.log")], state_dir="~/state")
        proc = run_trackd("check", "-c", str(cfg), env={"HOME": str(tmp_path)})
        assert proc.returncode == 0, proc.stderr
        assert f"    path {tmp_path}/logs/*.log\n" in proc.stdout
        assert f"sample {tmp_path}/logs/a.log: 1/1 lines parsed" in proc.stdout
        assert f"state_dir: {tmp_path}/state" in proc.stdout

    def test_a_secret_file_under_home_is_read(self, tmp_path: Path) -> None:
        """`api_key_file: ~/km.key` is read from $HOME (not from a directory named `~`)."""
        (tmp_path / "km.key").write_text("k-0123456789\n")
        cfg = _write(tmp_path, sink={"type": "kissmetrics", "api_key_file": "~/km.key"}, sources=[])
        proc = run_trackd("check", "-c", str(cfg), env={"HOME": str(tmp_path)})
        assert proc.returncode == 0, proc.stderr
        assert "k-0123456789" not in proc.stdout + proc.stderr

    def test_a_sink_path_under_home_is_resolved(self, tmp_path: Path) -> None:
        """`sink.path: ~/out.jsonl` is the file in $HOME."""
        cfg = _write(tmp_path, sink={"type": "file", "path": "~/out.jsonl"})
        proc = run_trackd("check", "-c", str(cfg), env={"HOME": str(tmp_path)})
        assert proc.returncode == 0, proc.stderr
        assert f"sink: file -> {tmp_path}/out.jsonl" in proc.stdout


@pytest.mark.timeout(30)
class TestSinkDirectory:
    def test_a_missing_sink_directory_fails_check_at_sink_path(self, tmp_path: Path) -> None:
        """A file sink in a directory that does not exist: exit 3, naming the file, line, key
        and directory; nothing is created."""
        missing = tmp_path / "nodir"
        cfg = _write(tmp_path, sink={"type": "file", "path": str(missing / "out.jsonl")})
        proc = run_trackd("check", "-c", str(cfg))
        assert proc.returncode == 3
        assert f"{cfg}:" in proc.stderr and "sink.path: trackd cannot write" in proc.stderr
        assert f"the directory {missing} does not exist" in proc.stderr
        assert not missing.exists() and not (tmp_path / "state").exists()

    def test_a_sink_path_that_is_a_directory_fails_check(self, tmp_path: Path) -> None:
        """sink.path naming a directory: exit 3, saying so."""
        cfg = _write(tmp_path, sink={"type": "file", "path": str(tmp_path)})
        proc = run_trackd("check", "-c", str(cfg))
        assert proc.returncode == 3
        assert f"{tmp_path} is a directory" in proc.stderr

    def test_a_sink_directory_this_user_cannot_write_fails_check(self, tmp_path: Path) -> None:
        """A directory of mode 0555 (held to file modes, as root too): exit 3, saying so."""
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        cfg = _write(tmp_path, sink={"type": "file", "path": str(locked / "out.jsonl")})
        proc = run_read_only("check", "-c", str(cfg))
        assert proc.returncode == 3, proc.stdout
        assert f"the directory {locked} is not writable by this user" in proc.stderr


def _report(cfg: Path) -> Any:
    (rep,) = check_sources(load_config(str(cfg)), None)
    return rep


@pytest.mark.timeout(30)
class TestWhichFileIsSampled:
    def test_the_newest_file_is_sampled_not_the_first_by_name(self, tmp_path: Path) -> None:
        """`a.log` (old, another layout) and `b.log` (newest): the sample is b.log's."""
        old, new = tmp_path / "a.log", tmp_path / "b.log"
        old.write_text("something else entirely\n")
        new.write_text(COMMON)
        os.utime(old, (1_700_000_000, 1_700_000_000))
        rep = _report(_write(tmp_path, sources=[_source(str(tmp_path / "*.log"))]))
        assert rep.sample_from == str(new) and (rep.parsed, rep.lines) == (1, 1)

    def test_a_damaged_newest_file_is_listed_and_the_next_is_sampled(self, tmp_path: Path) -> None:
        """The newest file is a truncated .gz: it is listed with why, the next one is sampled."""
        good, bad = tmp_path / "a.log", tmp_path / "b.log"
        good.write_text(COMMON)
        bad.write_bytes(gzip.compress(COMMON.encode() * 50)[:30])
        os.utime(good, (1_700_000_000, 1_700_000_000))
        rep = _report(_write(tmp_path, sources=[_source(str(tmp_path / "*.log"))]))
        assert rep.sample_from == str(good) and rep.parsed == 1
        assert rep.unreadable == [
            (str(bad), "the compressed data ends early (the file is incomplete or truncated)")
        ]

    def test_no_readable_file_means_no_sample_line(self, tmp_path: Path) -> None:
        """Only damaged files: no "0/0 lines parsed (n/a)", each file with why instead."""
        bad = tmp_path / "b.log"
        bad.write_bytes(b"\x1f\x8b\x08\x00garbage-not-deflate")
        cfg = _write(tmp_path, sources=[_source(str(bad))])
        config = load_config(str(cfg))
        reports = check_sources(config, None)
        text = render_text(config, reports, [])
        assert "lines parsed" not in text
        assert f"cannot read {bad}: the compressed data is damaged" in text

    def test_an_unreadable_file_is_listed_with_why(self, tmp_path: Path) -> None:
        """A newest file of mode 0000 (held to file modes, as root too): `check` samples the
        readable one and lists the other as permission denied for this user."""
        good, locked = tmp_path / "a.log", tmp_path / "b.log"
        good.write_text(COMBINED)
        locked.write_text(COMBINED)
        locked.chmod(0)
        os.utime(good, (1_700_000_000, 1_700_000_000))
        cfg = _write(tmp_path, sources=[_source(str(tmp_path / "*.log"), fmt="combined")])
        proc = run_read_only("check", "-c", str(cfg))
        assert proc.returncode == 0, proc.stderr
        assert f"sample {good}: 1/1 lines parsed (100.0%)" in proc.stdout
        assert f"cannot read {locked}: permission denied for this user" in proc.stdout
