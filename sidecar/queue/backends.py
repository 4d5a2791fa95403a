"""The queue's backend, on the state's own (the same ``store``: one database, one pool or connection)."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .store import Limits, QueueStore


async def queue_on(state: Any, limits: Limits | None = None) -> QueueStore | None:
    """The queue in ``state``'s database, its tables migrated; None for ``memory:`` (not durable)."""
    if state.scheme == "memory":
        return None
    if state.scheme == "sqlite":
        from .sqlite import SqliteQueue

        queue: QueueStore = SqliteQueue(state, limits=limits)
    elif state.scheme == "postgresql":
        from .postgres import PostgresQueue

        queue = PostgresQueue(state, limits=limits)
    else:
        raise ConfigError("store", f"the queue cannot use a {state.scheme}: store")
    await queue.open()
    return queue
