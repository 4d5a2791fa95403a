"""The queue's backend, chosen by the store URL's scheme (the same ``store`` the state uses)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import unquote, urlsplit

from ..errors import ConfigError
from .sqlite import SqliteQueue, SqliteRunner
from .store import QueueStore

Opened = tuple[QueueStore, Callable[[], Awaitable[None]]]


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
    raise ConfigError("store", f"the queue cannot use a {scheme}: store (memory:, sqlite:///path)")
