"""The IdentityStore contract, one suite run against every store: in memory, SQLite, and Redis (a
real `redis-server`). An alias is claimed once per previousId for good (SPEC §1.0: an alias is
forever), what one resolver saved another reads back equal, and `forget` erases one person and
nobody else (SPEC §8). Redis-only behaviours (several hosts, outages, TTLs) follow the suite."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.identity.forget import find_person
from agent.identity.graph import IdentityStore
from agent.identity.memory_store import MemoryIdentityStore
from agent.identity.normalize import Normalizer
from agent.identity.redis_store import RedisIdentityStore, connect_client
from agent.identity.resolver import Resolver
from agent.identity.sqlite_store import SqliteIdentityStore
from agent.state.db import open_state, transaction
from tests.redis_server import RedisServer, serve

DAY = 86400.0
NORM = Normalizer()


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from serve(tmp_path_factory)


def redis_store(
    server: RedisServer, conn: sqlite3.Connection | None, host: str = "host-a"
) -> RedisIdentityStore:
    store = RedisIdentityStore(connect_client(server.url), conn, site="test", host_id=host)
    store.cache_ttl = 0.0  # tests look at the shared graph at once
    return store


@pytest.fixture(params=["memory", "sqlite", "sqlite-reader", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[IdentityStore]:
    if request.param == "memory":
        yield MemoryIdentityStore()
        return
    conn = open_state(str(tmp_path))
    try:
        if request.param == "sqlite":
            yield SqliteIdentityStore(conn, writer=True)  # the pipeline's (key filters)
        elif request.param == "sqlite-reader":
            yield SqliteIdentityStore(conn)
        else:
            server: RedisServer = request.getfixturevalue("redis_server")
            found = redis_store(server, conn)
            yield found
            found.close()
    finally:
        conn.close()


def commit(r: Resolver, store: IdentityStore) -> None:
    """Save the resolver's changes as the pipeline does: in the chunk's transaction, then (for a
    shared store) sent between chunks."""
    changes = r.take_changes()
    conn = getattr(store, "_conn", None)
    if isinstance(conn, sqlite3.Connection):
        with transaction(conn):
            store.save(changes)
    else:
        store.save(changes)
    store.sync()


def forget(store: IdentityStore, ident: str) -> dict[str, int]:
    person = find_person(store, ident, NORM)
    conn = getattr(store, "_conn", None)
    if isinstance(conn, sqlite3.Connection):
        with transaction(conn):
            return store.forget(person)
    return store.forget(person)


def expire_unseen(store: IdentityStore, device: str) -> None:
    """What identity.forget_after does to a device unseen that long: SQLite and memory collect
    it by event time; Redis lets its key expire (done here at once)."""
    if isinstance(store, RedisIdentityStore):
        assert store.collect(newest=500 * DAY, forget_after=400 * DAY, session_ttl=DAY) == (0, 0)
        store._r.delete(store._dkey(device))
    else:
        assert store.collect(newest=500 * DAY, forget_after=400 * DAY, session_ttl=DAY) == (1, 0)


class TestClaims:
    def test_a_previous_id_is_claimed_once(self, store: IdentityStore) -> None:
        """The first claim of a previousId wins; a second one, for any user, is refused."""
        assert store.claim_alias("devAAAAA", "a@x.com", 1.0) is True
        assert store.claim_alias("devAAAAA", "a@x.com", 2.0) is False
        assert store.claim_alias("devAAAAA", "b@x.com", 3.0) is False

    def test_a_collected_device_is_never_aliased_to_someone_else(
        self, store: IdentityStore
    ) -> None:
        """A device forgotten by `identity.forget_after` and seen again starts unbound, but its
        epoch was aliased once: a login by another person sends no second alias (it would merge
        the two people in Kissmetrics for good)."""
        r = Resolver(store)
        r.hit(0.0, "devBBBBB", None, None)
        _epoch, events = r.login(10.0, "a@x.com", "devBBBBB", None, None)
        assert [(e.previous, e.user) for e in events] == [("devBBBBB", "a@x.com")]
        commit(r, store)
        expire_unseen(store, "devBBBBB")
        again = Resolver(store)
        again.prefetch({"devBBBBB"}, set(), set())
        _, events = again.login(500 * DAY, "b@x.com", "devBBBBB", None, None)
        assert events == []
        assert again.counts["alias_claims_lost"] == 1

    def test_aliases_touching_finds_both_sides(self, store: IdentityStore) -> None:
        """Saved aliases are found by their previousId and by their userId, oldest first."""
        r = Resolver(store)
        r.login(5.0, "a@x.com", "devCCCCC", None, None)
        r.login(7.0, "a@x.com", "devDDDDD", None, None)
        commit(r, store)
        assert store.aliases_touching(["a@x.com"]) == [
            ("devCCCCC", "a@x.com", 5.0),
            ("devDDDDD", "a@x.com", 7.0),
        ]
        assert store.aliases_touching(["devDDDDD"]) == [("devDDDDD", "a@x.com", 7.0)]


class TestSameContract:
    def test_saved_graph_reads_back_equal(self, store: IdentityStore) -> None:
        """What a resolver saved is what a new resolver over the same store sees: the device's
        epochs and binding, the named id's devices, and the counts."""
        r = Resolver(store)
        r.hit(0.0, "devEEEEE", None, None)
        r.login(10.0, "a@x.com", "devEEEEE", None, None)
        commit(r, store)
        dev = store.load_device("devEEEEE")
        assert dev is not None
        assert [(e.epoch_id("devEEEEE"), e.named) for e in dev.epochs] == [("devEEEEE", "a@x.com")]
        named = store.load_named("a@x.com")
        assert named is not None and named.devices == ["devEEEEE"]
        assert store.counts() == {"device": 1, "named": 1, "session": 0, "aliases": 1}
        fresh = Resolver(store)
        fresh.prefetch({"devEEEEE"}, set(), set())
        attribution, _ = fresh.hit(20.0, "devEEEEE", None, None)
        assert (attribution.anonymous_id, attribution.user_id) == ("devEEEEE", "a@x.com")

    def test_epochs_and_times_read_back_exactly(self, store: IdentityStore) -> None:
        """A conflict's new epoch, its `contested` flag and sub-millisecond times survive the
        store unchanged (R6 compares event times against them)."""
        r = Resolver(store)
        r.login(10.000123, "a@x.com", "devFFFFF", None, None)
        r.login(20.987654, "b@x.com", "devFFFFF", None, None)
        commit(r, store)
        dev = store.load_device("devFFFFF")
        assert dev is not None
        assert [(e.index, e.started, e.named, e.bound_at, e.contested) for e in dev.epochs] == [
            (0, 10.000123, "a@x.com", 10.000123, False),
            (1, 20.987654, "b@x.com", 20.987654, True),
        ]

    def test_a_session_mapping_reads_back(self, store: IdentityStore) -> None:
        """A login's session mapping (person, interval, device) is what a new resolver joins
        later hits with."""
        r = Resolver(store, session_ttl=3600.0)
        r.login(100.0, "s@x.com", None, "sess-12345")
        commit(r, store)
        (sess,) = store.load_sessions(["sess-12345"])
        assert (sess.named, sess.since, sess.until) == ("s@x.com", 100.0, 3700.0)
        later = Resolver(store, session_ttl=3600.0)
        later.prefetch(set(), set(), {"sess-12345"})
        assert later.session_person(200.0, "sess-12345") == "s@x.com"

    def test_a_logout_shortens_the_mapping(self, store: IdentityStore) -> None:
        """R3 saved: the session's mapping ends at the logout, whatever was stored before."""
        r = Resolver(store, session_ttl=3600.0)
        r.login(100.0, "s@x.com", "devGGGGG", "sess-67890")
        commit(r, store)
        r.logout(500.0, "sess-67890", None)
        commit(r, store)
        (sess,) = store.load_sessions(["sess-67890"])
        assert (sess.named, sess.until) == ("s@x.com", 500.0)

    def test_identity_changes_read_back(self, store: IdentityStore) -> None:
        """R7 changes are loaded whole by a new resolver: hits naming the old id resolve to the
        new one."""
        r = Resolver(store)
        r.identity_change(50.0, "old@x.com", "new@x.com")
        commit(r, store)
        assert store.load_changes() == {"old@x.com": ("new@x.com", 50.0)}
        assert Resolver(store).final("old@x.com", 60.0) == "new@x.com"

    def test_load_batch_returns_only_known_ids(self, store: IdentityStore) -> None:
        """One batch load answers for every kind at once and leaves unknown ids out."""
        r = Resolver(store)
        r.login(1.0, "k@x.com", "devHHHHH", "sess-abcde")
        commit(r, store)
        batch = store.load_batch(["devHHHHH", "devNOPE1"], ["k@x.com", "no@x.com"], ["sess-abcde"])
        assert batch is not None
        assert [d.device for d in batch.devices] == ["devHHHHH"]
        assert [n.named for n in batch.named] == ["k@x.com"]
        assert [s.session for s in batch.sessions] == ["sess-abcde"]


class TestForget:
    def _two_people(self, store: IdentityStore) -> None:
        r = Resolver(store)
        r.login(1.0, "gone@x.com", "devGONE1", "sess-gone1")
        r.login(2.0, "gone@x.com", "devGONE2", None)
        r.login(3.0, "stay@x.com", "devSTAY1", "sess-stay1")
        commit(r, store)

    def test_forget_removes_the_person_and_only_them(self, store: IdentityStore) -> None:
        """Every device, named id, session and alias of the person goes; the other person's
        stay untouched."""
        self._two_people(store)
        removed = forget(store, "gone@x.com")
        assert removed == {"devices": 2, "named": 1, "sessions": 1, "aliases": 2}
        assert store.load_devices(["devGONE1", "devGONE2"]) == []
        assert store.load_named("gone@x.com") is None
        assert store.load_sessions(["sess-gone1"]) == []
        assert store.aliases_touching(["gone@x.com", "devGONE1", "devGONE2"]) == []
        assert store.load_device("devSTAY1") is not None
        assert store.aliases_touching(["stay@x.com"]) == [("devSTAY1", "stay@x.com", 3.0)]
        assert [s.session for s in store.load_sessions(["sess-stay1"])] == ["sess-stay1"]

    def test_forget_by_device_finds_the_person(self, store: IdentityStore) -> None:
        """Given one of the person's devices, forget erases the person (and their other
        device)."""
        self._two_people(store)
        assert forget(store, "devGONE2")["devices"] == 2
        assert store.load_named("gone@x.com") is None

    def test_a_forgotten_person_starts_fresh(self, store: IdentityStore) -> None:
        """After forget, the device is new again: the next login binds it and sends a new
        alias."""
        self._two_people(store)
        forget(store, "gone@x.com")
        r = Resolver(store)
        r.prefetch({"devGONE1"}, {"gone@x.com"}, set())
        attribution, _ = r.hit(10.0, "devGONE1", None, None)
        assert (attribution.anonymous_id, attribution.user_id) == ("devGONE1", None)
        _, events = r.login(11.0, "gone@x.com", "devGONE1", None, None)
        assert [(e.previous, e.user) for e in events] == [("devGONE1", "gone@x.com")]


# -- Redis only: hosts sharing one store -----------------------------------------------------


@pytest.fixture
def conns(tmp_path: Path) -> Iterator[list[sqlite3.Connection]]:
    dirs = [tmp_path / f"state-{i}" for i in range(2)]
    for d in dirs:
        d.mkdir()
    opened = [open_state(str(d)) for d in dirs]
    try:
        yield opened
    finally:
        for c in opened:
            c.close()


class TestRedisFleet:
    def test_a_replayed_claim_is_this_hosts_own(
        self, redis_server: RedisServer, conns: list[sqlite3.Connection]
    ) -> None:
        """A chunk rolled back by a crash is replayed by the same host (a new process): its
        claim is found to be its own and granted again; another host's same claim is lost."""
        first = redis_store(redis_server, conns[0], host="host-a")
        assert first.claim_alias("devREPLAY", "r@x.com", 5.0) is True
        replay = redis_store(redis_server, conns[0], host="host-a")
        assert replay.claim_alias("devREPLAY", "r@x.com", 5.0) is True
        other = redis_store(redis_server, conns[1], host="host-b")
        assert other.claim_alias("devREPLAY", "r@x.com", 5.0) is False

    def test_racing_hosts_get_exactly_one_claim(
        self, redis_server: RedisServer, conns: list[sqlite3.Connection]
    ) -> None:
        """Eight hosts claiming the same epochs at once: each epoch is granted exactly once."""
        stores = [redis_store(redis_server, None, host=f"h{i}") for i in range(8)]
        wins: list[str] = []
        lock = threading.Lock()
        start = threading.Barrier(len(stores))

        def race(s: RedisIdentityStore) -> None:
            start.wait()
            for n in range(50):
                if s.claim_alias(f"devRACE{n:03d}", "x@x.com", 1.0):
                    with lock:
                        wins.append(f"devRACE{n:03d}")

        threads = [threading.Thread(target=race, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert sorted(wins) == [f"devRACE{n:03d}" for n in range(50)]

    def test_a_binding_made_on_one_host_names_hits_on_another(
        self, redis_server: RedisServer, conns: list[sqlite3.Connection]
    ) -> None:
        """Host B saw the device anonymous; host A binds it; B's next batch (the cache TTL
        over) attributes the device's hits to the person."""
        a, b = (redis_store(redis_server, c, host=h) for c, h in zip(conns, "ab", strict=True))
        rb = Resolver(b)
        rb.prefetch({"devFLEET1"}, set(), set())
        assert rb.hit(1.0, "devFLEET1", None, None)[0].user_id is None
        commit(rb, b)
        ra = Resolver(a)
        ra.prefetch({"devFLEET1"}, set(), set())
        _, events = ra.login(2.0, "f@x.com", "devFLEET1", None, None)
        assert len(events) == 1
        commit(ra, a)
        rb.end_batch()
        rb.prefetch({"devFLEET1"}, set(), set())
        assert rb.hit(3.0, "devFLEET1", None, None)[0].user_id == "f@x.com"

    def test_an_anonymous_write_never_unbinds(
        self, redis_server: RedisServer, conns: list[sqlite3.Connection]
    ) -> None:
        """Host B saves its stale, unbound view of a device after host A bound it: the binding
        stays (an epoch is bound once)."""
        a, b = (redis_store(redis_server, c, host=h) for c, h in zip(conns, "ab", strict=True))
        rb = Resolver(b)
        rb.hit(1.0, "devSTALE1", None, None)
        ra = Resolver(a)
        ra.login(2.0, "s@x.com", "devSTALE1", None, None)
        commit(ra, a)
        rb.hit(2.0 + 2 * DAY, "devSTALE1", None, None)  # a day later: last_seen is written
        commit(rb, b)
        dev = a.load_device("devSTALE1")
        assert dev is not None and dev.epochs[0].named == "s@x.com"

    def test_keys_carry_the_forget_after_ttl(
        self, redis_server: RedisServer, conns: list[sqlite3.Connection]
    ) -> None:
        """Devices and named ids expire identity.forget_after after their last write; alias
        claims never do (an epoch aliased once is never aliased to someone else)."""
        s = RedisIdentityStore(
            connect_client(redis_server.url), conns[0], site="test", forget_after=7 * DAY
        )
        r = Resolver(s)
        r.login(1.0, "t@x.com", "devTTL001", None, None)
        commit(r, s)
        client = redis_server.client()
        assert 7 * DAY * 1000 - 60_000 < client.pttl(s._dkey("devTTL001")) <= 7 * DAY * 1000
        assert 7 * DAY * 1000 - 60_000 < client.pttl(s._nkey("t@x.com")) <= 7 * DAY * 1000
        assert client.pttl(s._akey("devTTL001")) == -1
        client.close()


class TestRedisOutage:
    def test_an_unreachable_store_degrades_and_catches_up(
        self, redis_server: RedisServer, conns: list[sqlite3.Connection]
    ) -> None:
        """Redis down: loads answer "unavailable" (counted as degraded), no alias is granted,
        the changes wait in the state database; Redis back: they are sent, and a claim works."""
        s = redis_store(redis_server, conns[0])
        redis_server.stop()
        r = Resolver(s)
        r.prefetch({"devDOWN01"}, set(), set())
        _, events = r.login(1.0, "d@x.com", "devDOWN01", None, None)
        assert events == []
        assert s.degraded >= 1 and s.unrecorded_claims == 1
        commit(r, s)
        assert conns[0].execute("SELECT COUNT(*) FROM id_redis_journal").fetchone()[0] == 1
        redis_server.start()
        s.breaker.ok()  # the backoff is over (a test does not wait it out)
        assert s.sync() == []
        assert conns[0].execute("SELECT COUNT(*) FROM id_redis_journal").fetchone()[0] == 0
        dev = s.load_device("devDOWN01")
        assert dev is not None and dev.epochs[0].named == "d@x.com"
        assert s.claim_alias("devDOWN02", "d@x.com", 2.0) is True

    def test_the_breaker_answers_at_once_while_open(
        self, redis_server: RedisServer, conns: list[sqlite3.Connection]
    ) -> None:
        """After one failure the store does not touch the network until the backoff passed:
        a thousand lookups cost no socket timeout each."""
        s = redis_store(redis_server, conns[0])
        redis_server.stop()
        assert s.load_batch(["devX0001"], [], []) is None
        assert s.breaker.open
        for _ in range(1000):
            assert s.load_batch(["devX0001"], [], []) is None
        assert s.degraded == 1001
