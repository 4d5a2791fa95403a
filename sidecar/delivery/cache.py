"""Single-flight: one run of a piece of work per key, shared by every caller that asks meanwhile.

The bounded TTL cache (``TTLCache``) is in sidecar/state/ttl.py, since the memory store is made of it
too; it is re-exported here for delivery's in-process caches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

from ..state.ttl import TTLCache as TTLCache  # re-exported: delivery's caches, the benchmark

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
T = TypeVar("T")


class FlightTimeout(Exception):
    """This caller's time ran out while the shared run goes on (for the others)."""


class SingleFlight(Generic[K]):
    """Concurrent calls for one key share one run: one search and one create for a new person.

    The first caller runs the work in its own task; later callers for the
    same key wait for its result (or its exception). Each caller waits only
    as long as its own timeout allows; the run itself goes on for the others,
    even if the caller that started it went away.
    """

    def __init__(self) -> None:
        self._running: dict[K, asyncio.Future[Any]] = {}

    async def run(self, key: K, work: Callable[[], Awaitable[T]], timeout: float | None) -> tuple[T, bool]:
        """Run ``work`` once for ``key``; returns (result, whether this caller shared another's run).

        ``timeout`` bounds how long a caller that shares another's run waits for it.
        """
        running = self._running.get(key)
        if running is not None:
            return await _wait(running, timeout), True
        task = asyncio.ensure_future(work())
        self._running[key] = task
        task.add_done_callback(lambda done: self._finished(key, done))
        # No timeout for the caller that started it: the work itself is bounded by that caller's deadline,
        # and its own answer (say, an unknown outcome) says more than "out of time".
        return await _wait(task, None), False

    async def join(self, key: K, timeout: float | None) -> tuple[Any, bool]:
        """Wait for the run in flight for ``key``, starting none: (its result, whether there was one)."""
        running = self._running.get(key)
        if running is None:
            return None, False
        return await _wait(running, timeout), True

    def cancel_all(self) -> None:
        """At shutdown: work whose callers are gone must not outlive the event loop."""
        for running in list(self._running.values()):
            running.cancel()

    def _finished(self, key: K, task: asyncio.Future[Any]) -> None:
        self._running.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved here, so an error nobody awaited is not logged as lost


async def _wait(running: asyncio.Future[T], timeout: float | None) -> T:
    # asyncio.wait, unlike wait_for, never cancels what it waits for: the run is shared.
    done, _ = await asyncio.wait({running}, timeout=timeout)
    if not done:
        raise FlightTimeout
    return running.result()
