"""The state database schema, as forward migrations; `PRAGMA user_version` is the schema version.

A migration is appended, never edited: a database written by an older trackd is brought forward
one step at a time, each step in its own transaction.
"""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: positions, outbox, file sink length, dead letters, identity graph, source watermarks.
    """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE files (
        id          INTEGER PRIMARY KEY,
        source      TEXT    NOT NULL,
        path        TEXT    NOT NULL,            -- where the file was first seen
        cur_path    TEXT,                        -- where it is now (NULL once gone)
        dev         INTEGER NOT NULL,
        ino         INTEGER NOT NULL,
        fp_len      INTEGER NOT NULL,            -- identity fingerprint: first fp_len bytes ...
        fp_hash     BLOB    NOT NULL,            -- ... their SHA-256 (grows until 1 KiB)
        line_fp     TEXT,                        -- hex SHA-256 of the first line (messageIds)
        offset      INTEGER NOT NULL DEFAULT 0,  -- committed read position
        marker_len  INTEGER NOT NULL DEFAULT 0,  -- the bytes just before `offset` ...
        marker      BLOB,                        -- ... their SHA-256 (first 16 bytes)
        size        INTEGER NOT NULL DEFAULT 0,  -- size when last read
        first_seen  REAL    NOT NULL,
        updated     REAL    NOT NULL,
        gone_since  REAL,
        state       TEXT    NOT NULL DEFAULT 'live'   -- live | rotated | done
    );
    CREATE INDEX files_by_inode ON files (dev, ino);
    CREATE INDEX files_by_path ON files (cur_path);

    CREATE TABLE outbox (
        id       INTEGER PRIMARY KEY,
        enqueued REAL NOT NULL,                  -- wall clock, for trackd_outbox_oldest_seconds
        body     BLOB NOT NULL                   -- the message, compact JSON
    );

    CREATE TABLE sink_file (
        path   TEXT PRIMARY KEY,
        dev    INTEGER NOT NULL,
        ino    INTEGER NOT NULL,
        length INTEGER NOT NULL                  -- bytes known delivered (SPEC §4)
    );

    CREATE TABLE deadletters (
        id        INTEGER PRIMARY KEY,
        failed_at REAL NOT NULL,
        sink      TEXT NOT NULL,
        reason    TEXT NOT NULL,
        body      BLOB NOT NULL
    );

    CREATE TABLE id_devices (
        device    TEXT PRIMARY KEY,
        state     BLOB NOT NULL,                 -- epochs, bindings, R4 history (JSON)
        last_seen REAL NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE id_named (
        named TEXT PRIMARY KEY,
        state BLOB NOT NULL                      -- devices, R7 change (JSON)
    ) WITHOUT ROWID;

    CREATE TABLE id_aliases (
        previous TEXT PRIMARY KEY,               -- an alias is sent once per previousId
        user_id  TEXT NOT NULL,
        ts       REAL NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE watermarks (
        source TEXT PRIMARY KEY,
        newest REAL NOT NULL                     -- newest event time read (R6 "future" check)
    ) WITHOUT ROWID;
    """,
    # 2: session mappings (R2/R3) and the R7 identity-change index.
    """
    CREATE TABLE id_sessions (
        session TEXT PRIMARY KEY,
        state   BLOB NOT NULL,                   -- mapping, login device, last device (JSON)
        until   REAL NOT NULL                    -- for garbage collection
    ) WITHOUT ROWID;

    CREATE TABLE id_changes (
        old_id TEXT PRIMARY KEY,                 -- R7: hits naming old_id resolve to new_id ...
        new_id TEXT NOT NULL,
        ts     REAL NOT NULL                     -- ... from this event time on
    ) WITHOUT ROWID;
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)
