"""The resolver on the SQLite store: R1, the km_ni login (R2), conflicts, R5, R6."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent.identity.resolver import Resolver
from agent.identity.sqlite_store import SqliteIdentityStore
from agent.state.db import open_state, transaction


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    return open_state(str(tmp_path))


def resolver(conn: sqlite3.Connection, **kw: int) -> Resolver:
    return Resolver(SqliteIdentityStore(conn), **kw)


def commit(r: Resolver, conn: sqlite3.Connection) -> None:
    changes = r.take_changes()
    with transaction(conn):
        SqliteIdentityStore(conn).save(changes)


class TestCookieIdentities:
    def test_anonymous_hit_stays_anonymous(self, conn: sqlite3.Connection) -> None:
        """R1: a device never bound is attributed to its own epoch, without a userId."""
        attribution, events = resolver(conn).hit(100.0, "devAAAAA", None, None)
        assert attribution == ("devAAAAA", None, "device", False)
        assert events == []

    def test_km_ni_binds_silently_and_later_hits_are_named(self, conn: sqlite3.Connection) -> None:
        """R2: a hit with km_ai and km_ni binds the device without an alias; the next anonymous
        hit of that device resolves to the person."""
        r = resolver(conn)
        first, events = r.hit(100.0, "devAAAAA", "alice@x.com", None)
        assert first.user_id == "alice@x.com" and events == []
        later, _ = r.hit(200.0, "devAAAAA", None, None)
        assert later == ("devAAAAA", "alice@x.com", "named", False)

    def test_second_person_on_the_device_gets_a_new_epoch(self, conn: sqlite3.Connection) -> None:
        """R2 conflict: never alias the bound epoch with a second person; a new epoch D~1 is
        aliased to the second person and the conflict is counted."""
        r = resolver(conn)
        r.hit(100.0, "devAAAAA", "alice@x.com", None)
        attribution, events = r.hit(300.0, "devAAAAA", "bob@x.com", None)
        assert attribution == ("devAAAAA~1", "bob@x.com", "named", True)
        assert [(e.previous, e.user) for e in events] == [("devAAAAA~1", "bob@x.com")]
        assert r.counts["conflicts"] == 1
        # Alice's earlier epoch is untouched: a late hit of hers still resolves to her (R6).
        late, _ = r.hit(150.0, "devAAAAA", None, None)
        assert late.user_id == "alice@x.com"

    def test_hit_before_the_binding_time_stays_anonymous(self, conn: sqlite3.Connection) -> None:
        """R6: a late hit older than the login resolves through the history: anonymous."""
        r = resolver(conn)
        r.hit(500.0, "devAAAAA", "alice@x.com", None)
        early, _ = r.hit(400.0, "devAAAAA", None, None)
        assert early.user_id is None and early.resolution == "device"

    def test_explicit_login_aliases_the_epoch_once(self, conn: sqlite3.Connection) -> None:
        """An identify rule's login emits alias(D, N) once; a repeat login emits nothing."""
        r = resolver(conn)
        r.hit(100.0, "devAAAAA", None, None)
        epoch, events = r.login(110.0, "alice@x.com", "devAAAAA", None)
        assert epoch == "devAAAAA"
        assert [(e.previous, e.user, e.slot) for e in events] == [
            ("devAAAAA", "alice@x.com", "alias:devAAAAA")
        ]
        assert r.login(120.0, "alice@x.com", "devAAAAA", None)[1] == []

    def test_tilde_in_device_values_is_escaped(self, conn: sqlite3.Connection) -> None:
        """A `~` inside a device value cannot be mistaken for an epoch suffix."""
        attribution, _ = resolver(conn).hit(1.0, "dev~1abc", None, None)
        assert attribution.anonymous_id == "dev%7E1abc"


class TestPersistence:
    def test_graph_survives_a_new_resolver(self, conn: sqlite3.Connection) -> None:
        """Committed bindings and epochs are reloaded by a fresh resolver (a restart)."""
        r = resolver(conn)
        r.hit(100.0, "devAAAAA", "alice@x.com", None)
        r.hit(300.0, "devAAAAA", "bob@x.com", None)
        commit(r, conn)
        again = resolver(conn)
        attribution, _ = again.hit(400.0, "devAAAAA", None, None)
        assert attribution == ("devAAAAA~1", "bob@x.com", "named", True)

    def test_cache_eviction_does_not_change_answers(self, conn: sqlite3.Connection) -> None:
        """With a cache of one device, resolutions match those of an unbounded cache."""
        small = resolver(conn, cache_size=1)
        for i in range(5):
            small.hit(100.0 + i, f"device{i:03d}", f"user{i}@x.com", None)
        commit(small, conn)
        for i in range(5):
            attribution, _ = small.hit(200.0 + i, f"device{i:03d}", None, None)
            assert attribution.user_id == f"user{i}@x.com"


class TestCaps:
    def test_a_named_id_accepts_no_more_than_max_devices(self, conn: sqlite3.Connection) -> None:
        """R4: past max_devices_per_named, new devices are not bound (counted), and their hits
        never pair the device with that person."""
        r = resolver(conn, max_devices_per_named=2)
        for i in range(3):
            r.login(10.0 + i, "shared@x.com", f"device{i:04d}", None)
        assert r.counts["identity_cap"] == 1
        attribution, _ = r.hit(20.0, "device0002", None, None)
        assert attribution.user_id is None
        with_cookie, _ = r.hit(21.0, "device0002", "shared@x.com", None)
        assert with_cookie.user_id == "shared@x.com" and with_cookie.anonymous_id is None
