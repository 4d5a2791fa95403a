"""The ``/metrics`` HTTP server: aiohttp on one thread of its own, with a connection cap and a deadline.

prometheus_client's ``start_http_server`` starts a thread per connection and never times one out:
1,000 half-sent requests made 1,010 threads (issue 22). Here one event loop serves every connection,
at most ``MAX_CONNECTIONS`` at once (past that, the oldest is closed), and any connection
open longer than ``CONNECTION_SECONDS`` is closed, whatever it is doing: a scrape takes milliseconds,
and Prometheus opens a new connection when its kept-alive one is gone.

Its own loop, not the sidecar's: the collectors are read while the text is built, and building it
for a large registry must not take time from the sidecar's calls.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

MAX_CONNECTIONS = 64
CONNECTION_SECONDS = 10.0
SWEEP_SECONDS = 1.0


class MetricsHttp:
    """Serves ``registry`` at ``/metrics`` on ``host:port`` (port 0: any free one) until ``close()``."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self.registry = registry
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="sidecar-metrics", daemon=True)
        self._opened: dict[Any, float] = {}  # connection handler -> when it was accepted
        self.server = web.Server(self._handle, access_log=None, loop=self.loop)
        self.thread.start()
        try:
            self._listener, self._sweeper = self._call(self._start(host, port))
        except BaseException:
            self._stop_loop()
            raise
        self.port: int = self._listener.sockets[0].getsockname()[1]

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _start(self, host: str, port: int) -> tuple[asyncio.Server, asyncio.Task[None]]:
        try:
            listener = await self.loop.create_server(self._connection, host, port, reuse_address=True)
        except OSError as exc:  # asyncio's words around the system's: the system's alone, as the CLI says
            raise OSError(exc.errno, os.strerror(exc.errno) if exc.errno else str(exc)) from None
        return listener, self.loop.create_task(self._sweep())

    def _connection(self) -> asyncio.Protocol:
        """A new connection always gets in; at the cap, the oldest one goes. So a flood of idle
        connections cannot lock Prometheus out: its scrape, milliseconds long, is the newest."""
        if len(self._opened) >= MAX_CONNECTIONS:
            self._drop(min(self._opened, key=self._opened.__getitem__))
        handler = self.server()
        self._opened[handler] = time.monotonic()
        return handler

    def _drop(self, handler: Any) -> None:
        self._opened.pop(handler, None)
        handler.force_close()
        if handler.transport is not None:
            handler.transport.close()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            too_old = time.monotonic() - CONNECTION_SECONDS
            open_now = set(self.server.connections)
            for handler, opened in list(self._opened.items()):
                if handler not in open_now:
                    del self._opened[handler]
                elif opened < too_old:
                    self._drop(handler)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, headers={"Allow": "GET, HEAD"})
        if request.path not in ("/metrics", "/"):
            return web.Response(status=404, text="see /metrics\n")
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        registry: Any = self.registry
        names = request.query.getall("name[]", [])
        if names:
            registry = registry.restricted_registry(names)
        body = encoder(registry)
        headers = {"Content-Type": content_type}
        if gzip_accepted(request.headers.get("Accept-Encoding", "")):
            import gzip

            body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
        return web.Response(body=body, headers=headers)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self._call(self._close())
        self._stop_loop()

    async def _close(self) -> None:
        self._sweeper.cancel()
        self._listener.close()
        await self.server.shutdown(1.0)
        for handler in list(self.server.connections):
            if handler.transport is not None:
                handler.transport.close()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

