"""The queue's backend, chosen by the store URL's scheme (the same ``store`` the state uses)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import unquote, urlsplit

from ..errors import ConfigError
from .sqlite import SqliteQueue, SqliteRunner
from .store import QueueStore

Opened = tuple[QueueStore, Callable[[], Awaitable[None]]]
POOL_SIZE = 4  # connections per sidecar: a claim, a heartbeat, Enqueues and reads at once
POOL_TIMEOUT_SECONDS = 5.0


async def open_queue(url: str) -> Opened | None:
    """The store and how to close it, or None for ``memory:`` (no durable queue)."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "memory":
        return None
    if scheme == "sqlite":
        path = unquote(urlsplit(url).path)
        if not path.startswith("/"):
            raise ConfigError("store", "a sqlite URL needs an absolute path: sqlite:///var/lib/sidecar/state.db")
        runner = SqliteRunner(path)
        await runner.start()
        queue = SqliteQueue(runner)
        await queue.open()
        return queue, runner.aclose
    if scheme in ("postgresql", "postgres"):
        return await _postgres(url)
    raise ConfigError("store", f"the queue cannot use a {scheme}: store (memory:, sqlite:///path, postgresql://)")


async def _postgres(url: str) -> Opened:
    # Imported here: psycopg loads libpq, which a sidecar on SQLite or memory never needs.
    import psycopg_pool

    from .postgres import PostgresQueue

    pool: psycopg_pool.AsyncConnectionPool = psycopg_pool.AsyncConnectionPool(
        url, min_size=1, max_size=POOL_SIZE, open=False, timeout=POOL_TIMEOUT_SECONDS
    )
    await pool.open(wait=False)
    queue = PostgresQueue(pool)
    await queue.open()
    return queue, pool.close
