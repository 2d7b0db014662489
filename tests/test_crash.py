"""kill -9 at random points of `trackd run`, then restart (SPEC §4, §5.2, SCENARIOS 14).

Into the file sink: the daemon is killed while it reads, commits and writes; after each kill the
committed output holds no messageId twice (the file sink is its own outbox: it writes no outbox
rows), and a final `run --once` must leave every sequence number in the output exactly once.
Through an HTTP sink (Segment, to the loopback receiver): after each kill the outbox holds no
messageId twice, and after a final drain every line reached the endpoint, repeats only with the
same messageId and bytes.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from tests.conftest import scaled
from tests.helpers import (
    NotifySocket,
    committed_length,
    free_port,
    http_get,
    make_config,
    metric,
    outbox_bodies,
    page_seqs,
    read_messages,
    run_trackd,
    trackd_cmd,
    wait_until,
    write_access_log,
)
from tests.receiver import Receiver, Request, Response
from tests.sources.tailing import Agent, assert_exactly_once


def _assert_state_consistent(tmp_path: Path) -> None:
    """File sink: nothing twice in the committed output. (The file sink is its own outbox and
    writes no outbox rows: the HTTP loop below checks the outbox.)"""
    # Bytes past the committed length are a crash's leftovers; the next start truncates them.
    committed = committed_length(tmp_path / "state", tmp_path / "out.jsonl") or 0
    out_ids = [m["messageId"] for m in read_messages(tmp_path / "out.jsonl", committed)]
    dup_out = [k for k, n in Counter(out_ids).items() if n > 1]
    assert not dup_out, f"{len(dup_out)} messages twice in the output"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kill9_at_random_points_then_restart_is_exactly_once(tmp_path: Path) -> None:
    """Repeated SIGKILLs of a busy `trackd run` never lose or duplicate a line."""
    rng = random.Random(20261128)
    log = tmp_path / "access.log"
    total = 0
    write_access_log(log, total, 150_000)
    total += 150_000
    cfg = make_config(tmp_path, paths=[str(log)])
    rounds = scaled(4, 40)
    for _ in range(rounds):
        proc = subprocess.Popen(
            trackd_cmd("run", "-c", str(cfg)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        # The point of the test is a kill at an arbitrary instant: a random delay, not an event.
        time.sleep(rng.uniform(0.3, 2.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        _assert_state_consistent(tmp_path)
        grow = rng.randrange(0, 20_000)
        write_access_log(log, total, grow)
        total += grow
    final = run_trackd("run", "--once", "-c", str(cfg), timeout=300)
    assert final.returncode == 0, final.stderr
    seqs = page_seqs(read_messages(tmp_path / "out.jsonl"))
    counts = Counter(seqs)
    assert [s for s, n in counts.items() if n > 1] == []
    assert sorted(counts) == list(range(total))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kill9_with_logins_and_sessions_keeps_every_page_once(tmp_path: Path) -> None:
    """With app-log logins, session joins and logouts in play, SIGKILLs at random points still
    leave every page view exactly once, every alias at most once, and no epoch aliased to two
    people: identity changes commit with the positions that caused them."""
    from tests.identity.world import World, aliases

    rng = random.Random(7)
    w = World(tmp_path, max_hold="1s")
    t = 0.0
    expected = 0

    def grow(visitors: int) -> None:
        nonlocal t, expected
        for _ in range(visitors):
            device = f"dev{rng.randrange(400):05d}x"
            t += rng.uniform(0.5, 3)
            w.hit(t, device=device)
            expected += 1
            if rng.random() < 0.2:
                session = f"sess{expected:06d}"
                w.login(t + 0.4, f"user{rng.randrange(600)}@x.com", session=session)
                t += 1
                w.hit(t, device=device, session=session)
                expected += 1
                if rng.random() < 0.3:
                    t += 2
                    w.logout(t + 0.5, session=session)

    grow(20_000)
    cfg = w.write()
    for _ in range(scaled(3, 20)):
        proc = subprocess.Popen(
            trackd_cmd("run", "-c", str(cfg)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(rng.uniform(0.3, 1.5))  # a kill at an arbitrary instant
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        _assert_state_consistent(tmp_path)
        grow(rng.randrange(2_000, 8_000))
        w.write()
    final = run_trackd("run", "--once", "-c", str(cfg), timeout=300)
    assert final.returncode == 0, final.stderr
    messages = read_messages(tmp_path / "out.jsonl")
    page_paths = Counter(m["properties"]["path"] for m in messages if m["type"] == "page")
    assert len(page_paths) == expected and max(page_paths.values()) == 1
    pairs = aliases(messages)
    assert len(pairs) == len(set(pairs))
    by_epoch: dict[str, set[str]] = {}
    for previous, user in pairs:
        by_epoch.setdefault(previous, set()).add(user)
    assert all(len(users) == 1 for users in by_epoch.values())


@pytest.mark.slow
@pytest.mark.timeout(scaled(120, 900))  # 200 kills at full count take ~5 min
def test_kill9_during_http_delivery_resends_only_under_the_same_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S14 over HTTP: SIGKILLs of `trackd run` while it delivers to a slow-ish Segment endpoint
    never put a messageId twice in the outbox; after a restart every line has reached the
    endpoint, and a line that arrived twice carried the same messageId and bytes both times."""
    monkeypatch.setenv("TRACKD_TEST_WRITE_KEY", "wk-crash-s3cr3t")
    rng = random.Random(14)
    latency = random.Random(41)  # the receiver's thread draws from its own generator

    def slowish(_req: Request) -> Response:
        return Response.json({"success": True}, delay=latency.uniform(0.02, 0.05))

    log = tmp_path / "access.log"
    total = 3000
    write_access_log(log, 0, total)
    with Receiver() as rx:
        rx.respond_with(slowish)
        sink = {
            "type": "segment",
            "url": rx.url + "/v1/batch",
            "write_key": "${TRACKD_TEST_WRITE_KEY}",
            "batch": {"max_events": 20, "max_wait": "50ms"},
            "retry": {"initial_backoff": "10ms", "max_backoff": "200ms"},
            "concurrency": 4,
        }
        cfg = make_config(tmp_path, paths=[str(log)], extra={"sink": sink})
        interrupted = 0  # kills after which the outbox still held messages
        for _ in range(scaled(8, 200)):
            notify = NotifySocket(tmp_path)
            proc = subprocess.Popen(
                trackd_cmd("run", "-c", str(cfg)),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "NOTIFY_SOCKET": notify.path},
            )
            try:
                # Counted from READY=1, not from the start: a slow start-up on a loaded machine
                # must not turn every kill into a kill before delivery began.
                notify.wait_for("READY=1", 30)
            finally:
                notify.close()
            time.sleep(rng.uniform(0.05, 0.8))  # a kill at an arbitrary instant of delivery
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            box = [m["messageId"] for m in outbox_bodies(tmp_path / "state")]
            twice = [k for k, n in Counter(box).items() if n > 1]
            assert not twice, f"{len(twice)} messageIds twice in the outbox"
            interrupted += bool(box)
            grow = rng.randrange(500, 1500)
            write_access_log(log, total, grow)
            total += grow
        final = run_trackd("run", "--once", "-c", str(cfg), timeout=60)
        assert final.returncode == 0, final.stderr
        requests = rx.requests
    seen: dict[int, set[tuple[str, bytes]]] = {}
    for req in requests:
        for m in req.json["batch"]:
            # Re-encoded as parsed (key order kept): identical stored bytes give identical output.
            seen.setdefault(page_seqs([m])[0], set()).add((m["messageId"], orjson.dumps(m)))
    assert sorted(seen) == list(range(total)), "a line never reached the endpoint"
    changed = [s for s, versions in seen.items() if len(versions) > 1]
    assert not changed, f"{len(changed)} lines re-sent under another id or bytes: {changed[:5]}"
    assert interrupted, "no kill landed while messages were waiting for delivery"
    assert outbox_bodies(tmp_path / "state") == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("damage", ["nul", "truncated"])
def test_damaged_state_database_exits_3_or_starts_fresh(tmp_path: Path, damage: str) -> None:
    """S15: a NUL-filled or truncated state.db fails quick_check at start: it is moved aside and
    `trackd run` exits 3 saying so; with `state.on_corrupt: reset` it starts fresh instead."""
    log = tmp_path / "access.log"
    write_access_log(log, 0, 2000)
    cfg = make_config(tmp_path, paths=[str(log)])
    assert run_trackd("run", "--once", "-c", str(cfg)).returncode == 0
    db = tmp_path / "state" / "state.db"
    size = db.stat().st_size
    if damage == "nul":
        db.write_bytes(b"\0" * size)
    else:
        db.write_bytes(db.read_bytes()[: size // 2])
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    proc = run_trackd("run", "-c", str(cfg))
    assert proc.returncode == 3, proc.stderr
    assert "is damaged" in proc.stderr and "moved to" in proc.stderr
    assert list((tmp_path / "state").glob("state.db.corrupt-*"))
    db.write_bytes(b"\0" * size)
    cfg = make_config(tmp_path, paths=[str(log)], extra={"state": {"on_corrupt": "reset"}})
    proc = run_trackd("run", "--once", "-c", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert '"event":"state_corrupt"' in proc.stderr


@pytest.mark.timeout(90)
def test_state_database_locked_pauses_loudly_then_resumes_exactly_once(tmp_path: Path) -> None:
    """S16/S44: another process holds the state database's write lock past the busy timeout:
    the daemon says what failed, counts it, answers 503 on /healthz and moves no position past
    what is committed; once the lock is gone it resumes by itself and every line is delivered
    exactly once (the file sink's uncommitted bytes were cut back off)."""
    log = tmp_path / "access.log"
    write_access_log(log, 0, 100)
    port = free_port()
    agent = Agent(tmp_path, [str(log)], {"metrics": {"listen": f"127.0.0.1:{port}"}}).start()
    try:
        agent.wait_seqs(100)
        holder = sqlite3.connect(tmp_path / "state" / "state.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            write_access_log(log, 100, 100)
            wait_until(
                lambda: '"event":"state_unavailable"' in agent.stderr(), 60, "the loud error"
            )
            assert "locked by another program?" in agent.stderr()
            health = http_get(port, "/healthz")
            assert health[0] == 503 and "state database unavailable" in health[1]
            assert metric(port, 'trackd_dropped_total{reason="state_unavailable"}') == 1.0
            committed = committed_length(tmp_path / "state", tmp_path / "out.jsonl")
            assert (tmp_path / "out.jsonl").stat().st_size == committed  # no silent progress
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert_exactly_once(agent.wait_seqs(200, timeout=90), range(200))
        assert '"event":"state_recovered"' in agent.stderr()
        assert http_get(port, "/healthz")[0] == 200
        assert agent.stop() == 0
        _assert_state_consistent(tmp_path)
    finally:
        agent.close()
