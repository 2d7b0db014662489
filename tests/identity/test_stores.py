"""The IdentityStore seam: the SQLite and in-memory stores keep the same contract, and an alias is
claimed once per previousId for good (SPEC §1.0: an alias is forever)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.identity.graph import IdentityStore
from agent.identity.memory_store import MemoryIdentityStore
from agent.identity.resolver import Resolver
from agent.identity.sqlite_store import SqliteIdentityStore
from agent.state.db import open_state, transaction

DAY = 86400.0


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[IdentityStore]:
    if request.param == "memory":
        yield MemoryIdentityStore()
        return
    conn = open_state(str(tmp_path))
    try:
        yield SqliteIdentityStore(conn)
    finally:
        conn.close()


def commit(r: Resolver, store: IdentityStore) -> None:
    """Save the resolver's changes as the pipeline does (in a transaction for SQLite)."""
    changes = r.take_changes()
    conn = getattr(store, "_conn", None)
    if isinstance(conn, sqlite3.Connection):
        with transaction(conn):
            store.save(changes)
    else:
        store.save(changes)


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
        assert store.collect(newest=500 * DAY, forget_after=400 * DAY, session_ttl=DAY) == (1, 0)
        again = Resolver(store)
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
        attribution, _ = Resolver(store).hit(20.0, "devEEEEE", None, None)
        assert (attribution.anonymous_id, attribution.user_id) == ("devEEEEE", "a@x.com")
