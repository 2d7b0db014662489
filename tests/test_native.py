"""`agent.native`: which hot modules run compiled, as `trackd --version` reports it."""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from agent import __version__, native

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(30)
def test_every_listed_module_exists_as_python_source() -> None:
    """Each module setup.py compiles is a .py file of the tree (a renamed module would make the
    compiled build fail and fall back to pure Python without anyone noticing)."""
    for name in native.MODULES:
        assert (ROOT / Path(*name.split("."))).with_suffix(".py").is_file(), name
        assert importlib.import_module(name).__name__ == name


@pytest.mark.timeout(30)
def test_build_names_the_build_that_runs() -> None:
    """`build()` says pure Python when no listed module loads from an extension, and counts
    the compiled ones otherwise; `is_compiled()` agrees with it."""
    done = native.compiled_modules()
    assert set(done) <= set(native.MODULES)
    if done:
        assert native.is_compiled()
        assert (
            native.build() == f"compiled (mypyc, {len(done)} of {len(native.MODULES)} hot modules)"
        )
        assert importlib.import_module(done[0]).__file__.endswith(".so")  # type: ignore[union-attr]
    else:
        assert not native.is_compiled()
        assert native.build() == "pure Python"
        assert importlib.import_module(native.MODULES[0]).__file__.endswith(".py")  # type: ignore[union-attr]


@pytest.mark.timeout(60)
def test_version_reports_the_build() -> None:
    """`trackd --version` prints the version and the build on stdout and exits 0."""
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "--version"],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"trackd {__version__} ({native.describe()})"


@pytest.mark.timeout(30)
def test_describe_names_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """`describe()` adds whether the native block kernel runs: off with `TRACKD_KERNEL=0`,
    missing when the extension was not built, else on (and then it imports)."""
    monkeypatch.setenv("TRACKD_KERNEL", "0")
    assert native.describe() == f"{native.build()}, native block kernel off (TRACKD_KERNEL=0)"
    monkeypatch.delenv("TRACKD_KERNEL")
    if importlib.util.find_spec("agent._kernel") is None:
        assert native.describe().endswith(", no native block kernel")
    else:
        assert native.describe().endswith(", native block kernel")
        assert importlib.import_module("agent._kernel").VERSION == 1
