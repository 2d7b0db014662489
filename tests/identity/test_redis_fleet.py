"""A fleet on one Redis (SPEC §5.5, issue 11): two agents with their own state directories and
log files share the identity graph of a real `redis-server` — a login on one names the visitor
on the other, a login both see is aliased once, an outage loses nothing, and `forget` on one
host erases the person on both."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from tests.helpers import free_port, outbox_bodies, read_messages, running_daemon, trackd_cmd
from tests.helpers import wait_until as _wait_until
from tests.identity.world import World, aliases, pages
from tests.redis_server import RedisServer, serve

D, D2, N = "devFLEETAAAA", "devFLEETBBBB", "fleet@x.com"


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from serve(tmp_path_factory)


def host(tmp: Path, name: str, server: RedisServer) -> World:
    (tmp / name).mkdir()
    return World(tmp / name, store=server.url, site="shop")


def all_aliases(*worlds: World) -> list[tuple[str, str]]:
    return [a for w in worlds for a in aliases(read_messages(w.tmp / "out.jsonl"))]


def wait_until(pred: Any, timeout: float, what: str) -> None:
    _wait_until(pred, timeout, what, every=0.05)


@pytest.mark.timeout(60)
def test_a_login_on_host_a_names_the_hits_on_host_b(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Host B saw the visitor anonymous; the login is logged on host A; B's later hits carry the
    named userId, and one alias is sent by the two hosts together."""
    a, b = host(tmp_path, "a", redis_server), host(tmp_path, "b", redis_server)
    early = b.hit(0, device=D)
    b.run(in_process=True)
    a.login(10.5, N, device=D)
    a.run(in_process=True)
    later = [b.hit(t, device=D) for t in (20, 30)]
    messages, _ = b.run(in_process=True)
    by_path = pages(messages)
    assert "userId" not in by_path[early]
    assert [by_path[p]["userId"] for p in later] == [N, N]
    assert all_aliases(a, b) == [(D, N)]


@pytest.mark.timeout(120)
def test_two_hosts_racing_on_the_same_logins_send_each_alias_once(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Both hosts log the same 300 logins and run at the same moment (two processes): every
    device's alias is sent exactly once in all."""
    a, b = host(tmp_path, "a", redis_server), host(tmp_path, "b", redis_server)
    devices = [f"devRACE{n:05d}" for n in range(300)]
    for w in (a, b):
        for n, dev in enumerate(devices):
            w.login(1.5 + n, f"u{n}@x.com", device=dev)
    procs = [
        subprocess.Popen(
            trackd_cmd("run", "--once", "-c", str(w.write())),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for w in (a, b)
    ]
    for p in procs:
        _, err = p.communicate(timeout=90)
        assert p.returncode == 0, err.decode()
    sent = all_aliases(a, b)
    assert sorted(sent) == sorted((dev, f"u{n}@x.com") for n, dev in enumerate(devices))


def _daemon_world(tmp: Path, name: str, server: RedisServer, sink: dict[str, Any] | None) -> World:
    w = host(tmp, name, server)
    w.identity["max_hold"] = "0.2s"
    w.write()
    if sink is not None:
        cfg = w.tmp / "trackd.yaml"
        data = yaml.safe_load(cfg.read_text())
        data["sink"] = sink
        cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    return w


def _append(w: World) -> None:
    """Append what the world logged since the last write, keeping the config as it is."""
    cfg = w.tmp / "trackd.yaml"
    kept = cfg.read_text()
    w.write()
    cfg.write_text(kept)


def _pages(w: World) -> dict[str, dict[str, Any]]:
    return pages(read_messages(w.tmp / "out.jsonl"))


@pytest.mark.timeout(180)
def test_redis_killed_mid_run_loses_nothing_and_recovers(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Two daemons ship while Redis is killed: every hit of both reaches its sink, no alias is
    sent whose claim Redis did not record, and once Redis is back a login on A names B's hits
    again."""
    a = _daemon_world(tmp_path, "a", redis_server, None)
    b = _daemon_world(tmp_path, "b", redis_server, None)
    with running_daemon(a.tmp / "trackd.yaml", a.tmp), running_daemon(b.tmp / "trackd.yaml", b.tmp):
        for w in (a, b):
            for t in range(20):
                w.hit(t, device=f"dev{w.tmp.name}{t:05d}")
            _append(w)
        wait_until(lambda: len(_pages(a)) == 20 and len(_pages(b)) == 20, 30, "the first hits")
        redis_server.stop()
        a.login(30.5, N, device=D)
        for w in (a, b):
            for t in range(40, 80):
                w.hit(t, device=D if t % 2 else f"dev{w.tmp.name}{t:05d}")
            _append(w)
        wait_until(lambda: len(_pages(a)) == 60 and len(_pages(b)) == 60, 30, "hits in the outage")
        redis_server.start()
        a.login(100.5, "back@x.com", device=D2)
        _append(a)
        client = redis_server.client()
        try:
            wait_until(
                lambda: client.exists("td:shop:d:{" + D2 + "}") == 1, 60, "A's login in Redis"
            )
        finally:
            client.close()
        probe = b.hit(110, device=D2)
        _append(b)
        wait_until(lambda: probe in _pages(b), 30, "B's probe hit")
        assert _pages(b)[probe].get("userId") == "back@x.com"
        # The aliases A could not claim while Redis was away go out with the devices' next hits.
        a.hit(120, device=D)
        a.hit(121, device=D2)
        _append(a)
        wait_until(lambda: len(all_aliases(a, b)) == 2, 30, "the deferred aliases")
    assert sorted(all_aliases(a, b)) == [(D, N), (D2, "back@x.com")]
    client = redis_server.client()
    try:
        for previous, _user in all_aliases(a, b):
            assert client.exists("td:shop:a:{" + previous + "}") == 1, previous
    finally:
        client.close()
    assert len(_pages(a)) == 62 and len(_pages(b)) == 61


@pytest.mark.timeout(120)
def test_forget_on_one_host_erases_the_person_on_both(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Host B holds the person's undelivered messages (its endpoint is down); `trackd forget`
    on host A erases the person from Redis, and B drops their messages from its outbox while
    another visitor's stay."""
    dead = f"http://127.0.0.1:{free_port()}/v1/batch"
    a = _daemon_world(tmp_path, "a", redis_server, None)
    sink = {"type": "segment", "url": dead, "write_key": "k", "retry": {"initial_backoff": "1s"}}
    b = _daemon_world(tmp_path, "b", redis_server, sink)
    a.login(1.5, N, device=D)
    a.run(in_process=True)
    with running_daemon(b.tmp / "trackd.yaml", b.tmp):
        for t in range(10, 20):
            b.hit(t, device=D)
            b.hit(t, device="devOTHERPERSON")
        _append(b)
        wait_until(lambda: len(outbox_bodies(b.tmp / "state")) == 20, 30, "B's outbox")
        assert sum(m.get("userId") == N for m in outbox_bodies(b.tmp / "state")) == 10
        done = subprocess.run(
            trackd_cmd("forget", N, "--json", "-c", str(a.tmp / "trackd.yaml")),
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        result = orjson.loads(done.stdout)
        assert result["removed"]["devices"] == 1 and result["removed"]["named"] == 1
        wait_until(
            lambda: len(outbox_bodies(b.tmp / "state")) == 10, 30, "B's outbox without the person"
        )
        left = outbox_bodies(b.tmp / "state")
        assert {m["anonymousId"] for m in left} == {"devOTHERPERSON"}
    client = redis_server.client()
    try:
        assert client.exists("td:shop:d:{" + D + "}", "td:shop:n:{" + N + "}") == 0
        assert client.exists("td:shop:a:{" + D + "}") == 0
    finally:
        client.close()
