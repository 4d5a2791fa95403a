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
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar

from ..errors import InvalidArgument

R = TypeVar("R")  # a request
A = TypeVar("A")  # an answer

MAX_IN_FLIGHT = 64


class OrderedByKey(Generic[R, A]):
    def __init__(
        self,
        prepare: Callable[[R], Awaitable[tuple[str, Callable[[], Awaitable[A]]]]],
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        """``prepare`` turns a request into (its person's key, the work that answers it).

        The work must answer every request, failures included: it never raises.
        """
        self._prepare = prepare
        self._slots = asyncio.Semaphore(max_in_flight)
        self._tails: dict[str, asyncio.Task[None]] = {}
        self._answers: asyncio.Queue[A | None] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self.stopped = False

    def stop(self) -> None:
        """Read no more requests; the ones read are still answered, then run() ends (shutdown)."""
        self.stopped = True
        if self._reader is not None:
            self._reader.cancel()

    async def run(self, requests: AsyncIterator[R]) -> AsyncIterator[A]:
        """Answer every request; yields answers as they complete."""
        reader = self._reader = asyncio.create_task(self._read(requests))
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
            try:
                async for request in requests:
                    await self._slots.acquire()
                    key, work = await self._prepare(request)
                    before = self._tails.get(key)
                    task = asyncio.create_task(self._one(work, before))
                    self._tails[key] = task
                    task.add_done_callback(functools.partial(self._finished, key))
            except asyncio.CancelledError:
                if not self.stopped:
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]  # stop(): answer what was read
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


class StreamIds:
    """The ids of one Deliver stream: each must be non-empty, new, and at most MAX_ID characters (as
    message_id), or answers cannot be matched.

    The last MAX_IDS are remembered (a dict keeps insertion order), each as a 16-byte digest: what a
    stream remembers is bounded in bytes (about 100 bytes an id with the dict's own, so ~5 MB at
    most), whatever the ids' length. Unbounded, 300 ids of 1 MB took 300 MB for the stream's life.
    A reused id older than MAX_IDS cannot be confused with a pending one (64 are in flight at most).
    """

    MAX_IDS = 50_000
    MAX_ID = 256

    def __init__(self) -> None:
        self._seen: dict[bytes, None] = {}

    def check(self, id_: str) -> None:
        if not id_:
            raise InvalidArgument("id is required: each event's answer echoes it", field="id")
        if len(id_) > self.MAX_ID:
            raise InvalidArgument(f"id is {len(id_)} characters, over {self.MAX_ID}", field="id")
        digest = hashlib.blake2b(id_.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        if digest in self._seen:
            raise InvalidArgument(
                f"id {id_[:64]!r} was already used on this stream: each event needs its own", field="id"
            )
        self._seen[digest] = None
        if len(self._seen) > self.MAX_IDS:
            del self._seen[next(iter(self._seen))]


def echoed_id(id_: str) -> str:
    """The id an answer echoes: a refused, over-long id is cut (its answer must not cost its size again)."""
    return id_[: StreamIds.MAX_ID]
