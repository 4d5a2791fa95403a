"""The sidecar's state behind one seam, chosen by the ``store`` URL's scheme.

``memory:`` (the default: one process), ``sqlite:///abs/path.db`` (one host, survives restarts),
``postgresql://`` or ``postgres://`` (any number of sidecars). Delivery, the rate limiter and
idempotency talk to the Protocols in base.py and never know which backend they have; the drivers
are imported only when their scheme is used (as httpx does with its transports).

Other modules keep their own tables in the same database through the backend (base.SqlBackend):
``await state.migrate("queue", steps)`` and then ``state.pool`` (PostgreSQL) or ``state.run(fn)``
(SQLite) with named queries of their own (sql.load_queries).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from ..errors import StoreError
from .base import (
    ContactRecord,
    ContactStore,
    FlightLocks,
    RateSlots,
    ResultStore,
    SlotDecision,
    SqlBackend,
    State,
    StoredResult,
)
from .url import check_url, mask_url, scheme_of

__all__ = [
    "ContactRecord",
    "ContactStore",
    "FlightLocks",
    "RateSlots",
    "ResultStore",
    "SlotDecision",
    "SqlBackend",
    "State",
    "StoreError",
    "StoredResult",
    "check_url",
    "mask_url",
    "open_state",
    "scope_of",
]


def open_state(
    url: str = "memory:",
    *,
    clock: Callable[[], float] | None = None,
    pool_size: int = 4,
    contact_cache_size: int = 100_000,
    result_cache_size: int = 100_000,
) -> State:
    """The backend for ``url``, not yet started (``await state.start()`` connects and migrates).

    ``clock``: wall-clock seconds, for tests; None is each backend's own (the server's, on PostgreSQL).
    Raises ValueError (naming no password) for a URL no backend takes.
    """
    problem = check_url(url)
    if problem:
        raise ValueError(problem)
    scheme = scheme_of(url)
    if scheme == "memory":
        from .memory import MemoryState

        return MemoryState(clock=clock or time.monotonic, contact_cache_size=contact_cache_size,
                           result_cache_size=result_cache_size)
    if scheme == "sqlite":
        from .sqlite import SqliteState

        return SqliteState(url, clock=clock or time.time)
    from .postgres import PostgresState

    return PostgresState(url, clock=clock, pool_size=pool_size)


def scope_of(token: str) -> str:
    """The key under which one Trengo token's state is kept: a hash of the token, never the token."""
    return hashlib.sha256(b"trengo-sidecar:" + token.encode()).hexdigest()[:32]
