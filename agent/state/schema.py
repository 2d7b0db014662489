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
    # 3: what HTTP delivery needs per outbox row (SPEC §4, §5.2), dead letters you can act on,
    # Kissmetrics `_t` assignments, and requests other processes leave for the lock holder.
    # The outbox is rebuilt with AUTOINCREMENT: the sender reads past a cursor, so an id must
    # never be handed out twice (a plain rowid reuses the ids of deleted top rows).
    """
    CREATE TABLE outbox_v3 (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        enqueued      REAL    NOT NULL,           -- wall clock, for trackd_outbox_oldest_seconds
        body          BLOB    NOT NULL,           -- the message, compact JSON
        message_id    TEXT,                       -- the message's messageId
        stamp         INTEGER,                    -- sink-assigned (Kissmetrics _t)
        attempts      INTEGER NOT NULL DEFAULT 0,
        first_attempt REAL                        -- wall clock of the first failure
    );
    INSERT INTO outbox_v3 (id, enqueued, body) SELECT id, enqueued, body FROM outbox ORDER BY id;
    DROP TABLE outbox;
    ALTER TABLE outbox_v3 RENAME TO outbox;

    ALTER TABLE deadletters ADD COLUMN message_id TEXT;
    ALTER TABLE deadletters ADD COLUMN stamp INTEGER;
    ALTER TABLE deadletters ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE deadletters ADD COLUMN detail TEXT NOT NULL DEFAULT '';
    ALTER TABLE deadletters ADD COLUMN enqueued REAL;

    CREATE TABLE km_seconds (
        person TEXT    NOT NULL,                 -- _p
        name   TEXT    NOT NULL,                 -- clean(_n), lower-cased; "/s" for set requests
        second INTEGER NOT NULL,                 -- the _t assigned
        PRIMARY KEY (person, name, second)
    ) WITHOUT ROWID;
    CREATE INDEX km_seconds_by_second ON km_seconds (second);

    CREATE TABLE requests (
        id      INTEGER PRIMARY KEY,
        created REAL NOT NULL,
        kind    TEXT NOT NULL,                   -- deadletters_retry | deadletters_drop | ...
        args    TEXT NOT NULL,                   -- JSON
        done    REAL,                            -- when the lock holder applied it
        result  TEXT                             -- JSON: what it did
    );
    """,
    # 4: backfill jobs handed to the running daemon (SPEC §5.1, §6).
    """
    CREATE TABLE jobs (
        id        INTEGER PRIMARY KEY,
        created   REAL NOT NULL,
        kind      TEXT NOT NULL,                 -- backfill
        args      TEXT NOT NULL,                 -- JSON: files, sources, since, until
        state     TEXT NOT NULL DEFAULT 'queued', -- queued | running | done | failed
        started   REAL,
        updated   REAL,
        finished  REAL,
        progress  TEXT,                          -- JSON: files, bytes, lines, rate (while running)
        result    TEXT                           -- JSON: the summary, the exit code
    );
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)
