"""The outbox side of `trackd forget` (SPEC §8): a person's undelivered messages go.

A message belongs to the person when its `userId`, `anonymousId` or `previousId` is one of the
person's identifiers. Undelivered means the outbox and the dead letters (a dead letter can be
retried into the outbox); Kissmetrics `_t` assignments keyed by the person go too. Rows are read
in pages by id, so a large outbox is scanned without holding it in memory. Runs inside the
caller's transaction. A message already inside a request in flight may still be delivered.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from typing import NamedTuple

import orjson

_PAGE = 5000
_IN_MAX = 500
_FIELDS = ("userId", "anonymousId", "previousId")


class Erased(NamedTuple):
    messages: int
    bytes: int
    dead_letters: int


def _owned(body: bytes, match: Callable[[str], bool]) -> bool:
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(message, dict):
        return False
    return any(isinstance(v, str) and match(v) for v in (message.get(f) for f in _FIELDS))


def _scan(
    conn: sqlite3.Connection, table: str, match: Callable[[str], bool], hint: Iterable[bytes]
) -> tuple[list[int], int]:
    """Ids (and total body bytes) of `table`'s rows owned by the person. `hint`: byte strings
    one of which an owned body must contain (a cheap test before parsing); empty: parse all."""
    needles = list(hint)
    ids: list[int] = []
    size = 0
    after = -1
    while True:
        rows = conn.execute(
            f"SELECT id, body FROM {table} WHERE id > ? ORDER BY id LIMIT ?",  # noqa: S608 (fixed names)
            (after, _PAGE),
        ).fetchall()
        if not rows:
            return ids, size
        for row_id, body in rows:
            raw = bytes(body)
            if needles and not any(n in raw for n in needles):
                continue
            if _owned(raw, match):
                ids.append(int(row_id))
                size += len(raw)
        after = int(rows[-1][0])


def _delete(conn: sqlite3.Connection, table: str, ids: list[int]) -> None:
    for i in range(0, len(ids), _IN_MAX):
        part = ids[i : i + _IN_MAX]
        conn.execute(
            f"DELETE FROM {table} WHERE id IN ({','.join('?' * len(part))})",  # noqa: S608 (fixed names)
            part,
        )


def erase(
    conn: sqlite3.Connection, match: Callable[[str], bool], ids: Iterable[str] = ()
) -> Erased:
    """Delete the outbox rows and dead letters whose person `match`es. `ids`, when given, are
    the identifiers `match` accepts (a fast pre-filter, and the `_t` assignments to drop)."""
    wanted = sorted(set(ids))
    hint = [orjson.dumps(i) for i in wanted]
    out_ids, size = _scan(conn, "outbox", match, hint)
    _delete(conn, "outbox", out_ids)
    dead_ids, _ = _scan(conn, "deadletters", match, hint)
    _delete(conn, "deadletters", dead_ids)
    for i in range(0, len(wanted), _IN_MAX):
        part = wanted[i : i + _IN_MAX]
        conn.execute(
            f"DELETE FROM km_seconds WHERE person IN ({','.join('?' * len(part))})",  # noqa: S608 (fixed names)
            part,
        )
    return Erased(len(out_ids), size, len(dead_ids))
