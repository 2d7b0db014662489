"""`trackd identity ID` (SPEC §6) finds an identifier as intake stored it, with the SQLite store or
the shared Redis one; `trackd status` counts identities with either."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.helpers import run_trackd
from tests.identity.world import World
from tests.redis_server import RedisServer, serve

D = "devIDENT0001"


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from serve(tmp_path_factory)


@pytest.mark.timeout(60)
def test_an_email_is_found_whatever_its_case(tmp_path: Path) -> None:
    """Intake lower-cases emails (identity.lowercase_emails), so `ALICE@EXAMPLE.COM` is looked up
    as `alice@example.com`: the person, their device and the alias are shown (issue 13)."""
    w = World(tmp_path)
    w.login(1.5, "Alice@Example.COM", device=D)
    w.run(in_process=True)
    proc = run_trackd(
        "identity", "ALICE@EXAMPLE.COM", "--json", "-c", str(tmp_path / "trackd.yaml")
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = orjson.loads(proc.stdout)
    assert [p["named"] for p in data["people"]] == ["alice@example.com"]
    assert [d["device"] for d in data["devices"]] == [D]
    assert data["aliases_sent"][0]["previousId"] == D


@pytest.mark.timeout(60)
def test_identity_and_status_read_the_redis_graph(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """With identity.store on Redis, `identity` shows what the fleet's graph holds and `status`
    counts its identities (the state database holds none of them)."""
    w = World(tmp_path, store=redis_server.url, site="shop")
    w.login(1.5, "bob@x.com", device=D)
    w.run(in_process=True)
    cfg = str(tmp_path / "trackd.yaml")
    proc = run_trackd("identity", "bob@x.com", "--json", "-c", cfg)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = orjson.loads(proc.stdout)
    assert [d["device"] for d in data["devices"]] == [D]
    assert data["aliases_sent"] == [
        {"previousId": D, "userId": "bob@x.com", "at": "2026-06-01T10:00:01.500Z"}
    ]
    status = run_trackd("status", "--json", "-c", cfg)
    assert status.returncode == 0, status.stderr
    assert orjson.loads(status.stdout)["identities"] == {"device": 1, "named": 1, "aliases": 1}


@pytest.mark.timeout(60)
def test_identity_with_redis_unreachable_says_so(tmp_path: Path, redis_server: RedisServer) -> None:
    """Redis down: `identity` does not claim the id is unknown; it says the store cannot be
    read (exit 3, no traceback)."""
    w = World(tmp_path, store=redis_server.url, site="shop")
    w.login(1.5, "bob@x.com", device=D)
    w.run(in_process=True)
    redis_server.stop()
    proc = run_trackd("identity", "bob@x.com", "-c", str(tmp_path / "trackd.yaml"))
    assert proc.returncode == 3
    assert "is not reachable" in proc.stderr and "Traceback" not in proc.stderr
