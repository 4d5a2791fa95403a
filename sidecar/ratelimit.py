"""A client-side limit on Trengo calls per token, so calls wait for a slot instead of collecting 429s.

Trengo counts requests per token over a minute. A token bucket would let a
full burst through and then keep refilling inside the same minute, which a
sliding window on Trengo's side can count as over the limit; so this keeps
the send times of the last N calls and lets a call go when the oldest of
them is a minute old. Waiters queue in FIFO order behind one asyncio.Lock
(no threads), and the queue is bounded: past it, a call fails at once.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import deque

from .deadline import Deadline
from .errors import ResourceExhausted

WINDOW_SECONDS = 60.0
# True in the tasks of the queue worker: their calls take a slot only when no synchronous call is
# waiting for one, so a caller that waits on its answer always goes first.
BACKGROUND: contextvars.ContextVar[bool] = contextvars.ContextVar("rate_limit_background", default=False)
BACKGROUND_POLL_SECONDS = 0.05  # how often a background call looks again while synchronous ones wait


class RateLimiter:
    def __init__(self, per_minute: int, max_waiting: int) -> None:
        self.per_minute = per_minute
        self.max_waiting = max_waiting
        self._sent: deque[float] = deque(maxlen=max(per_minute, 1))
        self._lock = asyncio.Lock()
        self.waiting = 0  # calls queued for a slot, for the queue-depth gauge
        self.waited_seconds = 0.0  # total time spent waiting, for metrics

    async def acquire(self, deadline: Deadline) -> float:
        """Wait for a slot; returns the seconds waited. Raises RESOURCE_EXHAUSTED past the deadline."""
        if self.per_minute <= 0:
            return 0.0
        if BACKGROUND.get():
            return await self._acquire_background(deadline)
        if self.waiting >= self.max_waiting:
            raise ResourceExhausted(
                f"{self.waiting} calls are already waiting for Trengo's rate limit "
                f"({self.per_minute}/min); try again later",
                retry_after=WINDOW_SECONDS / self.per_minute * self.waiting,
            )
        started = time.monotonic()
        self.waiting += 1
        try:
            async with asyncio.timeout(deadline.remaining()):
                async with self._lock:
                    await self._wait_for_slot(deadline)
        except TimeoutError:
            raise self._exhausted() from None
        finally:
            self.waiting -= 1
        waited = time.monotonic() - started
        self.waited_seconds += waited
        return waited

    async def _acquire_background(self, deadline: Deadline) -> float:
        """A slot for a queued delivery: only while no synchronous call waits (``waiting`` counts those).

        It polls rather than queueing on the lock, so it never stands in front of a synchronous call.
        """
        started = time.monotonic()
        try:
            async with asyncio.timeout(deadline.remaining()):
                while True:
                    delay = self.wait_now()
                    if self.waiting == 0 and delay <= 0 and not self._lock.locked():
                        async with self._lock:
                            if self.waiting == 0 and self.wait_now() <= 0:
                                self._sent.append(time.monotonic())
                                break
                    await asyncio.sleep(max(min(delay, 1.0), BACKGROUND_POLL_SECONDS))
        except TimeoutError:
            raise self._exhausted() from None
        waited = time.monotonic() - started
        self.waited_seconds += waited
        return waited

    async def _wait_for_slot(self, deadline: Deadline) -> None:
        # A loop, not one sleep: a 429 that arrives meanwhile (penalise) moves the slot further away.
        while len(self._sent) == self._sent.maxlen:
            delay = self._sent[0] + WINDOW_SECONDS - time.monotonic()
            if delay <= 0:
                break
            if delay > deadline.remaining():
                raise self._exhausted(delay)
            await asyncio.sleep(delay)
        self._sent.append(time.monotonic())

    def wait_now(self) -> float:
        """Seconds a call asking now would wait for a slot (0 when one is free)."""
        if self.per_minute <= 0 or len(self._sent) < (self._sent.maxlen or 0):
            return 0.0
        return max(0.0, self._sent[0] + WINDOW_SECONDS - time.monotonic())

    def _exhausted(self, retry_after: float | None = None) -> ResourceExhausted:
        return ResourceExhausted(
            f"no Trengo rate-limit slot ({self.per_minute}/min) before the deadline",
            retry_after=retry_after if retry_after is not None else WINDOW_SECONDS / max(self.per_minute, 1),
        )

    def penalise(self, seconds: float) -> None:
        """Trengo said 429 anyway (another client shares the token): hold every slot for that long."""
        until = time.monotonic() + seconds - WINDOW_SECONDS
        for _ in range(len(self._sent)):
            self._sent.append(max(until, self._sent.popleft()))
        while len(self._sent) < (self._sent.maxlen or 0):
            self._sent.appendleft(until)
