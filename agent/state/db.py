"""Opening the state database: directory, exclusive lock, integrity check, migrations.

The lock is an `flock` on `state_dir/lock`, held for the life of the process that runs the
pipeline (`run`, or a standalone `backfill`); it is released by the kernel even on kill -9.
Connections are used from one thread each (the pipeline's, the sender's): sqlite3 objects are not
shared between threads.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass

import structlog

from agent.errors import StartupError
from agent.state.schema import MIGRATIONS, SCHEMA_VERSION

log = structlog.get_logger("trackd.state")

DB_NAME = "state.db"
LOCK_NAME = "lock"


@dataclass(frozen=True, slots=True)
class StatePaths:
    state_dir: str

    @property
    def db(self) -> str:
        return os.path.join(self.state_dir, DB_NAME)

    @property
    def lock(self) -> str:
        return os.path.join(self.state_dir, LOCK_NAME)


class StateLock:
    """The exclusive lock on `state_dir`. `acquire()` raises StartupError when another holds it."""

    def __init__(self, paths: StatePaths) -> None:
        self._paths = paths
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self._paths.lock, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StartupError(
                f"cannot open lock file {self._paths.lock}: {exc.strerror} "
                "(check that state_dir exists and is writable by this user)"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise StartupError(
                f"state directory {self._paths.state_dir} is in use by another trackd{who}; "
                "stop it first, or point this one at another state_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def try_acquire(self) -> bool:
        """Take the lock if it is free (True); False when another process holds it."""
        try:
            self.acquire()
        except StartupError:
            if self.held_by_other():
                return False
            raise
        return True

    def held_by_other(self) -> bool:
        """True when another process holds the lock (a probe: takes and drops it if free)."""
        try:
            fd = os.open(self._paths.lock, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        data = os.pread(fd, 32, 0)
        return int(data.strip() or b"0") or None
    except (OSError, ValueError):
        return None


def ensure_state_dir(state_dir: str) -> None:
    """Create `state_dir` (0700) if missing; fail clearly when it cannot be used."""
    try:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"cannot create state_dir {state_dir}: {exc.strerror}") from None
    if not os.access(state_dir, os.W_OK | os.X_OK):
        raise StartupError(
            f"state_dir {state_dir} is not writable by this user (uid {os.getuid()}); "
            "fix its owner or permissions"
        )


def connect(path: str, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection with trackd's pragmas; autocommit mode (transactions are explicit)."""
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
    if not readonly and not os.path.exists(path):
        # Created 0600 whatever the umask: the state holds the identity graph. SQLite gives the
        # -wal and -shm files the database file's mode.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=True, timeout=10)
    conn.execute("PRAGMA busy_timeout = 10000")
    if not readonly:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StartupError(f"{path}: cannot switch the state database to WAL mode ({mode})")
    # NORMAL in WAL: a commit survives a process crash; only an OS crash may lose the last ones,
    # and never leaves the database inconsistent (the transaction, not each row, is the unit).
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("PRAGMA cache_size = -32768")
    return conn


@dataclass(frozen=True, slots=True)
class OpenedState:
    """An opened state database and what opening it found."""

    conn: sqlite3.Connection
    #: The database was damaged and `on_corrupt: reset` started it afresh: SPEC §5.1 starts
    #: files at `end` then, whatever `start_at` says.
    reset: bool
    #: There was no database before (missing or zero-length, or reset): the state knows nothing.
    fresh: bool


def open_state(state_dir: str, *, on_corrupt: str = "fail") -> sqlite3.Connection:
    """Open (creating if needed) and migrate the database; check its integrity first.

    A database that fails `PRAGMA quick_check` is moved aside to `state.db.corrupt-<timestamp>`;
    then trackd exits 3 (`on_corrupt: fail`) or starts fresh (`on_corrupt: reset`).
    `open_state_checked` also says whether it was reset.
    """
    return open_state_checked(state_dir, on_corrupt=on_corrupt).conn


def open_state_checked(state_dir: str, *, on_corrupt: str = "fail") -> OpenedState:
    """`open_state`, telling the caller whether the database was reset or did not exist."""
    paths = StatePaths(state_dir)
    fresh = not os.path.exists(paths.db) or os.path.getsize(paths.db) == 0
    problem = _integrity_problem(paths.db)
    if problem is not None:
        aside = _move_aside(paths.db)
        log.error("state_corrupt", path=paths.db, problem=problem, moved_to=aside)
        if on_corrupt != "reset":
            raise StartupError(
                f"state database {paths.db} is damaged ({problem}); it was moved to {aside}. "
                "Start again to begin with fresh state (files are then read from start_at, or "
                "from their end when the file sink already holds messages), or set "
                "state.on_corrupt: reset to start fresh automatically with files at their end"
            )
    try:
        conn = connect(paths.db)
        migrate(conn)
    except sqlite3.DatabaseError as exc:
        raise StartupError(f"cannot open state database {paths.db}: {exc}") from None
    reset = problem is not None
    return OpenedState(conn, reset=reset, fresh=fresh or reset)


def _integrity_problem(db: str) -> str | None:
    if not os.path.exists(db) or os.path.getsize(db) == 0:
        return None
    try:
        conn = sqlite3.connect(f"file:{db}", uri=True, isolation_level=None, timeout=10)
        try:
            rows = conn.execute("PRAGMA quick_check").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return str(exc)
    if rows != [("ok",)]:
        return "; ".join(str(r[0]) for r in rows[:3])
    return None


def _move_aside(db: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = f"{db}.corrupt-{stamp}"
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(db + suffix):
            os.replace(db + suffix, aside + suffix)
    return aside


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the schema forward to SCHEMA_VERSION, one migration per transaction."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StartupError(
            f"the state database has schema version {version}, newer than this trackd knows "
            f"({SCHEMA_VERSION}); run the newer trackd, or move the state database aside"
        )
    for number in range(version, SCHEMA_VERSION):
        with transaction(conn):
            for statement in _statements(MIGRATIONS[number]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number + 1}")


def _statements(script: str) -> list[str]:
    """Split a script into statements (executescript would commit our open transaction)."""
    out: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            out.append(current.strip())
            current = ""
    if current.strip():
        out.append(current.strip())
    return out


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """The one way trackd writes: `BEGIN IMMEDIATE` (the write lock up front, so a busy database
    waits `busy_timeout` here rather than failing half-way), `COMMIT` on success, `ROLLBACK` on
    any exception, which propagates. A failed rollback (the connection is already broken) never
    hides the original error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        # A COMMIT that failed (disk full) can leave the transaction open: roll it back too.
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
