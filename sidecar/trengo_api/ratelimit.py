"""A client-side limit on Trengo calls per token, so calls wait for a slot instead of collecting 429s.

Trengo counts requests per token over a minute. A token bucket would let a
full burst through and then keep refilling inside the same minute, which a
sliding window on Trengo's side can count as over the limit; so the slot store
keeps the send times of the last N calls (an exact sliding log) and lets a call
go when the oldest of them is a window old. This class is the policy over that
store: waiters queue in FIFO order behind one asyncio.Lock (no threads), the
queue is bounded (past it, a call fails at once), and no wait outlasts the
caller's deadline. The store (sidecar/state/) may be shared by many sidecars on
one token: then the cap holds for all of them together.

The rate limit never fails open: while the store cannot be reached, a call waits
for it within its deadline, then fails STORE_UNAVAILABLE; it is not sent.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from ..deadline import Deadline
from ..errors import ResourceExhausted, StoreError
from ..state.base import RateSlots, SlotDecision

WINDOW_SECONDS = 60.0
# Trengo counts arrivals; a slot is logged when it is taken, before the call leaves. A call delayed on
# its way (a busy event loop, a slow connection) more than the one a window after it would land inside
# Trengo's window: on a loaded machine one call in 130 did, with a 0.25 s margin. So when a call's
# answer comes, its log entry moves to that time (answered()): an answer comes after the arrival, so
# the log then holds no time earlier than Trengo's, whatever the delay. This margin (0.5 s of a minute;
# 5% of a short test window) is left only for calls still unanswered when the next one asks.
MARGIN_SHARE, MARGIN_MAX_SECONDS = 0.05, 0.5
STORE_RETRY_SECONDS = 0.25  # between tries of a store that failed, within the caller's deadline
# True in the tasks of the queue worker: their calls take a slot only when no synchronous call is
# waiting for one, so a caller that waits on its answer always goes first.
BACKGROUND: contextvars.ContextVar[bool] = contextvars.ContextVar("rate_limit_background", default=False)
BACKGROUND_POLL_SECONDS = 0.05  # how often a background call looks again while synchronous ones wait


@dataclass(frozen=True, slots=True)
class Slot:
    """A slot taken: how long the call waited for it, and its time in the log (None: no limit)."""

    waited: float = 0.0
    at: float | None = None


class RateLimiter:
    def __init__(
        self,
        per_minute: int,
        max_waiting: int,
        slots: RateSlots | None = None,
        *,
        key: str = "token",
        window: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from ..state.memory import MemoryState  # the default: this process's own log, as before

        self.per_minute = per_minute
        self.max_waiting = max_waiting
        self.slots: RateSlots = slots if slots is not None else MemoryState(clock=clock)
        self.key = key  # a hash of the token, never the token
        self._window = window
        self._clock = clock
        self._lock = asyncio.Lock()
        self._held_until = 0.0  # this process's own knowledge of a 429's hold (clock time)
        self._wait_hint = 0.0  # the store's last "wait this long", for wait_now()
        self._wait_hint_at = 0.0
        self._pending: set[asyncio.Task[None]] = set()  # holds and answers on their way to the store
        self.waiting = 0  # calls queued for a slot, for the queue-depth gauge
        self.waited_seconds = 0.0  # total time spent waiting, for metrics
        self.shared_waits = 0  # times the store (the fleet's log, or a 429's hold) made a call wait
        self.store_errors = 0

    @property
    def window(self) -> float:
        return self._window if self._window is not None else WINDOW_SECONDS

    async def acquire(self, deadline: Deadline) -> float:
        """Wait for a slot; returns the seconds waited (see take())."""
        return (await self.take(deadline)).waited

    async def take(self, deadline: Deadline) -> Slot:
        """Wait for a slot. Raises RESOURCE_EXHAUSTED past the deadline, STORE_UNAVAILABLE when the
        store could not be reached before it. Give the slot to answered() once the call is over."""
        if self.per_minute <= 0:
            return Slot()
        if BACKGROUND.get():
            return await self._acquire_background(deadline)
        if self.waiting >= self.max_waiting:
            raise ResourceExhausted(
                f"{self.waiting} calls are already waiting for Trengo's rate limit "
                f"({self.per_minute}/min); try again later",
                retry_after=self.window / self.per_minute * self.waiting,
            )
        started = time.monotonic()
        self.waiting += 1
        failure: list[StoreError] = []
        try:
            async with asyncio.timeout(deadline.remaining()):
                async with self._lock:
                    at = await self._wait_for_slot(deadline, failure)
        except TimeoutError:
            if failure:
                raise failure[-1] from None
            raise self._exhausted(held=self._held_until > self._clock()) from None
        finally:
            self.waiting -= 1
        waited = time.monotonic() - started
        self.waited_seconds += waited
        return Slot(waited, at)

    async def _acquire_background(self, deadline: Deadline) -> Slot:
        """A slot for a queued delivery, taken only while no synchronous call waits (``waiting`` counts
        those). It polls rather than queueing on the lock, so it never stands in front of one."""
        started = time.monotonic()
        failure: list[StoreError] = []
        try:
            async with asyncio.timeout(deadline.remaining()):
                while True:
                    tried = SlotDecision(BACKGROUND_POLL_SECONDS)
                    if self.waiting == 0 and not self._lock.locked():
                        async with self._lock:
                            tried = await self._try_slot(failure) if self.waiting == 0 else tried
                        if tried.wait <= 0:
                            break
                    await asyncio.sleep(max(min(tried.wait, 1.0), BACKGROUND_POLL_SECONDS))
        except TimeoutError:
            if failure:
                raise failure[-1] from None
            raise self._exhausted(held=self._held_until > self._clock()) from None
        waited = time.monotonic() - started
        self.waited_seconds += waited
        return Slot(waited, tried.at)

    async def _try_slot(self, failure: list[StoreError]) -> SlotDecision:
        """One try: wait 0 when a slot was taken, else how long until one may be free."""
        held = self._held_until - self._clock()
        if held > 0:
            return SlotDecision(held, held=True)
        try:
            decision = await self.slots.acquire_slot(self.key, self.per_minute, self._logged_window())
        except StoreError as exc:
            self.store_errors += 1
            failure.append(exc)
            return SlotDecision(STORE_RETRY_SECONDS)
        failure.clear()
        self._wait_hint, self._wait_hint_at = decision.wait, self._clock()
        if decision.wait > 0:
            self.shared_waits += 1
        return decision

    async def _wait_for_slot(self, deadline: Deadline, failure: list[StoreError]) -> float | None:
        """Until a slot is taken: its time in the log."""
        # A loop, not one sleep: a 429 that arrives meanwhile (penalise) moves the slot further away,
        # and on a shared store another sidecar may take the slot this one waited for.
        while True:
            held = self._held_until - self._clock()
            if held > 0:
                delay, by_trengo = held, True
            else:
                try:
                    decision = await self.slots.acquire_slot(self.key, self.per_minute, self._logged_window())
                except StoreError as exc:
                    self.store_errors += 1
                    failure.append(exc)
                    if deadline.remaining() <= STORE_RETRY_SECONDS:
                        raise
                    await asyncio.sleep(STORE_RETRY_SECONDS)
                    continue
                failure.clear()
                self._wait_hint, self._wait_hint_at = decision.wait, self._clock()
                if decision.wait <= 0:
                    return decision.at
                delay, by_trengo = decision.wait, decision.held
                self.shared_waits += 1
            if delay > deadline.remaining():
                raise self._exhausted(delay, held=by_trengo)
            await asyncio.sleep(delay)

    def _logged_window(self) -> float:
        window = self.window
        return window + min(MARGIN_MAX_SECONDS, window * MARGIN_SHARE)

    def wait_now(self) -> float:
        """Seconds a call asking now would wait for a slot, as far as this sidecar knows (0: free)."""
        if self.per_minute <= 0:
            return 0.0
        now = self._clock()
        hinted = self._wait_hint - (now - self._wait_hint_at)
        return max(0.0, self._held_until - now, hinted)

    def _exhausted(self, retry_after: float | None = None, *, held: bool = False) -> ResourceExhausted:
        if held:
            # Trengo's own 429 held the token (every sidecar on it), not this sidecar's own count.
            return ResourceExhausted(
                "Trengo answered 429 (its rate limit for this API token) and its Retry-After holds every "
                "call on the token past this call's deadline",
                retry_after=retry_after if retry_after is not None else self._held_until - self._clock(),
            )
        return ResourceExhausted(
            f"no Trengo rate-limit slot ({self.per_minute}/min) before the deadline",
            retry_after=retry_after if retry_after is not None else self.window / max(self.per_minute, 1),
        )

    def penalise(self, seconds: float) -> None:
        """Trengo said 429 anyway (another client shares the token): hold every slot for that long,
        here at once and, through the store, for every sidecar on the token."""
        self._held_until = max(self._held_until, self._clock() + seconds)
        self._in_background(self._hold(seconds))

    def answered(self, slot: Slot) -> None:
        """The call that took ``slot`` is over (answered, or given up): its log entry moves to now,
        which is no earlier than its arrival at Trengo (see MARGIN_SHARE). In the background: the
        answer goes back to the caller without waiting for the store."""
        if slot.at is not None:
            self._in_background(self._answered(slot.at))

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _answered(self, at: float) -> None:
        try:
            # Less the margin: an answered call's time is already no earlier than its arrival, so its
            # entry frees the slot a window after the answer, not a window and a margin.
            margin = self._logged_window() - self.window
            await self.slots.slot_answered(self.key, at, margin)
        except StoreError:
            self.store_errors += 1  # the entry keeps its send time: the margin still covers most delays

    async def _hold(self, seconds: float) -> None:
        try:
            await self.slots.hold_slots(self.key, seconds)
        except StoreError:
            self.store_errors += 1  # this sidecar still holds itself; the others learn from Trengo
