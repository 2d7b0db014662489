"""A bounded LRU mapping for the resolver's caches.

Kept in a module of its own, which the compiled build (setup.py) leaves as Python: mypyc cannot
compile a subclass of `OrderedDict` (the extension crashes when it is collected).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Lru(OrderedDict[K, V]):
    """A bounded LRU mapping (oldest entries dropped first)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: K, value: V) -> None:
        """Set `key` (most recent) and drop the oldest entry past `size`."""
        self[key] = value
        if len(self) > self.size:
            self.popitem(last=False)
