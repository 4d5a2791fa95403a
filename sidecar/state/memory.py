"""The default backend, ``memory:``: one process, nothing survives a restart (the sidecar as it was).

The sliding log is the one sidecar/trengo_api/ratelimit.py kept (a bounded deque of send times per token),
the contacts and results are the bounded TTLCaches delivery.py kept; they moved here so that
delivery and the limiter talk to the same interface whatever the backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from .base import ContactRecord, SlotDecision, StoredResult
from .ttl import TTLCache

V = TypeVar("V")


class MemoryState:
    scheme = "memory"
    shared = False
    url = "memory:"

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        contact_cache_size: int = 100_000,
        result_cache_size: int = 100_000,
    ) -> None:
        self._clock = clock
        self._sent: dict[str, deque[float]] = {}
        self._held_until: dict[str, float] = {}
        # TTLCache takes one ttl per cache; each entry here carries its own expiry instead.
        self.contacts: TTLCache[str, tuple[ContactRecord, float]] = TTLCache(
            contact_cache_size, float("inf"), clock
        )
        self.results: TTLCache[str, tuple[StoredResult, float]] = TTLCache(
            result_cache_size, float("inf"), clock
        )
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    async def start(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    # --- rate slots -------------------------------------------------------------------------

    async def acquire_slot(self, key: str, limit: int, window: float) -> SlotDecision:
        # No await in here: on one event loop this runs whole, which is what makes it atomic.
        now = self._clock()
        held = self._held_until.get(key, 0.0) - now
        if held > 0:
            return SlotDecision(held, held=True)
        sent = self._sent.get(key)
        if sent is None or sent.maxlen != limit:
            sent = self._sent[key] = deque(sent or (), maxlen=max(limit, 1))
        if len(sent) == sent.maxlen:
            # The oldest time, not the first in: an answered call's entry moved later (slot_answered).
            oldest = min(sent)
            delay = oldest + window - now
            if delay > 0:
                return SlotDecision(delay)
            sent.remove(oldest)
        sent.append(now)
        return SlotDecision(0.0, at=now)

    async def hold_slots(self, key: str, seconds: float) -> None:
        until = self._clock() + seconds
        self._held_until[key] = max(until, self._held_until.get(key, 0.0))

    async def slot_answered(self, key: str, at: float, earlier_by: float = 0.0) -> None:
        sent = self._sent.get(key, ())
        for i in range(len(sent) - 1, -1, -1):  # from the newest: the answered call is recent
            if sent[i] == at:
                sent[i] = max(at, self._clock() - earlier_by)  # type: ignore[index]
                return

    # --- contacts -----------------------------------------------------------------------------

    async def get_contact(self, key: str) -> ContactRecord | None:
        return _live(self.contacts, key, self._clock())

    async def put_contact(self, key: str, record: ContactRecord, ttl: float) -> None:
        self.contacts.set(key, (record, self._clock() + ttl))

    async def discard_contact(self, key: str) -> None:
        self.contacts.discard(key)

    # --- results --------------------------------------------------------------------------------

    async def get_result(self, key: str) -> StoredResult | None:
        return _live(self.results, key, self._clock())

    async def put_result(self, key: str, result: StoredResult, ttl: float) -> None:
        if _live(self.results, key, self._clock()) is None:
            self.results.set(key, (result, self._clock() + ttl))

    async def discard_result(self, key: str) -> None:
        self.results.discard(key)

    # --- locks -----------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def flight_lock(self, key: str, *, outer: bool = False) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] = self._users.get(key, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:  # nobody holds or waits: the lock goes, so keys do not pile up
                del self._users[key], self._locks[key]


def _live(cache: TTLCache[str, tuple[V, float]], key: str, now: float) -> V | None:
    entry = cache.get(key)
    if entry is None:
        return None
    value, expires = entry
    if expires <= now:
        cache.discard(key)
        return None
    return value
