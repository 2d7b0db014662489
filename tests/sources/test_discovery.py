"""Finding files (SCENARIOS.md §A 13, 24): globs with `**`, excludes, symlinks, many idle files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.pipeline.tail import DISCOVER_WATCHED
from agent.sources.discovery import expand, watch_dirs
from tests.conftest import scaled
from tests.helpers import access_line, write_access_log
from tests.sources.tailing import Agent, assert_exactly_once


def test_globs_with_double_star_and_excludes(tmp_path: Path) -> None:
    """`**` reaches nested directories; an exclude without `/` matches names, with `/` paths."""
    for rel in ("a/x.log", "a/b/c/y.log", "a/b/skip.log", "a/old/z.log", "a/b/c/y.log.1"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x\n")
    found = expand((str(tmp_path / "**" / "*.log"),), ("skip.log", str(tmp_path / "a/old/*")))
    assert [Path(f.path).relative_to(tmp_path).as_posix() for f in found] == [
        "a/b/c/y.log",
        "a/x.log",
    ]


def test_watch_dirs_are_the_fixed_prefixes(tmp_path: Path) -> None:
    """The directories watched are each glob's fixed prefix (recursive when a wildcard or a
    missing directory sits below it)."""
    (tmp_path / "logs").mkdir()
    assert watch_dirs([str(tmp_path / "logs" / "*.log")]) == ([str(tmp_path / "logs")], False)
    assert watch_dirs([str(tmp_path / "*" / "app" / "*.log")]) == ([str(tmp_path)], True)
    assert watch_dirs([str(tmp_path / "later" / "a.log")]) == ([str(tmp_path)], True)


@pytest.mark.timeout(60)
def test_symlinked_paths_and_two_globs_read_a_file_once(tmp_path: Path) -> None:
    """S13: a file reached through a k8s-style symlink and through a second glob of the same
    source is read once."""
    containers = tmp_path / "containers"
    pods = tmp_path / "pods" / "ns_pod_uid" / "app"
    containers.mkdir()
    pods.mkdir(parents=True)
    target = containers / "app-0123.log"
    write_access_log(target, 0, 100)
    (pods / "0.log").symlink_to(os.path.relpath(target, pods))
    paths = [str(tmp_path / "pods" / "**" / "*.log"), str(containers / "*.log")]
    agent = Agent(tmp_path, paths).start()
    try:
        agent.wait_seqs(100)
        write_access_log(target, 100, 50)
        assert_exactly_once(agent.wait_seqs(150), range(150))
    finally:
        agent.close()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_thousands_of_idle_files_cost_little_cpu_and_few_descriptors(tmp_path: Path) -> None:
    """S24 (scaled: 1,000 files in CI, 20,000 in full, under a `**` glob): every file is read,
    open descriptors stay under the cap (soft limit 256 -> cap 128), a new file deep in the tree
    is found within the discovery interval, and an idle parked file that grows is read again.
    (Idle CPU is a measurement, not a test: `bench/tailing.py idle --files 1000`.)"""
    root = tmp_path / "pods"
    n = scaled(1000, 20000)
    for i in range(n):
        d = root / f"ns{i % 20}" / f"pod{i}"
        d.mkdir(parents=True)
        (d / "0.log").write_text(access_line(i))
    agent = Agent(tmp_path, [str(root / "**" / "*.log")], nofile=256).start()
    try:
        agent.wait_seqs(n, timeout=180)
        fds = len(os.listdir(f"/proc/{agent.pid}/fd"))
        assert fds <= 128 + 32, f"{fds} descriptors open"
        new = root / "ns3" / "newpod" / "0.log"
        new.parent.mkdir()
        new.write_text(access_line(n))
        # Found by a watchfiles event or, at the latest, the next glob pass (DISCOVER_WATCHED).
        agent.wait_seqs(n + 1, timeout=DISCOVER_WATCHED + 5)
        with (root / "ns0" / "pod0" / "0.log").open("a") as fh:
            fh.write(access_line(n + 1))
        assert_exactly_once(agent.wait_seqs(n + 2, timeout=10), range(n + 2))
    finally:
        agent.close()
