"""Opening the state database read-only for `status`, `identity` and `deadletters list`.

These commands run as whoever asks (an operator, often not the `trackd` user), on a state_dir
they may not be able to write. SQLite's `mode=ro` still needs the WAL index (`state.db-shm`): it
creates one if none exists, and fails ("attempt to write a readonly database", "unable to open
database file") when it cannot. When the WAL is empty or absent — trackd stopped cleanly, so the
database file holds the whole state — `immutable=1` reads the file without any index. When the
WAL holds changes, only a reader that can share the index sees them: that is a clear
StartupError saying what to do, never a guess from a stale file.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse

from agent.config import Config
from agent.errors import StartupError
from agent.identity.graph import IdentityStore
from agent.identity.sqlite_store import SqliteIdentityStore
from agent.state.db import connect


def open_readonly(db: str) -> sqlite3.Connection:
    """A read-only connection to `db` that has been used once (so it really opened), or
    StartupError saying why the state cannot be read and what would fix it."""
    try:
        conn = connect(db, readonly=True)
    except sqlite3.OperationalError as exc:
        first: sqlite3.Error = exc
    else:
        try:
            _probe(conn)
            return conn
        except sqlite3.OperationalError as exc:
            conn.close()
            first = exc
    if not os.access(db, os.R_OK):
        raise StartupError(
            f"cannot read state database {db}: permission denied for this user "
            f"(uid {os.getuid()}); run the command as the user that runs trackd "
            "(e.g. sudo -u trackd trackd status) or give this user read access"
        )
    if _wal_is_empty(db):
        return _immutable(db)
    raise StartupError(
        f"cannot read state database {db} read-only ({first}): it has changes in {db}-wal "
        f"that this user (uid {os.getuid()}) cannot read without writing {db}-shm; run the "
        "command as the user that runs trackd (e.g. sudo -u trackd trackd status), or make "
        f"{os.path.dirname(db) or '.'} and {db}-shm writable for this user"
    )


def _probe(conn: sqlite3.Connection) -> None:
    conn.execute("SELECT count(*) FROM sqlite_master").fetchone()


def _wal_is_empty(db: str) -> bool:
    try:
        return os.path.getsize(db + "-wal") == 0
    except FileNotFoundError:
        return True
    except OSError:
        return False


def _immutable(db: str) -> sqlite3.Connection:
    uri = f"file:{urllib.parse.quote(db)}?mode=ro&immutable=1"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=10)
    try:
        _probe(conn)
    except sqlite3.Error as exc:
        conn.close()
        raise StartupError(f"cannot read state database {db}: {exc}") from None
    return conn


def identity_store(config: Config, conn: sqlite3.Connection) -> IdentityStore:
    """The identity graph to read for `identity` and `status`: the state database's, or the
    Redis the fleet shares (`identity.store`, read-only: this process never writes it)."""
    if config.identity.store == "sqlite":
        return SqliteIdentityStore(conn)
    from agent.identity import redis_store

    url = config.identity.store
    ident = config.identity
    return redis_store.RedisIdentityStore(
        redis_store.connect_client(url),
        None,
        site=ident.site,
        forget_after=ident.forget_after,
        session_ttl=ident.session_ttl,
        where=redis_store.describe(url),
    )


def store_problem(store: IdentityStore) -> str | None:
    """Why a shared store could not be read (None when it could, or when it is local)."""
    breaker = getattr(store, "breaker", None)
    if breaker is None or not breaker.open:
        return None
    return (
        f"the identity store {getattr(store, '_where', 'redis')} is not reachable (is Redis "
        "running, and identity.store right?); the graph could not be read"
    )


def close_store(store: IdentityStore) -> None:
    close = getattr(store, "close", None)
    if close is not None:
        close()
