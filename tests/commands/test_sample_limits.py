"""`trackd check --sample` on hostile inputs: devices, FIFOs, missing files and huge lines are
refused or bounded — never an endless read, a hang, or a silent exit 0."""

from __future__ import annotations

import os
import resource
import subprocess
from pathlib import Path

import pytest

from tests.helpers import make_config, run_trackd, trackd_cmd

#: The address space a `check` child may use: a regression fails with MemoryError, not an OOM.
MEMORY_CAP = 2 * 1024**3


def _capped() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def check_capped(cfg: Path, sample: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`trackd check -c cfg --sample sample` with its memory capped."""
    return subprocess.run(
        trackd_cmd("check", "-c", str(cfg), "--sample", sample),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        preexec_fn=_capped,  # sets a limit only, before exec
    )


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return make_config(tmp_path, paths=[str(tmp_path / "none.log")], fmt="combined")


@pytest.mark.timeout(60)
def test_sample_of_a_character_device_is_refused(cfg: Path) -> None:
    """`--sample /dev/zero` exits 3 naming the file, instead of reading until memory runs out."""
    proc = check_capped(cfg, "/dev/zero")
    assert proc.returncode == 3, proc.stderr
    assert "/dev/zero" in proc.stderr
    assert "not a regular file" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.timeout(60)
def test_sample_of_a_fifo_is_refused_without_blocking(cfg: Path, tmp_path: Path) -> None:
    """`--sample FIFO` exits 3 at once: no writer is waited for."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    proc = run_trackd("check", "-c", str(cfg), "--sample", str(fifo), timeout=30)
    assert proc.returncode == 3, proc.stderr
    assert str(fifo) in proc.stderr
    assert "FIFO" in proc.stderr


@pytest.mark.timeout(60)
def test_missing_sample_exits_3(cfg: Path, tmp_path: Path) -> None:
    """`--sample` of a file that does not exist exits 3 and says so."""
    missing = tmp_path / "nope.log"
    proc = run_trackd("check", "-c", str(cfg), "--sample", str(missing))
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    assert f"cannot read sample {missing}" in proc.stderr
    assert "No such file or directory" in proc.stderr


@pytest.mark.timeout(60)
def test_sample_of_a_directory_exits_3(cfg: Path, tmp_path: Path) -> None:
    """`--sample DIR` exits 3: a directory has no lines to test."""
    proc = run_trackd("check", "-c", str(cfg), "--sample", str(tmp_path))
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    assert "directory" in proc.stderr


@pytest.mark.timeout(90)
def test_a_huge_line_is_read_only_up_to_the_bound(cfg: Path, tmp_path: Path) -> None:
    """A 4 GiB file without a newline is sampled within the byte bound and reported too long."""
    huge = tmp_path / "huge.log"
    with huge.open("wb") as fh:
        fh.truncate(4 * 1024**3)  # sparse: no disk used, 4 GiB of NULs to read
    proc = check_capped(cfg, str(huge), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "longer than max_line_bytes" in proc.stdout
    assert "0/1 lines parsed" in proc.stdout
