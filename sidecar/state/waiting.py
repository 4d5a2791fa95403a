"""Using the store within a caller's deadline: a failing store is tried again until the deadline.

The store can fail for a moment (a PostgreSQL failover, a restart): a call that needs it waits for
it, as it would wait for a rate-limit slot, and fails STORE_UNAVAILABLE (with RetryInfo) only when
its own deadline leaves no time for another try.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from ..deadline import Deadline
from ..errors import StoreError, Unavailable
from .base import FlightLocks

log = logging.getLogger("sidecar.state")
T = TypeVar("T")
RETRY_SECONDS = 0.25


async def patiently(deadline: Deadline, operation: Callable[[], Awaitable[T]]) -> T:
    """``operation()``, tried again while it raises StoreError, as long as the deadline allows."""
    while True:
        try:
            return await operation()
        except StoreError:
            if deadline.remaining() <= RETRY_SECONDS:
                raise
            await asyncio.sleep(RETRY_SECONDS)


@contextlib.asynccontextmanager
async def holding(
    locks: FlightLocks, key: str, deadline: Deadline, *, outer: bool = False
) -> AsyncIterator[None]:
    """The flight lock for ``key``, waited for no longer than the deadline (then busy()).

    A store that fails while the lock is taken is tried again within the deadline. Once the block
    has run, a store that fails while the lock is let go (its connection died, which let the lock
    go already) does not undo the block's work: it is logged, not raised.
    """
    failed: StoreError | None = None
    while True:
        held = locks.flight_lock(key, outer=outer)
        try:
            async with asyncio.timeout(deadline.remaining()):
                await held.__aenter__()
        except StoreError as exc:
            if deadline.remaining() <= RETRY_SECONDS:
                raise
            failed = exc
            await asyncio.sleep(RETRY_SECONDS)
            continue
        except TimeoutError:
            # Out of time: because the store kept failing, or because another call held the lock.
            raise (failed or busy()) from None
        break
    try:
        yield
    except BaseException as exc:
        if not await held.__aexit__(type(exc), exc, exc.__traceback__):
            raise
    else:
        try:
            await held.__aexit__(None, None, None)
        except StoreError as exc:
            log.warning("a flight lock was lost with its store connection: %s", exc.message)


def busy() -> Unavailable:
    """Another call for the same person or message_id held it past this call's deadline."""
    return Unavailable(
        "a concurrent call for the same person or message_id did not finish before this call's deadline",
        retry_after=1.0,
    )
