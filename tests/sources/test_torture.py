"""The torture run (bench/torture.py) at CI scale: a writer at 1,500 lines/s, logrotate every few
seconds, two kill -9 restarts; every line exactly once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import scaled

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_torture_loses_and_duplicates_nothing() -> None:
    """Rotations (create, compress, delaycompress; some while the agent is down) and SIGKILLs at
    random moments under a steady writer: `lost=0 dup=0`."""
    seconds = scaled(12, 60)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "torture.py"), "--seconds", str(seconds)],
        capture_output=True,
        text=True,
        timeout=seconds + 300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " lost=0 dup=0 of " in proc.stdout
