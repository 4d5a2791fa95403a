"""Bounded in-memory TTL caches and single-flight.

Why not cachetools.TTLCache: it keeps a linked-list node object and two
extra dict entries per key, about three times the memory of one dict entry
holding a (value, expiry) pair, and the contact cache must hold 100,000
people in a few tens of MB. This is an LRU on a plain insertion-ordered
dict: reads move a key to the end, writes past the bound evict from the front.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
T = TypeVar("T")


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

    def clear(self) -> None:
        self._data.clear()


class SingleFlight(Generic[K]):
    """Concurrent calls for one key share one run: one search and one create for a new person.

    The first caller runs the work in its own task; later callers for the
    same key await its result (or its exception). If the first caller is
    cancelled (its client went away), the others are not: the work is
    shielded and finishes for them.
    """

    def __init__(self) -> None:
        self._running: dict[K, asyncio.Future[Any]] = {}

    def __len__(self) -> int:
        return len(self._running)

    async def run(self, key: K, work: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """Run ``work`` once for ``key``; returns (result, whether this caller shared another's run)."""
        running = self._running.get(key)
        if running is not None:
            return await asyncio.shield(running), True
        task = asyncio.ensure_future(work())
        self._running[key] = task
        task.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(task), False

    def pending(self, key: K) -> asyncio.Future[Any] | None:
        """The run in flight for ``key``, if any, to await without starting one."""
        running = self._running.get(key)
        return asyncio.shield(running) if running is not None else None

    def cancel_all(self) -> None:
        """At shutdown: work whose callers are gone must not outlive the event loop."""
        for running in list(self._running.values()):
            running.cancel()

    def _finished(self, key: K, task: asyncio.Future[Any]) -> None:
        self._running.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved here, so an error nobody awaited is not logged as lost
