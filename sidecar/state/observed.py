"""The state, timed: each operation's latency and failures go to an observer (metrics.py), and
the last outcome tells health whether the store answers."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from .base import ContactRecord, SlotDecision, State, StoredResult

T = TypeVar("T")


class ObservedState:
    """Wraps a backend; the same Protocols, so nothing above it knows."""

    def __init__(self, inner: State) -> None:
        self.inner = inner
        self.scheme = inner.scheme
        self.shared = inner.shared
        self.url = inner.url
        self.observer: Any = None  # store(operation, seconds, ok)

    def __getattr__(self, name: str) -> Any:  # pool, run, migrate, prune: for other modules' own queries
        return getattr(self.inner, name)

    async def _timed(self, operation: str, work: Awaitable[T]) -> T:
        started = time.monotonic()
        ok = False
        try:
            result = await work
            ok = True
            return result
        finally:
            if self.observer:
                self.observer.store(operation, time.monotonic() - started, ok)

    async def start(self) -> None:
        await self._timed("start", self.inner.start())

    async def ping(self) -> None:
        await self._timed("ping", self.inner.ping())

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def acquire_slot(self, key: str, limit: int, window: float) -> SlotDecision:
        return await self._timed("acquire_slot", self.inner.acquire_slot(key, limit, window))

    async def hold_slots(self, key: str, seconds: float) -> None:
        await self._timed("hold_slots", self.inner.hold_slots(key, seconds))

    async def slot_answered(self, key: str, at: float, earlier_by: float = 0.0) -> None:
        await self._timed("slot_answered", self.inner.slot_answered(key, at, earlier_by))

    async def get_contact(self, key: str) -> ContactRecord | None:
        return await self._timed("get_contact", self.inner.get_contact(key))

    async def put_contact(self, key: str, record: ContactRecord, ttl: float) -> None:
        await self._timed("put_contact", self.inner.put_contact(key, record, ttl))

    async def discard_contact(self, key: str) -> None:
        await self._timed("discard_contact", self.inner.discard_contact(key))

    async def get_result(self, key: str) -> StoredResult | None:
        return await self._timed("get_result", self.inner.get_result(key))

    async def put_result(self, key: str, result: StoredResult, ttl: float) -> None:
        await self._timed("put_result", self.inner.put_result(key, result, ttl))

    async def discard_result(self, key: str) -> None:
        await self._timed("discard_result", self.inner.discard_result(key))

    @contextlib.asynccontextmanager
    async def flight_lock(self, key: str, *, outer: bool = False) -> AsyncIterator[None]:
        """Timed until the lock is held (the wait for another holder included), not while it is."""
        held = self.inner.flight_lock(key, outer=outer)
        await self._timed("flight_lock", held.__aenter__())
        async with _Entered(held):
            yield


class _Entered:
    """Leaves a context manager already entered (its __aenter__ was timed above)."""

    def __init__(self, held: contextlib.AbstractAsyncContextManager[None]) -> None:
        self._held = held

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: Any) -> bool | None:
        return await self._held.__aexit__(*exc)
