"""The Deliver stream: many events over one call, in order per person, concurrent across people.

Each event is chained behind the previous event of the same person (its
key), so a person's identify lands before their track; events of other
people do not wait. A semaphore bounds the events per stream that are in
flight or answered but not yet sent back: a slot is freed only when its
answer has been handed to gRPC, so a sender that does not read its answers
stops being read (gRPC flow control then pushes back on it).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar

R = TypeVar("R")  # a request
A = TypeVar("A")  # an answer

MAX_IN_FLIGHT = 64


class OrderedByKey(Generic[R, A]):
    def __init__(
        self,
        prepare: Callable[[R], tuple[str, Callable[[], Awaitable[A]]]],
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        """``prepare`` turns a request into (its person's key, the work that answers it).

        The work must answer every request, failures included: it never raises.
        """
        self._prepare = prepare
        self._slots = asyncio.Semaphore(max_in_flight)
        self._tails: dict[str, asyncio.Task[None]] = {}
        self._answers: asyncio.Queue[A | None] = asyncio.Queue()

    async def run(self, requests: AsyncIterator[R]) -> AsyncIterator[A]:
        """Answer every request; yields answers as they complete."""
        reader = asyncio.create_task(self._read(requests))
        try:
            while (answer := await self._answers.get()) is not None:
                yield answer
                self._slots.release()
            await reader  # re-raises a failure of the request stream
        finally:
            reader.cancel()
            for task in list(self._tails.values()):
                task.cancel()

    async def _read(self, requests: AsyncIterator[R]) -> None:
        try:
            async for request in requests:
                await self._slots.acquire()
                key, work = self._prepare(request)
                before = self._tails.get(key)
                task = asyncio.create_task(self._one(work, before))
                self._tails[key] = task
                task.add_done_callback(functools.partial(self._finished, key))
            await asyncio.gather(*self._tails.values(), return_exceptions=True)
        finally:
            self._answers.put_nowait(None)

    async def _one(self, work: Callable[[], Awaitable[A]], before: asyncio.Task[None] | None) -> None:
        if before is not None:
            await asyncio.wait([before])  # the same person's previous event first, whatever its result
        try:
            answer = await work()
        except BaseException:
            self._slots.release()  # no answer will be sent back for this slot
            raise
        self._answers.put_nowait(answer)

    def _finished(self, key: str, task: asyncio.Task[None]) -> None:
        if self._tails.get(key) is task:
            del self._tails[key]
