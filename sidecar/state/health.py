"""Whether the store answers: checked at start and then every few seconds, in the background.

A sidecar whose store is down still starts (and logs why, and keeps trying); its service is
NOT_SERVING until the store answers again, which it notices by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from ..errors import StoreError
from .observed import ObservedState

log = logging.getLogger("sidecar.state")
UP_CHECK_SECONDS = 2.0
DOWN_CHECK_SECONDS = 0.5
PRUNE_EVERY_CHECKS = 300  # expired rows go about every 10 minutes while up


class StoreHealth:
    def __init__(self, state: ObservedState, changed: Callable[[], Awaitable[None]]) -> None:
        self.state = state
        self.up = True
        self.started = False
        self._changed = changed
        self._task: asyncio.Task[None] | None = None
        self._checks = 0

    async def start(self) -> None:
        """Connect and migrate once; if the store is unreachable, go on and retry in the background."""
        try:
            await self.state.start()
            self.started = True
        except StoreError as exc:
            self.up = False
            log.warning("the store is unreachable at start; retrying: %s", exc.message)
            await self._changed()
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(UP_CHECK_SECONDS if self.up else DOWN_CHECK_SECONDS)
            await self.check()

    async def check(self) -> None:
        try:
            if not self.started:
                await self.state.start()
                self.started = True
            await self.state.ping()
            up, why = True, ""
        except StoreError as exc:
            up, why = False, exc.message
        if up and self.state.shared:
            self._checks += 1
            if self._checks % PRUNE_EVERY_CHECKS == 0:
                await self._prune()
        if up != self.up:
            self.up = up
            if up:
                log.warning("the store (%s) answers again", self.state.url)
            else:
                log.warning("the store is unreachable; the service is NOT_SERVING until it answers: %s", why)
            await self._changed()

    async def _prune(self) -> None:
        prune = getattr(self.state.inner, "prune", None)
        if prune is not None:
            with contextlib.suppress(StoreError):
                await prune(60.0 * 60)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
