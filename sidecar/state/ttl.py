"""A bounded in-memory TTL cache: the memory store's tables and delivery's in-process caches.

Why not cachetools.TTLCache: it keeps a linked-list node object and two
extra dict entries per key, about three times the memory of one dict entry
holding a (value, expiry) pair, and the contact cache must hold 100,000
people in a few tens of MB. This is an LRU on a plain insertion-ordered
dict: reads move a key to the end, writes past the bound evict from the front.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    def __init__(
        self, max_size: int, ttl_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_size = max_size
        self.ttl = ttl_seconds
        self._clock = clock
        self._data: dict[K, tuple[V, float]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: K) -> V | None:
        entry = self._data.pop(key, None)
        if entry is None or entry[1] <= self._clock():
            self.misses += 1
            return None
        self._data[key] = entry  # back at the end: most recently used
        self.hits += 1
        return entry[0]

    def set(self, key: K, value: V) -> None:
        self._data.pop(key, None)
        self._data[key] = (value, self._clock() + self.ttl)
        while len(self._data) > self.max_size:
            del self._data[next(iter(self._data))]

    def discard(self, key: K) -> None:
        self._data.pop(key, None)
