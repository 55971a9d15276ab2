"""A bounded table with least-recently-used eviction and idle expiry.

Connection and pending-request state must not grow without limit whatever
the traced traffic does (peers' users report agents OOM-looping on exactly
this), so every table in the agent is one of these.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedTable(Generic[K, V]):
    """``get`` refreshes an entry; inserting past ``capacity`` evicts the stalest."""

    __slots__ = ("_items", "_touched", "capacity", "evicted", "peek")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self._items: OrderedDict[K, V] = OrderedDict()
        self._touched: dict[K, int] = {}
        self.capacity = capacity
        self.evicted = 0
        # peek(key) -> value or None, leaving recency alone: for callers that
        # refresh entries themselves, less often than they read them.
        self.peek: Callable[[K], V | None] = self._items.get

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def get(self, key: K, now_ns: int = 0) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
            self._touched[key] = now_ns
        return value

    def put(self, key: K, value: V, now_ns: int = 0) -> list[tuple[K, V]]:
        """Insert or replace; returns what was evicted to make room."""
        self._items[key] = value
        self._items.move_to_end(key)
        self._touched[key] = now_ns
        evicted = []
        while len(self._items) > self.capacity:
            old_key, old_value = self._items.popitem(last=False)
            del self._touched[old_key]
            evicted.append((old_key, old_value))
        self.evicted += len(evicted)
        return evicted

    def pop(self, key: K) -> V | None:
        self._touched.pop(key, None)
        return self._items.pop(key, None)

    def expire(self, older_than_ns: int, keep: Callable[[V], bool] | None = None) -> list[tuple[K, V]]:
        """Remove entries untouched since ``older_than_ns`` (oldest first)."""
        out = []
        for key in list(self._items):
            if self._touched[key] >= older_than_ns:
                break
            value = self._items[key]
            if keep is not None and keep(value):
                continue
            del self._items[key]
            del self._touched[key]
            out.append((key, value))
        return out

    def values(self) -> list[V]:
        return list(self._items.values())
