"""Once per message_id: a repeat within idempotencyWindowSeconds gets the first result back.

The results live in the state store (sidecar/state/), as data: an Outcome's fields, or a stored
error such as TRENGO_OUTCOME_UNKNOWN, so they can be shared by every sidecar on the store and
survive a restart. Concurrent calls with one message_id share one delivery: in this process
through a SingleFlight, across sidecars through the store's flight lock, under which the store is
read again before anything is sent.

On a durable store a result must also outlive a sidecar killed (SIGKILL, OOM) while a ticket write
awaited Trengo's answer: there is no answer to store then. So, as the queue worker does, a mark is
stored just before such a write goes out (``_Sending``, through trengo.ATTEMPT_HOOK). A later call
that finds the mark and no result answers TRENGO_OUTCOME_UNKNOWN instead of writing again; a
failure known to have written nothing (a 4xx, an answered 5xx) takes the mark away again.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from ..deadline import Deadline
from ..errors import SidecarError, StoreError
from ..plan.followup_plan import Assignment, FollowUpFailure
from ..state import State, StoredResult
from ..state.waiting import busy, holding, patiently
from ..trengo_api.answers import CutOff, OutcomeUnknown
from ..trengo_api.client import ATTEMPT_HOOK
from .cache import FlightTimeout, SingleFlight
from .outcome import Outcome

log = logging.getLogger("sidecar")
# The errors a result may hold, by name, so a stored one comes back as the same class.
_NOT_STORED = ("calls", "plan")  # a replay answers with no calls; the plan holds compiled templates
_ERRORS: dict[str, type[SidecarError]] = {"OutcomeUnknown": OutcomeUnknown, "CutOff": CutOff}


class Idempotency:
    def __init__(
        self, state: State, *, window_seconds: float, scope: str = "", dedup: bool = True
    ) -> None:
        self.state = state
        self.dedup = dedup  # enableDedup: a contact create is then found again by a search
        self.window = window_seconds
        self.scope = scope  # one Trengo token's results are not another's
        self._flights: SingleFlight[str] = SingleFlight()
        self.replays = 0  # results given back for a repeated message_id, for metrics
        self.hits = 0
        self.misses = 0

    def _key(self, message_id: str) -> str:
        return f"{self.scope}:message:{message_id}"

    def _mark_key(self, message_id: str) -> str:
        return f"{self.scope}:sending:{message_id}"

    async def deliver(
        self, message_id: str, deadline: Deadline, work: Callable[[], Awaitable[Outcome]]
    ) -> Outcome:
        """``work()`` once for ``message_id``; a repeat gets the stored result (replayed) or error."""
        try:
            (value, fresh), shared = await self._flights.run(
                message_id, lambda: self._once(message_id, deadline, work), deadline.remaining()
            )
        except FlightTimeout:
            raise busy() from None
        if fresh and not shared:
            return value  # type: ignore[return-value]
        self.replays += 1
        if isinstance(value, SidecarError):
            raise value.with_traceback(None)  # not a growing traceback on every replay
        return dataclasses.replace(value, calls=[], replayed=True)

    async def _once(
        self, message_id: str, deadline: Deadline, work: Callable[[], Awaitable[Outcome]]
    ) -> tuple[Outcome | SidecarError, bool]:
        """(the result, whether this call made it): under the fleet-wide lock, the store read first."""
        key = self._key(message_id)
        async with holding(self.state, key, deadline, outer=True):  # a person's lock may be taken inside
            stored = await patiently(deadline, lambda: self.state.get_result(key))
            if stored is None and self.state.shared:
                stored = await self._killed_mid_write(message_id, deadline)
            if stored is not None:
                self.hits += 1
                return decode(stored), False
            self.misses += 1
            sending = self._watch_writes(message_id, deadline)
            try:
                outcome = await work()
            except OutcomeUnknown as exc:
                # Sending again could write twice: the same message_id gets this answer until the window ends.
                await self._put(key, encode_error(exc), deadline)
                raise
            except SidecarError:
                if sending is not None and sending.marked:
                    await self._unmark(message_id, deadline)  # known not written: a retry may try again
                raise
            await self._put(key, encode_outcome(outcome), deadline)
            return outcome, True

    async def _killed_mid_write(self, message_id: str, deadline: Deadline) -> StoredResult | None:
        """A mark with no result: the sidecar that made it died with the write in flight. That is now
        the result (stored as one), so it is answered like any lost answer until the window ends."""
        mark = await patiently(deadline, lambda: self.state.get_result(self._mark_key(message_id)))
        if mark is not None:
            await self._put(self._key(message_id), mark, deadline)
        return mark

    def _watch_writes(self, message_id: str, deadline: Deadline) -> _Sending | None:
        """Mark writes of this task's delivery before they go (durable stores only: a mark in memory
        dies with the process it is meant to outlive)."""
        if not self.state.shared:
            return None
        sending = _Sending(self, message_id, deadline, ATTEMPT_HOOK.get())
        ATTEMPT_HOOK.set(sending)  # this flight's own task: its context is a copy
        return sending

    async def _unmark(self, message_id: str, deadline: Deadline) -> None:
        try:
            await patiently(deadline, lambda: self.state.discard_result(self._mark_key(message_id)))
        except StoreError as exc:  # the safe side: a retry hears TRENGO_OUTCOME_UNKNOWN, not a second ticket
            log.warning("a message_id's write mark could not be removed: %s", exc.message)

    async def _put(self, key: str, result: StoredResult, deadline: Deadline) -> None:
        try:
            await patiently(deadline, lambda: self.state.put_result(key, result, self.window))
        except StoreError as exc:
            # Trengo has done the work: the caller hears that; only a repeat could now write twice.
            log.warning("the result of a message_id could not be stored: %s", exc.message)

    async def stored(self, message_id: str) -> Outcome | SidecarError | None:
        """The result kept for ``message_id`` (None: none), for tests and tools."""
        stored = await self.state.get_result(self._key(message_id))
        return decode(stored) if stored is not None else None

    async def remember_error(self, message_id: str, error: SidecarError, deadline: Deadline) -> None:
        """Keep ``error`` as the result of ``message_id`` (an outcome nobody can know any more)."""
        await self._put(self._key(message_id), encode_error(error), deadline)

    def entries(self) -> int:
        """Results held in this process (memory:); 0 when they live in a shared store."""
        held = getattr(self.state, "results", None)
        return len(held) if held is not None else 0

    def cancel_all(self) -> None:
        self._flights.cancel_all()


class _Sending:
    """The ATTEMPT_HOOK of one message_id's delivery: stores the mark once, before the first write
    that cannot be resent, after the hook it wraps (the queue worker's) has let it go."""

    def __init__(self, owner: Idempotency, message_id: str, deadline: Deadline, inner: Any) -> None:
        self.owner, self.message_id, self.deadline, self.inner = owner, message_id, deadline, inner
        self.marked = False

    async def sending(self, call: Any) -> None:
        if self.inner is not None:
            await self.inner.sending(call)
        dedup = self.owner.dedup
        if self.marked or (dedup and call.path.endswith("/contacts")):
            return  # a deduplicated create is checkable: a retry searches first and finds the contact
        error = OutcomeUnknown(
            f"a sidecar stopped (killed or crashed) while {call.method} {call.path} for this message_id "
            "awaited Trengo's answer; the write may or may not have happened"
        )
        state, key = self.owner.state, self.owner._mark_key(self.message_id)
        # A store that fails here raises STORE_UNAVAILABLE and the write is not sent: no mark, no write.
        await patiently(self.deadline, lambda: state.put_result(key, encode_error(error), self.owner.window))
        self.marked = True

    def answered(self, status: int) -> None:
        if self.inner is not None:
            self.inner.answered(status)


def encode_outcome(outcome: Outcome) -> StoredResult:
    stored = [f.name for f in dataclasses.fields(outcome) if f.name not in _NOT_STORED]
    fields = {name: getattr(outcome, name) for name in stored}
    fields["failed_followups"] = [dataclasses.asdict(f) for f in outcome.failed_followups]  # as data
    fields["assignment"] = dataclasses.asdict(outcome.assignment) if outcome.assignment else None
    return StoredResult(outcome=fields)


def encode_error(error: SidecarError) -> StoredResult:
    return StoredResult(error={
        "type": type(error).__name__, "code": error.code.name, "reason": error.reason,
        "message": error.message, "retry_after": error.retry_after,
    })


def decode(stored: StoredResult) -> Outcome | SidecarError:
    if stored.outcome is not None:
        known = {f.name for f in dataclasses.fields(Outcome)}
        outcome = Outcome(**{k: v for k, v in stored.outcome.items() if k in known}, calls=[])
        outcome.failed_followups = [FollowUpFailure(**f) for f in stored.outcome.get("failed_followups", [])]
        assignment = stored.outcome.get("assignment")
        outcome.assignment = Assignment(**assignment) if assignment else None
        return outcome
    data: dict[str, Any] = stored.error or {}
    cls = _ERRORS.get(str(data.get("type")), SidecarError)
    error = cls(str(data.get("message", "")), reason=data.get("reason"), retry_after=data.get("retry_after"))
    if cls is SidecarError:
        error.code = grpc.StatusCode[str(data.get("code", "INTERNAL"))]
    return error

