"""The sender: outbox -> sink, deleting messages only once the sink acknowledged them (SPEC §5.2).

`step()` runs on the sender's own thread with its own connection; the supervisor's async loop
decides when to call it (new rows committed, a retry timer, a drain at shutdown).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter

import structlog

from agent.errors import StateError
from agent.sinks.base import Delivered, Reject, Retry, Sink
from agent.state import outbox

log = structlog.get_logger("trackd.sender")


class Sender:
    def __init__(self, sink: Sink, conn: sqlite3.Connection) -> None:
        self.sink = sink
        self.conn = conn
        self.sent = 0
        self.failures: Counter[str] = Counter()
        self.dead_letters = 0
        self.last_delivery: float | None = None
        self.last_retry: Retry | None = None
        self._lock = threading.Lock()

    def open(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.sink.open(self.conn)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def step(self) -> int:
        """Deliver one batch. Returns messages delivered (0 when the outbox is empty or a retry
        is due; `last_retry` then says why)."""
        with self._lock:
            batch = outbox.fetch(self.conn, 0, self.sink.max_batch)
            if not batch:
                self.last_retry = None
                return 0
            outcome = self.sink.deliver([body for _, body in batch])
            last_id = batch[-1][0]
            if isinstance(outcome, Retry):
                self.failures[outcome.reason] += 1
                self.last_retry = outcome
                return 0
            self.last_retry = None
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                if isinstance(outcome, Reject):
                    now = time.time()
                    self.conn.executemany(
                        "INSERT INTO deadletters (failed_at, sink, reason, body) VALUES (?, ?, ?, ?)",
                        [(now, self.sink.name, outcome.reason, body) for _, body in batch],
                    )
                outbox.delete_through(self.conn, last_id)
                if isinstance(outcome, Delivered):
                    self.sink.committed(self.conn)
                self.conn.execute("COMMIT")
            except sqlite3.Error as exc:
                try:
                    self.conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise StateError(
                    f"delivered {len(batch)} messages but could not record it in the state "
                    f"database: {exc} (they will be sent again after a restart)"
                ) from exc
            if isinstance(outcome, Reject):
                self.dead_letters += len(batch)
                log.warning("messages_dead_lettered", count=len(batch), reason=outcome.reason)
                return 0
            self.sent += len(batch)
            self.last_delivery = time.time()
            return len(batch)

    def pending(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def close(self) -> None:
        self.sink.close()
