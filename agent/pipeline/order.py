"""Event-time order (SPEC §1.4): the k-way merge of `run --once` and backfill, and the hold
buffer of tail mode.

While tailing, app records go at once and access records wait until every app source that
logins/logouts come from has read past their time — or has not grown for `identity.max_hold` —
or they have waited `max_hold` themselves; so a hit is resolved after the login it follows. A
held record is never lost: its file's position is only advanced once it is released.

Two times are kept apart by name: R6's *watermark* (the newest event time read per source, kept
in the state; `emit.py`) and this buffer's *read_up_to* (the newest sort key read per app source,
in memory, for release decisions only).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from agent.pipeline.prepare import Prepared

#: Event seconds before its floor that a file is started: its first blocks are then being
#: prepared (by the workers) while the merge still takes the file before it.
START_AHEAD = 300.0


def merged(
    streams: list[Iterator[Prepared]], floors: list[float] | None = None
) -> Iterable[Prepared]:
    """Records of every file in one event-time order (each stream is in file order).

    With `floors` (the sort key of stream i's first record, or anything below it: -inf), a
    stream is started only when the merge comes within START_AHEAD of its floor: a backfill
    of a year of hourly files then holds open, reads ahead and keeps records of the few files
    whose times overlap, not of every file. The order is `heapq.merge`'s, record for record
    (see `_lazy_merge`)."""
    if len(streams) == 1:
        return streams[0]
    if floors is None:
        return heapq.merge(*streams)
    return _lazy_merge(streams, floors)


def _lazy_merge(streams: list[Iterator[Prepared]], floors: list[float]) -> Iterator[Prepared]:
    """`heapq.merge(*streams)`, starting each stream once the smallest record waiting comes
    within START_AHEAD of its floor. Same order: a record is taken only while every stream not
    started has a floor above its key, so that stream's first record is larger (the key comes
    first); ties between started streams go to the lower index, as in `heapq.merge`."""
    # Not started yet, the lowest floor last.
    waiting = sorted(range(len(streams)), key=floors.__getitem__, reverse=True)
    # [record, stream index, its __next__, the stream]: compared on the first two only.
    heap: list[list[Any]] = []
    push, replace, pop = heapq.heappush, heapq.heapreplace, heapq.heappop

    def start(i: int) -> None:
        it = iter(streams[i])
        step = it.__next__
        try:
            push(heap, [step(), i, step, it])
        except StopIteration:
            pass

    while heap or waiting:
        if not heap:
            start(waiting.pop())
            continue
        entry = heap[0]
        record = entry[0]
        if waiting and floors[waiting[-1]] <= record[0] + START_AHEAD:
            start(waiting.pop())
            continue
        if not waiting and len(heap) == 1:
            yield record
            yield from entry[3]
            return
        yield record
        try:
            entry[0] = entry[2]()
            replace(heap, entry)
        except StopIteration:
            pop(heap)


class HoldBuffer:
    """Access records waiting for the app sources their logins come from."""

    __slots__ = ("_clock", "_ends", "_grew", "_hold_for", "_max_hold", "_queues", "_read_up_to")

    def __init__(
        self, hold_for: Iterable[str], max_hold: float, clock: Callable[[], float]
    ) -> None:
        self._hold_for = tuple(sorted(set(hold_for)))
        self._max_hold = max_hold
        self._clock = clock
        started = clock()
        #: Per app source: the newest sort key read, and when it last grew (monotonic).
        self._read_up_to: dict[str, float] = {}
        self._grew: dict[str, float] = dict.fromkeys(self._hold_for, started)
        #: Per file id: (read at, record) in file order; and the end of the last split held.
        self._queues: dict[int, deque[tuple[float, Prepared]]] = {}
        self._ends: dict[int, tuple[int, bytes]] = {}

    @property
    def active(self) -> bool:
        """Whether any rule's logins or logouts come from an app source (else nothing waits)."""
        return bool(self._hold_for)

    def watches(self, source: str) -> bool:
        return source in self._grew

    def note_read(self, source: str, items: list[Prepared]) -> None:
        """An app source the buffer waits for read `items` (possibly none: it is still alive)."""
        self._grew[source] = self._clock()
        if items:
            newest = max(p.key for p in items)
            if newest > self._read_up_to.get(source, 0.0):
                self._read_up_to[source] = newest

    def is_holding(self, file_id: int) -> bool:
        return bool(self._queues.get(file_id))

    def hold(self, file_id: int, items: list[Prepared], end: int, before: bytes) -> None:
        """Queue a split's records; the file's position moves to `end` once all are released."""
        now = self._clock()
        self._queues.setdefault(file_id, deque()).extend((now, item) for item in items)
        self._ends[file_id] = (end, before)

    def release(self) -> tuple[list[Prepared], list[tuple[int, int, bytes]]]:
        """The records that may go now, in event-time order, and the (file id, end, before) of
        each file whose queue emptied (its position may move once those records are emitted)."""
        if not self._queues:
            return [], []
        now = self._clock()
        out: list[Prepared] = []
        heads = [(q[0][1].key, q[0][1].offset, fid) for fid, q in self._queues.items() if q]
        heapq.heapify(heads)
        while heads:
            key, _offset, fid = heads[0]
            queue = self._queues[fid]
            read_at, item = queue[0]
            if not (now - read_at >= self._max_hold or self._caught_up(key, now)):
                break
            queue.popleft()
            out.append(item)
            if queue:
                heapq.heapreplace(heads, (queue[0][1].key, queue[0][1].offset, fid))
            else:
                heapq.heappop(heads)
        done = []
        for fid in [fid for fid, q in self._queues.items() if not q]:
            del self._queues[fid]
            end, before = self._ends.pop(fid)
            done.append((fid, end, before))
        return out, done

    def _caught_up(self, key: float, now: float) -> bool:
        """Has every app source the hit waits for read past `key`, or gone quiet?"""
        for source in self._hold_for:
            if (
                self._read_up_to.get(source, 0.0) < key
                and now - self._grew[source] < self._max_hold
            ):
                return False
        return True

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def __repr__(self) -> str:
        return f"HoldBuffer(waiting_for={self._hold_for}, held={len(self)})"
