"""`trackd forget ID` with the SQLite store (SPEC §8, §5.1): it erases the person from the graph
and their undelivered messages from the outbox, prints what it removed, works while `run` runs
(the daemon applies the request and drops its cache), and the person's later hits start fresh.
The Redis variant (two hosts) is in tests/identity/test_redis_fleet.py."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from tests.helpers import (
    free_port,
    outbox_bodies,
    read_messages,
    run_trackd,
    running_daemon,
    wait_until,
)
from tests.identity.world import World, aliases, pages

D, N = "devFORGET001", "gone@x.com"
OTHER = "devKEEPME001"


def _forget(cfg: Path, ident: str) -> tuple[int, dict[str, Any]]:
    proc = run_trackd("forget", ident, "--json", "-c", str(cfg))
    assert proc.stdout, proc.stderr
    return proc.returncode, orjson.loads(proc.stdout)


def _dead_sink(w: World) -> Path:
    """The world's config with a Segment sink on a port nobody listens on: messages stay in the
    outbox."""
    cfg = w.write()
    data = yaml.safe_load(cfg.read_text())
    data["sink"] = {"type": "segment", "url": f"http://127.0.0.1:{free_port()}/v1/batch",
                    "write_key": "k"}  # fmt: skip
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    return cfg


@pytest.mark.timeout(60)
def test_forget_erases_graph_and_undelivered_messages(tmp_path: Path) -> None:
    """With no daemon running, forget takes the lock itself: the person's devices, named id and
    alias go from the graph, their outbox messages go, another visitor's stay; it prints what
    it removed."""
    w = World(tmp_path)
    w.login(1.5, N, device=D)
    for t in range(10, 15):
        w.hit(t, device=D)
        w.hit(t, device=OTHER)
    cfg = _dead_sink(w)
    proc = run_trackd("run", "--once", "--deliver-timeout", "1s", "-c", str(cfg))
    assert proc.returncode == 1, proc.stderr  # delivery could not finish: all is in the outbox
    before = outbox_bodies(tmp_path / "state")
    mine = [m for m in before if m.get("userId") == N or m.get("previousId") == D]
    assert len(mine) == 7  # identify, alias and 5 pages
    text = run_trackd("forget", N, "-c", str(cfg))
    assert text.returncode == 0, text.stderr
    assert "removed 1 device(s), 1 epoch(s), 1 named id(s), 1 alias record(s), 7 undelivered" in (
        text.stdout
    )
    left = outbox_bodies(tmp_path / "state")
    assert {m["anonymousId"] for m in left} == {OTHER}
    assert run_trackd("identity", N, "-c", str(cfg)).returncode == 1
    assert run_trackd("identity", D, "-c", str(cfg)).returncode == 1


@pytest.mark.timeout(60)
def test_forget_of_an_unknown_id_says_so(tmp_path: Path) -> None:
    """An id trackd never saw: nothing removed, exit 0, and the output says it is unknown."""
    w = World(tmp_path)
    w.hit(1, device=OTHER)
    w.run(in_process=True)
    proc = run_trackd("forget", "nobody@x.com", "-c", str(tmp_path / "trackd.yaml"))
    assert proc.returncode == 0, proc.stderr
    assert "nobody@x.com: unknown to this trackd" in proc.stdout


@pytest.mark.timeout(90)
def test_forget_while_run_runs_is_applied_by_the_daemon(tmp_path: Path) -> None:
    """While `run` holds the lock, forget leaves a request the daemon applies; the daemon drops
    its cached identities too, so the person's next hits are a new, anonymous visitor and a new
    login sends a new alias."""
    w = World(tmp_path, max_hold="0.2s")
    w.login(1.5, N, device=D)
    first = w.hit(10, device=D)
    cfg = w.write()
    out = tmp_path / "out.jsonl"
    with running_daemon(cfg, tmp_path):
        wait_until(lambda: first in pages(read_messages(out)), 20, "the first hit")
        assert pages(read_messages(out))[first]["userId"] == N
        code, result = _forget(cfg, N)
        assert code == 0 and result["by"] == "the running trackd"
        assert result["removed"]["devices"] == 1 and result["removed"]["aliases"] == 1
        later = w.hit(20, device=D)
        w.login(30.5, N, device=D)
        relogged = w.hit(40, device=D)
        w.write()
        wait_until(lambda: relogged in pages(read_messages(out)), 20, "the later hits")
    by_path = pages(read_messages(out))
    assert "userId" not in by_path[later]
    assert by_path[relogged]["userId"] == N
    assert aliases(read_messages(out)) == [(D, N), (D, N)]


@pytest.mark.timeout(60)
def test_forget_with_redis_unreachable_fails_clearly(tmp_path: Path) -> None:
    """identity.store names a Redis nobody runs: forget erases nothing, says why and what to
    do, and exits 1 (no traceback)."""
    w = World(tmp_path, store=f"redis://127.0.0.1:{free_port()}/0")
    w.hit(1, device=OTHER)
    w.run(in_process=True)
    proc = run_trackd("forget", OTHER, "-c", str(tmp_path / "trackd.yaml"))
    assert proc.returncode == 1
    assert "is not reachable; nothing was erased" in proc.stdout
    assert "run `trackd forget` again once Redis answers" in proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.mark.timeout(60)
def test_run_once_does_not_wait_for_an_unreachable_redis(tmp_path: Path) -> None:
    """`run --once` with Redis down reads, resolves from its cache and delivers everything, fast,
    and exits 0 (SPEC §5.5): an outage is never a startup failure."""
    w = World(tmp_path, store=f"redis://127.0.0.1:{free_port()}/0")
    paths = [w.hit(t, device=f"devDOWN{t:05d}") for t in range(50)]
    cfg = w.write()
    proc = subprocess.run(
        [*_cmd(), "run", "--once", "-c", str(cfg)], capture_output=True, text=True, timeout=20
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(pages(read_messages(tmp_path / "out.jsonl"))) == sorted(paths)
    assert '"event":"identity_store_unreachable"' in proc.stderr


def _cmd() -> list[str]:
    from tests.helpers import trackd_cmd

    return trackd_cmd()
