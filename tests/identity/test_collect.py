"""identity.forget_after: devices unseen that long are collected (SPEC §5.1)."""

from __future__ import annotations

from pathlib import Path

from agent.identity.resolver import Resolver
from agent.identity.sqlite_store import SqliteIdentityStore
from agent.state.db import open_state, transaction

DAY = 86400.0


def test_devices_unseen_for_forget_after_are_collected(tmp_path: Path) -> None:
    """A device last seen over forget_after before the newest event is deleted; a device seen
    every day is kept, because its last-seen time is written again once a day."""
    conn = open_state(str(tmp_path))
    store = SqliteIdentityStore(conn)
    r = Resolver(store)
    r.hit(0.0, "oldDevice1", "a@x.com", None)
    r.hit(0.0, "dailyDevic", "b@x.com", None)
    for day in range(1, 11):
        r.hit(day * DAY + 1, "dailyDevic", None, None)
        changes = r.take_changes()
        with transaction(conn):
            store.save(changes)
    deleted = store.collect(newest=10 * DAY + 1, forget_after=5 * DAY, session_ttl=DAY)
    assert deleted == (1, 0)
    assert store.load_device("oldDevice1") is None
    assert store.load_device("dailyDevic") is not None
