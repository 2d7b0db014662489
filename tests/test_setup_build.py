"""setup.py's optional compiled build: when it cannot or must not compile, the hot modules stay
Python and the native kernel is left out, the build still succeeds, it says why, and no
extension is left behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tree(tmp_path: Path) -> Path:
    """A copy of what setup.py builds from (the package, its metadata)."""
    dst = tmp_path / "src"
    shutil.copytree(
        ROOT / "agent", dst / "agent", ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd")
    )
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, dst / name)
    return dst


def _build_inplace(src: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        cwd=src,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def _extensions(src: Path) -> list[Path]:
    return [p for p in src.rglob("*") if p.suffix in (".so", ".pyd")]


@pytest.mark.timeout(120)
def test_trackd_pure_keeps_the_modules_python(tmp_path: Path) -> None:
    """TRACKD_PURE=1: nothing is compiled, the build exits 0 and names the reason."""
    src = _tree(tmp_path)
    proc = _build_inplace(src, TRACKD_PURE="1")
    assert proc.returncode == 0, proc.stderr
    assert "trackd build: the hot modules stay pure Python (TRACKD_PURE is set)" in proc.stderr
    assert "native block kernel" not in proc.stderr
    assert _extensions(src) == []


@pytest.mark.timeout(300)
def test_a_failing_compiler_falls_back_to_python(tmp_path: Path) -> None:
    """A C compiler that fails (here `false`): the build still exits 0, says compiling failed,
    and leaves no extension behind, so the package imports as pure Python."""
    false = shutil.which("false")
    assert false is not None
    src = _tree(tmp_path)
    proc = _build_inplace(src, CC=false, LDSHARED=false)
    assert proc.returncode == 0, proc.stderr
    assert "compiling failed (" in proc.stderr
    assert "the hot modules stay pure Python" in proc.stderr
    assert "the native block kernel could not be built (" in proc.stderr
    assert _extensions(src) == []
