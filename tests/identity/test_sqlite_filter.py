"""The SQLite store's key filters (`KeyFilter`): a lookup of a key the table cannot hold is
skipped, and no key the table holds is ever missed — rows found at start, rows the store wrote
since, tables too big to scan."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.identity import sqlite_store
from agent.identity.graph import Changes, Device, Epoch, Named
from agent.identity.sqlite_store import KeyFilter, SqliteIdentityStore
from agent.state.db import open_state, transaction


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    c = open_state(str(tmp_path))
    try:
        yield c
    finally:
        c.close()


def save(store: SqliteIdentityStore, conn: sqlite3.Connection, devices: list[str]) -> None:
    with transaction(conn):
        store.save(
            Changes([Device(d, [Epoch(0, 100.0)], last_seen=100.0) for d in devices], [], [], [])
        )


def device_selects(conn: sqlite3.Connection) -> list[str]:
    seen: list[str] = []
    conn.set_trace_callback(lambda sql: seen.append(sql) if "FROM id_devices" in sql else None)
    return seen


@pytest.mark.timeout(30)
def test_rows_written_before_the_store_opened_are_found(conn: sqlite3.Connection) -> None:
    """A writer store opened over a table that already holds rows (an earlier run's) builds its
    filter from them: each is found; a key never written is answered without a query."""
    save(SqliteIdentityStore(conn), conn, [f"devOLD{i:05d}" for i in range(500)])
    store = SqliteIdentityStore(conn, writer=True)
    assert [d.device for d in store.load_devices(["devOLD00007", "devOLD00499"])] == [
        "devOLD00007",
        "devOLD00499",
    ]
    queries = device_selects(conn)
    assert store.load_devices(["devNEW00001", "devNEW00002"]) == []
    assert queries == []


@pytest.mark.timeout(30)
def test_rows_the_store_wrote_itself_are_found(conn: sqlite3.Connection) -> None:
    """Keys a writer store saved (with no lookup before) are found by later lookups."""
    store = SqliteIdentityStore(conn, writer=True)
    save(store, conn, ["devMINE0001", "devMINE0002"])
    with transaction(conn):
        store.save(Changes([], [Named("me@x.com", 5.0, ["devMINE0001"])], [], []))
    assert [d.device for d in store.load_devices(["devMINE0002", "devNOPE0001"])] == ["devMINE0002"]
    assert [n.named for n in store.load_named_many(["me@x.com", "you@x.com"])] == ["me@x.com"]


@pytest.mark.timeout(30)
def test_a_table_too_big_to_scan_is_looked_up_key_by_key(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A table with more rows than the filter is built from has no filter: every key is looked
    up, and every row is found."""
    monkeypatch.setattr(sqlite_store, "_FILTER_SCAN_MAX", 10)
    save(SqliteIdentityStore(conn), conn, [f"devBIG{i:05d}" for i in range(11)])
    store = SqliteIdentityStore(conn, writer=True)
    queries = device_selects(conn)
    assert [d.device for d in store.load_devices(["devBIG00010", "devNEW00001"])] == ["devBIG00010"]
    lookups = [q for q in queries if "WHERE device IN" in q]
    assert len(lookups) == 1 and "devNEW00001" in lookups[0]


@pytest.mark.timeout(30)
def test_a_reader_store_keeps_no_filter(conn: sqlite3.Connection) -> None:
    """A reader (another process may be writing) looks every key up."""
    store = SqliteIdentityStore(conn)
    queries = device_selects(conn)
    assert store.load_devices(["devNEW00001"]) == []
    assert len(queries) == 1


@pytest.mark.timeout(60)
@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=300), st.text(max_size=40))
def test_the_filter_never_misses_a_key_it_was_given(keys: list[str], other: str) -> None:
    """Every key added passes `maybe`, in the order asked; what it lets through is a subset."""
    kf = KeyFilter()
    kf.add(keys)
    assert kf.maybe(keys) == keys
    assert set(kf.maybe([other, *keys])) <= {other, *keys}


@pytest.mark.timeout(30)
def test_a_saturated_filter_turns_itself_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past an eighth of its bits in keys the filter passes everything (a lookup each)."""
    monkeypatch.setattr(sqlite_store, "_FILTER_BITS", 1 << 10)
    kf = KeyFilter()
    kf.add(f"k{i}" for i in range(100))
    assert kf.active
    kf.add(f"j{i}" for i in range(100))
    assert not kf.active
    assert kf.maybe(["never-added-1", "never-added-2"]) == ["never-added-1", "never-added-2"]
