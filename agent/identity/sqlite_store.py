"""The identity graph in the state database (the default `identity.store: sqlite`).

Each device and named id is one row holding its state as compact JSON: a device's epochs are read
and written together, and rows stay small. Writes run inside the pipeline's chunk transaction.
"""

from __future__ import annotations

import sqlite3

import orjson

from agent.identity.graph import Device, Epoch, Named

#: Parameters per `IN (…)` query (SQLite's default limit is 32766; smaller keeps plans cheap).
_IN_MAX = 500


def _device_blob(dev: Device) -> bytes:
    return orjson.dumps(
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
    return Device(device, epochs, data.get("s"), recent, last_seen)


def _named_blob(entry: Named) -> bytes:
    return orjson.dumps(
        {"f": entry.first_seen, "d": entry.devices, "c": entry.changed_to, "ca": entry.changed_at}
    )


def _named_from(named: str, blob: bytes) -> Named:
    data = orjson.loads(blob)
    return Named(named, data["f"], list(data.get("d") or []), data.get("c"), data.get("ca"))


class SqliteIdentityStore:
    """IdentityStore over the state database connection of the pipeline thread."""

    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def load_device(self, device: str) -> Device | None:
        row = self._conn.execute(
            "SELECT state, last_seen FROM id_devices WHERE device = ?", (device,)
        ).fetchone()
        return None if row is None else _device_from(device, row[0], row[1])

    def load_named(self, named: str) -> Named | None:
        row = self._conn.execute("SELECT state FROM id_named WHERE named = ?", (named,)).fetchone()
        return None if row is None else _named_from(named, row[0])

    def load_devices(self, devices: list[str]) -> list[Device]:
        out: list[Device] = []
        for i in range(0, len(devices), _IN_MAX):
            part = devices[i : i + _IN_MAX]
            marks = ",".join("?" * len(part))
            out.extend(
                _device_from(d, blob, seen)
                for d, blob, seen in self._conn.execute(
                    f"SELECT device, state, last_seen FROM id_devices WHERE device IN ({marks})",  # noqa: S608 - placeholders only
                    part,
                )
            )
        return out

    def load_named_many(self, named: list[str]) -> list[Named]:
        out: list[Named] = []
        for i in range(0, len(named), _IN_MAX):
            part = named[i : i + _IN_MAX]
            marks = ",".join("?" * len(part))
            out.extend(
                _named_from(n, blob)
                for n, blob in self._conn.execute(
                    f"SELECT named, state FROM id_named WHERE named IN ({marks})",  # noqa: S608 - placeholders only
                    part,
                )
            )
        return out

    def alias_sent(self, previous: str) -> str | None:
        row = self._conn.execute(
            "SELECT user_id FROM id_aliases WHERE previous = ?", (previous,)
        ).fetchone()
        return None if row is None else str(row[0])

    def save(
        self, devices: list[Device], named: list[Named], aliases: list[tuple[str, str, float]]
    ) -> None:
        if devices:
            self._conn.executemany(
                "INSERT INTO id_devices (device, state, last_seen) VALUES (?, ?, ?) "
                "ON CONFLICT (device) DO UPDATE SET state = excluded.state, "
                "last_seen = excluded.last_seen",
                [(d.device, _device_blob(d), d.last_seen) for d in devices],
            )
        if named:
            self._conn.executemany(
                "INSERT INTO id_named (named, state) VALUES (?, ?) "
                "ON CONFLICT (named) DO UPDATE SET state = excluded.state",
                [(n.named, _named_blob(n)) for n in named],
            )
        if aliases:
            self._conn.executemany(
                "INSERT OR IGNORE INTO id_aliases (previous, user_id, ts) VALUES (?, ?, ?)", aliases
            )

    def counts(self) -> dict[str, int]:
        """Rows per kind, for `trackd_identities{kind}` and `trackd status`."""
        return {
            "device": self._conn.execute("SELECT COUNT(*) FROM id_devices").fetchone()[0],
            "named": self._conn.execute("SELECT COUNT(*) FROM id_named").fetchone()[0],
        }
