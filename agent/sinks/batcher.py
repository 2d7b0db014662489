"""The batcher: messages read from the outbox wait here until a batch is due — `batch.max_events`
of them, or `batch.max_wait` since the oldest arrived (linger since creation), or a flush — and
leave in requests cut to the sink's limits (messages and bytes per request).

Pure and clock-injected: the sender decides when to look, the batcher only answers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    """A FIFO of pending items with a size trigger and a linger trigger."""

    __slots__ = ("_clock", "_due", "_items", "_since", "_size", "max_events", "max_wait")

    def __init__(
        self,
        max_events: int,
        max_wait: float,
        clock: Callable[[], float],
        size: Callable[[T], int] = lambda _item: 0,
    ) -> None:
        self.max_events = max_events
        self.max_wait = max_wait
        self._clock = clock
        self._size = size
        self._items: deque[T] = deque()
        #: When the oldest pending item arrived (the linger's start), or None when empty.
        self._since: float | None = None
        #: Items at the front that belong to a batch already due (it leaves whole, in as many
        #: requests as the sink's limits need, without lingering again).
        self._due = 0

    def add(self, item: T) -> None:
        if self._since is None:
            self._since = self._clock()
        self._items.append(item)

    def push_front(self, items: list[T]) -> None:
        """Items that go before everything pending (retries that are due)."""
        if not items:
            return
        if self._since is None:
            self._since = self._clock()
        self._items.extendleft(reversed(items))
        if self._due:
            self._due += len(items)

    def __len__(self) -> int:
        return len(self._items)

    def ready(self, *, flush: bool = False) -> bool:
        """Whether a batch is due: full, lingered `max_wait`, or flushing whatever is pending."""
        if not self._items:
            return False
        if flush or self._due or len(self._items) >= self.max_events:
            return True
        assert self._since is not None
        return self._clock() - self._since >= self.max_wait

    def deadline(self) -> float | None:
        """When the linger trigger fires (None when empty)."""
        return None if self._since is None else self._since + self.max_wait

    def take(self, max_messages: int, max_bytes: int | None = None, overhead: int = 0) -> list[T]:
        """The next request's items: at most `max_messages`, and at most `max_bytes` counting
        `overhead` plus each item's size and a separator (one item always goes)."""
        items = self._items
        if not self._due:
            self._due = min(len(items), self.max_events)
        out: list[T] = []
        used = overhead
        size = self._size
        while items and len(out) < max_messages:
            if max_bytes is not None:
                need = size(items[0]) + (1 if out else 0)
                if out and used + need > max_bytes:
                    break
                used += need
            out.append(items.popleft())
        self._due = max(0, self._due - len(out))
        if not items:
            self._since = None
        elif out:
            # What is left waited as long as the batch that went: it lingers from now.
            self._since = self._clock()
        return out

    def __repr__(self) -> str:
        return f"Batcher(pending={len(self._items)}, max_events={self.max_events}, max_wait={self.max_wait})"
