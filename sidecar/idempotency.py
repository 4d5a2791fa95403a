"""Once per message_id: a repeat within idempotencyWindowSeconds gets the first result back.

The results live in the state store (sidecar/state/), as data: an Outcome's fields, or a stored
error such as TRENGO_OUTCOME_UNKNOWN, so they can be shared by every sidecar on the store and
survive a restart. Concurrent calls with one message_id share one delivery: in this process
through a SingleFlight, across sidecars through the store's flight lock, under which the store is
read again before anything is sent.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from .cache import FlightTimeout, SingleFlight
from .deadline import Deadline
from .errors import SidecarError, StoreError
from .followup_plan import FollowUpFailure
from .state import State, StoredResult
from .state.waiting import busy, holding, patiently
from .trengo import CutOff, OutcomeUnknown

if TYPE_CHECKING:
    from .delivery import Outcome

log = logging.getLogger("sidecar")
# The errors a result may hold, by name, so a stored one comes back as the same class.
_ERRORS: dict[str, type[SidecarError]] = {"OutcomeUnknown": OutcomeUnknown, "CutOff": CutOff}


class Idempotency:
    def __init__(self, state: State, *, window_seconds: float, scope: str = "") -> None:
        self.state = state
        self.window = window_seconds
        self.scope = scope  # one Trengo token's results are not another's
        self._flights: SingleFlight[str] = SingleFlight()
        self.replays = 0  # results given back for a repeated message_id, for metrics
        self.hits = 0
        self.misses = 0

    def _key(self, message_id: str) -> str:
        return f"{self.scope}:message:{message_id}"

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
            if stored is not None:
                self.hits += 1
                return decode(stored), False
            self.misses += 1
            try:
                outcome = await work()
            except OutcomeUnknown as exc:
                # Sending again could write twice: the same message_id gets this answer until the window ends.
                await self._put(key, encode_error(exc), deadline)
                raise
            await self._put(key, encode_outcome(outcome), deadline)
            return outcome, True

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


def encode_outcome(outcome: Outcome) -> StoredResult:
    fields = {f.name: getattr(outcome, f.name) for f in dataclasses.fields(outcome) if f.name != "calls"}
    fields["failed_followups"] = [dataclasses.asdict(f) for f in outcome.failed_followups]  # as data
    return StoredResult(outcome=fields)


def encode_error(error: SidecarError) -> StoredResult:
    return StoredResult(error={
        "type": type(error).__name__, "code": error.code.name, "reason": error.reason,
        "message": error.message, "retry_after": error.retry_after,
    })


def decode(stored: StoredResult) -> Outcome | SidecarError:
    from .delivery import Outcome  # delivery imports this module

    if stored.outcome is not None:
        known = {f.name for f in dataclasses.fields(Outcome)}
        outcome = Outcome(**{k: v for k, v in stored.outcome.items() if k in known}, calls=[])
        outcome.failed_followups = [FollowUpFailure(**f) for f in stored.outcome.get("failed_followups", [])]
        return outcome
    data: dict[str, Any] = stored.error or {}
    cls = _ERRORS.get(str(data.get("type")), SidecarError)
    error = cls(str(data.get("message", "")), reason=data.get("reason"), retry_after=data.get("retry_after"))
    if cls is SidecarError:
        error.code = grpc.StatusCode[str(data.get("code", "INTERNAL"))]
    return error

