"""The drain at shutdown: which calls are in flight, and how they are told the grace is over."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator

from ..errors import ShuttingDown

# After shutdown's grace: how long the calls cut off get to send their answers before grpc cancels them.
CUT_OFF_SECONDS = 1.0


class InFlight:
    """The calls in progress, so shutdown can wait for them while health still answers NOT_SERVING.

    grpc's own server.stop(grace) closes the listener at once, so a readiness
    probe during the drain would see "connection refused" instead of NOT_SERVING.
    """

    def __init__(self) -> None:
        self.count = 0
        self.closing = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._on_cut: set[Callable[[], None]] = set()  # open Deliver streams: stop reading

    @contextlib.contextmanager
    def track(self, on_cut: Callable[[], None] | None = None) -> Iterator[None]:
        if self.closing:
            raise ShuttingDown()
        self.count += 1
        self._idle.clear()
        if on_cut is not None:
            self._on_cut.add(on_cut)
        try:
            yield
        finally:
            if on_cut is not None:
                self._on_cut.discard(on_cut)
            self.count -= 1
            if self.count == 0:
                self._idle.set()

    def cut_off(self) -> None:
        for stop in list(self._on_cut):
            stop()

    async def wait_idle(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
