"""The identity graph in the state database (the default `identity.store: sqlite`).

Each device, named id and session is one row holding its state as compact JSON: a device's epochs
are read and written together, and rows stay small. R7 changes live in their own small table,
loaded whole at start. Writes run inside the pipeline's chunk transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import orjson

from agent.identity.graph import Batch, Changes, Device, Epoch, Named, Person, Session
from agent.state.db import transaction

#: Parameters per `IN (…)` query (SQLite allows 32766; smaller keeps statements cheap).
_IN_MAX = 500
_CLAIMED_MAX = 200_000
T = TypeVar("T")

#: Bits of one table's key filter (2 MiB), and the rows it is built from at most: a bigger table
#: goes without one (scanning it would cost the start more than the lookups it saves).
_FILTER_BITS = 1 << 24
_FILTER_SCAN_MAX = 200_000
_KEY_COLUMN = {"id_devices": "device", "id_named": "named", "id_sessions": "session"}


class KeyFilter:
    """The keys a table may hold: a Bloom filter (two bits per key) with no false negatives, so a
    key it never saw is certainly absent and needs no lookup. A new visitor's hits are mostly
    such keys (1M visitors: half the identity lookups of a run). Past `_FILTER_BITS / 8` keys its
    false positives pass ~5% of absent keys through, and it turns itself off."""

    __slots__ = ("_bits", "_count", "active")

    def __init__(self) -> None:
        self._bits = bytearray(_FILTER_BITS >> 3)
        self._count = 0
        self.active = True

    def add(self, keys: Iterable[str]) -> None:
        bits = self._bits
        mask = _FILTER_BITS - 1
        n = 0
        for key in keys:
            h = hash(key)
            a = h & mask
            b = (h >> 32) & mask
            bits[a >> 3] |= 1 << (a & 7)
            bits[b >> 3] |= 1 << (b & 7)
            n += 1
        self._count += n
        if self._count > _FILTER_BITS >> 3:
            self.active = False
            self._bits = bytearray()

    def maybe(self, keys: list[str]) -> list[str]:
        """The keys the table may hold (all of them once the filter is off)."""
        if not self.active:
            return keys
        bits = self._bits
        mask = _FILTER_BITS - 1
        out = []
        for key in keys:
            h = hash(key)
            a = h & mask
            if bits[a >> 3] & (1 << (a & 7)):
                b = (h >> 32) & mask
                if bits[b >> 3] & (1 << (b & 7)):
                    out.append(key)
        return out


#: `_device_blob` of a device with one unbound, uncontested epoch and nothing else.
_PLAIN_DEVICE = b'{"e":[[%d,%b,null,null,false]],"s":null,"r":[]}'
_dumps = orjson.dumps


def _device_blob(dev: Device) -> bytes:
    epochs = dev.epochs
    if len(epochs) == 1 and dev.shared_since is None and not dev.recent_named:
        # The common device, an anonymous visitor: its one epoch without a dict to dump.
        e = epochs[0]
        if e.named is None and e.bound_at is None and not e.contested:
            return _PLAIN_DEVICE % (e.index, _dumps(e.started))
    return _dumps(
        {
            "e": [[e.index, e.started, e.named, e.bound_at, e.contested] for e in dev.epochs],
            "s": dev.shared_since,
            "r": dev.recent_named,
        }
    )


def _device_from(device: str, blob: bytes, last_seen: float) -> Device:
    data = orjson.loads(blob)
    epochs = [Epoch(i, started, named, bound, bool(c)) for i, started, named, bound, c in data["e"]]
    recent = [(float(t), str(n)) for t, n in data.get("r") or []]
    return Device(device, epochs, data.get("s"), recent, last_seen, last_seen)


def _named_blob(entry: Named) -> bytes:
    return orjson.dumps(
        {"f": entry.first_seen, "d": entry.devices, "c": entry.changed_to, "ca": entry.changed_at}
    )


def _named_from(named: str, blob: bytes) -> Named:
    data = orjson.loads(blob)
    return Named(named, data["f"], list(data.get("d") or []), data.get("c"), data.get("ca"))


def _session_blob(s: Session) -> bytes:
    return orjson.dumps(
        {
            "n": s.named,
            "s": s.since,
            "u": s.until,
            "d": s.device,
            "r": s.login_ref,
            "ld": s.last_device,
            "lt": s.last_device_ts,
        }
    )


def _session_from(session: str, blob: bytes) -> Session:
    d = orjson.loads(blob)
    ref = d.get("r")
    return Session(
        session,
        d.get("n"),
        d.get("s", 0.0),
        d.get("u", 0.0),
        d.get("d"),
        (str(ref[0]), str(ref[1]), int(ref[2]), str(ref[3])) if ref else None,
        d.get("ld"),
        d.get("lt", 0.0),
    )


class SqliteIdentityStore:
    """IdentityStore over the state database connection of the pipeline thread (the only
    writer: the lock on state_dir makes it so)."""

    __slots__ = ("_claimed", "_conn", "_filters", "degraded")

    #: The lock on state_dir makes this process the only writer: the cache never goes stale.
    cache_ttl: float | None = None

    def __init__(self, conn: sqlite3.Connection, *, writer: bool = False) -> None:
        """`writer`: this store is the state's only writer (the pipeline's, under the state
        lock), so it may keep key filters: every row it did not read at start it wrote itself.
        A reader (`trackd identity`, `status`) looks every key up."""
        self._conn = conn
        #: table -> its KeyFilter (built at the first lookup), or None: look every key up.
        self._filters: dict[str, KeyFilter | None] | None = {} if writer else None
        #: Always 0: the state database is local (a failure there stops reading instead).
        self.degraded = 0
        #: previousIds claimed by this process (committed or not yet): claims are never undone.
        self._claimed: set[str] = set()

    def _filter(self, table: str, column: str) -> KeyFilter | None:
        """The table's key filter, built from its rows at the first call (None: too many)."""
        filters = self._filters
        if filters is None:
            return None
        if table not in filters:
            rows = self._conn.execute(
                f"SELECT {column} FROM {table} LIMIT ?",  # noqa: S608 (fixed names)
                (_FILTER_SCAN_MAX + 1,),
            ).fetchall()
            found: KeyFilter | None = None
            if len(rows) <= _FILTER_SCAN_MAX:
                found = KeyFilter()
                found.add(r[0] for r in rows)
            filters[table] = found
        kf = filters[table]
        return kf if kf is not None and kf.active else None

    def _select_in(
        self, query: str, keys: list[str], build: Callable[..., T], table: str = ""
    ) -> Iterator[T]:
        """Run `query` (with one `{marks}` for the IN list) over `keys` in bounded chunks; with
        `table`, only over the keys its filter may hold."""
        if table:
            kf = self._filter(table, _KEY_COLUMN[table])
            if kf is not None:
                keys = kf.maybe(keys)
        for i in range(0, len(keys), _IN_MAX):
            part = keys[i : i + _IN_MAX]
            sql = query.format(marks=",".join("?" * len(part)))
            for row in self._conn.execute(sql, part):
                yield build(*row)

    def load_device(self, device: str) -> Device | None:
        found = self.load_devices([device])
        return found[0] if found else None

    def load_devices(self, devices: list[str]) -> list[Device]:
        return list(
            self._select_in(
                "SELECT device, state, last_seen FROM id_devices WHERE device IN ({marks})",
                devices,
                _device_from,
                "id_devices",
            )
        )

    def load_named(self, named: str) -> Named | None:
        found = self.load_named_many([named])
        return found[0] if found else None

    def load_named_many(self, named: list[str]) -> list[Named]:
        return list(
            self._select_in(
                "SELECT named, state FROM id_named WHERE named IN ({marks})",
                named,
                _named_from,
                "id_named",
            )
        )

    def load_sessions(self, sessions: list[str]) -> list[Session]:
        return list(
            self._select_in(
                "SELECT session, state FROM id_sessions WHERE session IN ({marks})",
                sessions,
                _session_from,
                "id_sessions",
            )
        )

    def load_batch(self, devices: list[str], named: list[str], sessions: list[str]) -> Batch:
        return Batch(
            self.load_devices(devices) if devices else [],
            self.load_named_many(named) if named else [],
            self.load_sessions(sessions) if sessions else [],
        )

    def load_changes(self) -> dict[str, tuple[str, float]]:
        return {
            old: (new, ts)
            for old, new, ts in self._conn.execute("SELECT old_id, new_id, ts FROM id_changes")
        }

    def claim_alias(self, previous: str, user: str, ts: float) -> bool:
        if previous in self._claimed:
            return False
        row = self._conn.execute(
            "SELECT 1 FROM id_aliases WHERE previous = ?", (previous,)
        ).fetchone()
        if row is not None:
            return False
        if len(self._claimed) >= _CLAIMED_MAX:
            # Bounded memory: the committed claims are in id_aliases (checked above).
            self._claimed.clear()
        self._claimed.add(previous)
        return True

    def aliases_touching(self, ids: list[str]) -> list[tuple[str, str, float]]:
        found: dict[str, tuple[str, str, float]] = {}
        for column in ("previous", "user_id"):
            for row in self._select_in(
                f"SELECT previous, user_id, ts FROM id_aliases WHERE {column} IN ({{marks}})",  # noqa: S608 (fixed names)
                ids,
                lambda p, u, t: (str(p), str(u), float(t)),
            ):
                found[row[0]] = row
        return sorted(found.values(), key=lambda a: a[2])

    def save(self, changes: Changes) -> None:
        devices, named, sessions, aliases = changes
        conn = self._conn
        self._note_saved("id_devices", (d.device for d in devices) if devices else ())
        self._note_saved("id_named", (n.named for n in named) if named else ())
        self._note_saved("id_sessions", (x.session for x in sessions) if sessions else ())
        if devices:
            conn.executemany(
                "INSERT INTO id_devices (device, state, last_seen) VALUES (?, ?, ?) "
                "ON CONFLICT (device) DO UPDATE SET state = excluded.state, "
                "last_seen = excluded.last_seen",
                [(d.device, _device_blob(d), d.last_seen) for d in devices],
            )
            for d in devices:
                d.saved_seen = d.last_seen
        if named:
            conn.executemany(
                "INSERT INTO id_named (named, state) VALUES (?, ?) "
                "ON CONFLICT (named) DO UPDATE SET state = excluded.state",
                [(n.named, _named_blob(n)) for n in named],
            )
            renames = [(n.named, n.changed_to, n.changed_at) for n in named if n.changed_to]
            if renames:
                conn.executemany(
                    "INSERT INTO id_changes (old_id, new_id, ts) VALUES (?, ?, ?) "
                    "ON CONFLICT (old_id) DO UPDATE SET new_id = excluded.new_id, ts = excluded.ts",
                    renames,
                )
        if sessions:
            conn.executemany(
                "INSERT INTO id_sessions (session, state, until) VALUES (?, ?, ?) "
                "ON CONFLICT (session) DO UPDATE SET state = excluded.state, until = excluded.until",
                [(s.session, _session_blob(s), max(s.until, s.last_device_ts)) for s in sessions],
            )
        if aliases:
            conn.executemany(
                "INSERT OR IGNORE INTO id_aliases (previous, user_id, ts) VALUES (?, ?, ?)", aliases
            )

    def _note_saved(self, table: str, keys: Iterable[str]) -> None:
        """Keys about to be written join the table's filter (before the write: a rolled-back
        chunk leaves a key the filter lets through, which costs a lookup, never a miss)."""
        kf = self._filter(table, _KEY_COLUMN[table])
        if kf is not None:
            kf.add(keys)

    def collect(self, newest: float, forget_after: float, session_ttl: float) -> tuple[int, int]:
        """Delete devices unseen for `forget_after` and sessions over for `session_ttl`, measured
        back from `newest` (the newest event time read): backfilled history is not collected
        as it is replayed. Returns (devices, sessions) deleted. Runs in its own transaction."""
        conn = self._conn
        with transaction(conn):
            devices = conn.execute(
                "DELETE FROM id_devices WHERE last_seen < ?", (newest - forget_after,)
            ).rowcount
            sessions = conn.execute(
                "DELETE FROM id_sessions WHERE until < ?", (newest - session_ttl,)
            ).rowcount
        return devices, sessions

    def _delete_in(self, table: str, column: str, keys: list[str]) -> int:
        removed = 0
        for i in range(0, len(keys), _IN_MAX):
            part = keys[i : i + _IN_MAX]
            removed += self._conn.execute(
                f"DELETE FROM {table} WHERE {column} IN ({','.join('?' * len(part))})",  # noqa: S608 (fixed names)
                part,
            ).rowcount
        return removed

    def forget(self, person: Person, notice: Iterable[str] = ()) -> dict[str, int]:
        named, devices = set(person.named), set(person.devices)
        sessions = [
            s.session
            for s in (_session_from(k, b) for k, b in self._conn.execute(
                "SELECT session, state FROM id_sessions"
            ))
            if s.named in named or s.device in devices or s.last_device in devices
        ]  # fmt: skip
        self._delete_in("id_changes", "old_id", person.named)
        self._delete_in("id_changes", "new_id", person.named)
        self._claimed.difference_update(person.aliases)
        return {
            "devices": self._delete_in("id_devices", "device", person.devices),
            "named": self._delete_in("id_named", "named", person.named),
            "sessions": self._delete_in("id_sessions", "session", sessions),
            "aliases": self._delete_in("id_aliases", "previous", person.aliases),
        }

    def sync(self) -> list[set[str]]:
        return []

    def counts(self) -> dict[str, int]:
        """Rows per kind, for `trackd_identities{kind}` and `trackd status`."""
        tables = {"device": "id_devices", "named": "id_named", "session": "id_sessions"}
        tables["aliases"] = "id_aliases"
        return {
            kind: int(self._conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # noqa: S608 (fixed names)
            for kind, table in tables.items()
        }
