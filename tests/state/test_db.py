"""Opening the state database: lock, schema, damaged files (SPEC §5.1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import StartupError
from agent.state.db import StateLock, StatePaths, open_state
from agent.state.schema import SCHEMA_VERSION


def test_fresh_database_is_wal_and_migrated(tmp_path: Path) -> None:
    """A new database is created in WAL mode at the current schema version."""
    conn = open_state(str(tmp_path))
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


@pytest.mark.parametrize("damage", [b"\x00" * 8192, b"SQLite format 3\x00" + b"\xff" * 5000])
def test_damaged_database_is_moved_aside(tmp_path: Path, damage: bytes) -> None:
    """A database that is not SQLite or fails quick_check is moved aside; startup exits 3."""
    (tmp_path / "state.db").write_bytes(damage)
    with pytest.raises(StartupError, match="damaged"):
        open_state(str(tmp_path))
    assert not (tmp_path / "state.db").exists()
    assert list(tmp_path.glob("state.db.corrupt-*"))


def test_damaged_database_with_reset_starts_fresh(tmp_path: Path) -> None:
    """`state.on_corrupt: reset` moves the damaged file aside and starts a new database."""
    (tmp_path / "state.db").write_bytes(b"\x00" * 8192)
    conn = open_state(str(tmp_path), on_corrupt="reset")
    assert conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
    assert list(tmp_path.glob("state.db.corrupt-*"))


def test_zero_length_database_is_fine(tmp_path: Path) -> None:
    """An empty state.db file (a crash right after creation) is simply initialised."""
    (tmp_path / "state.db").write_bytes(b"")
    conn = open_state(str(tmp_path))
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_second_lock_holder_is_refused(tmp_path: Path) -> None:
    """Only one process may hold the state lock; the error names the holder's pid."""
    first = StateLock(StatePaths(str(tmp_path)))
    first.acquire()
    try:
        with pytest.raises(StartupError, match=r"in use by another trackd \(pid \d+\)"):
            StateLock(StatePaths(str(tmp_path))).acquire()
        assert StateLock(StatePaths(str(tmp_path))).held_by_other()
    finally:
        first.release()


def test_state_files_are_private(tmp_path: Path) -> None:
    """The database and its WAL are created 0600 whatever the umask (the identity graph is
    personal data)."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        conn = open_state(str(tmp_path))
        conn.execute("CREATE TABLE t (x)")  # a write, so the -wal file exists
    finally:
        os.umask(old)
    for name in ("state.db", "state.db-wal"):
        mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
        assert mode == 0o600, f"{name} is {oct(mode)}"
    conn.close()


def test_outbox_ids_are_never_reused(tmp_path: Path) -> None:
    """Deleting the newest outbox rows does not hand their ids out again (the sender reads past
    a cursor: a reused id would hide a new message below it)."""
    from agent.state import outbox
    from agent.state.db import transaction

    conn = open_state(str(tmp_path))
    with transaction(conn):
        outbox.enqueue(conn, [b'{"n":1}', b'{"n":2}'], None, 0.0)
    top = outbox.fetch(conn, 0, 10)[-1].id
    with transaction(conn):
        outbox.delete(conn, [top])
        outbox.enqueue(conn, [b'{"n":3}'], None, 0.0)
    assert outbox.fetch(conn, top, 10)[0].body == b'{"n":3}'
    conn.close()
