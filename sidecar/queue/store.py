"""The queue's records and the one interface its backends (SQLite, PostgreSQL) implement.

Every method is one atomic operation in the store, so no read-then-write
crosses the seam (a claim that checks "is this the person's head?" and takes
the lease does both in one transaction). Times are Unix seconds on the
store's clock: SQLite's is this host's, PostgreSQL's is the server's, so
leases mean the same on every sidecar of a fleet.

States: queued -> delivering -> delivered | retrying | failed; retrying ->
delivering again; failed -> queued by an operator's retry, which starts the
event afresh (attempts 0, its give-up clock from now) and keeps accepted_at.
Every change but acceptance gets its own cursor in an append-only change log
(an event failed at acceptance is one). ``active`` is true until delivered or
failed: the person's active event with the lowest id is the only one that may
be delivered (order per person). One exception: while that head is a Track
waiting for its contact (retrying with CONTACT_NOT_FOUND), the person's first
queued Identify is the one instead, since it creates what the Track waits for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import ResourceExhausted, StoreError

# The store could not do what was asked (unreachable, locked past its timeout): the state's own error,
# UNAVAILABLE with reason STORE_UNAVAILABLE and RetryInfo, raised by the backends at the seam.
QueueError = StoreError

QUEUED, DELIVERING, RETRYING, DELIVERED, FAILED = "queued", "delivering", "retrying", "delivered", "failed"
STATES = (QUEUED, DELIVERING, RETRYING, DELIVERED, FAILED)
UNKNOWN_REASON = "TRENGO_OUTCOME_UNKNOWN"


def unknown_error(message: str) -> dict[str, Any]:
    """The DeliverError (protobuf JSON) of a write whose outcome nobody can know: UNAVAILABLE, no retry."""
    return {"code": 14, "message": message, "reason": UNKNOWN_REASON}


QUEUE_FULL_RETRY_SECONDS = 10.0  # RetryInfo / Retry-After of QUEUE_FULL: the worker drains meanwhile


@dataclass(frozen=True, slots=True)
class Limits:
    """How much the store holds for delivery (queueMaxDepth, queueMaxBytes): events not yet delivered
    (queued, delivering, retrying, and failed ones waiting for an operator) and their stored bytes.
    Delivered events are bounded by retention instead (queueRetentionSeconds)."""

    max_depth: int = 1_000_000
    max_bytes: int = 1 << 30


class QueueFull(ResourceExhausted):
    """Accepting these events would take the queue past queueMaxDepth or queueMaxBytes; nothing was
    written. RESOURCE_EXHAUSTED with reason QUEUE_FULL and RetryInfo (HTTP ingest: 503, Retry-After)."""

    reason = "QUEUE_FULL"

    def __init__(self, held: int, held_bytes: int, adding: int, adding_bytes: int, limits: Limits) -> None:
        if held + adding > limits.max_depth:
            what = f"{held} events held, {adding} more would pass queueMaxDepth {limits.max_depth}"
        else:
            what = f"{held_bytes} bytes held, {adding_bytes} more would pass queueMaxBytes {limits.max_bytes}"
        super().__init__(
            f"the queue is full ({what}); nothing was accepted, retry once it drains",
            retry_after=QUEUE_FULL_RETRY_SECONDS,
        )


def check_room(held: int, held_bytes: int, adding: int, adding_bytes: int, limits: Limits) -> None:
    """Raise QueueFull if ``adding`` events of ``adding_bytes`` do not fit beside what is held."""
    if adding and (held + adding > limits.max_depth or held_bytes + adding_bytes > limits.max_bytes):
        raise QueueFull(held, held_bytes, adding, adding_bytes, limits)


def event_json(event: dict[str, Any]) -> str:
    """The event as both backends store it; its UTF-8 length is what queueMaxBytes counts."""
    return json.dumps(event, separators=(",", ":"))


class RetryRefused(Exception):
    """An operator's retry named an event that is unknown, or is not failed; nothing was queued."""

    def __init__(self, message_id: str, state: str | None) -> None:
        what = "no such message_id" if state is None else f"it is {state}, not failed"
        super().__init__(f"cannot retry {message_id!r}: {what}")
        self.message_id = message_id
        self.state = state


@dataclass(frozen=True, slots=True)
class NewJob:
    """An accepted event, as Enqueue stores it."""

    message_id: str
    person: str
    event: dict[str, Any]
    trace: dict[str, str] | None = None  # the Enqueue's trace context (traceparent), when it was traced
    # Refused when accepted (the HTTP ingest's per-event validation): stored failed with this DeliverError
    # (protobuf JSON), never delivered, so GetDelivery and ListDeliveries show it.
    error: dict[str, Any] | None = None


@dataclass(slots=True)
class Job:
    id: int
    message_id: str
    person: str
    event: dict[str, Any]
    state: str
    attempts: int
    accepted_at: float
    next_attempt_at: float
    write_sent: bool = False  # this attempt may have sent a write (set before it goes out)
    forced: bool = False  # queued again by an operator: the stored idempotency result is stale
    result: dict[str, Any] | None = None  # a DeliveryResult, as protobuf JSON
    error: dict[str, Any] | None = None  # a DeliverError, as protobuf JSON
    seq: int = 0  # the cursor of its last change, for WatchDeliveries
    retry_from: float = 0.0  # when the retry schedule's clock started: accepted, or retried by an operator
    trace: dict[str, str] | None = None  # the Enqueue's trace context, for the delivery span's link


@dataclass(frozen=True, slots=True)
class Change:
    """One change of an event's state, as WatchDeliveries sends it: the event's status as of that change.

    Kept in an append-only log, one entry per change (claimed, retrying, delivered, failed, given back,
    queued again by a retry), so a watcher resuming from any cursor sees every transition in order. It
    carries no event body: the watch never reads one.
    """

    seq: int  # the change's cursor
    message_id: str
    state: str
    attempts: int
    accepted_at: float
    next_attempt_at: float
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Listed:
    """An event as ListDeliveries shows it: its status without its body (the listing never reads the
    event column, so a page of 1 MB events costs no more memory than one of small ones)."""

    id: int  # the page token
    message_id: str
    state: str
    attempts: int
    accepted_at: float
    next_attempt_at: float
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an attempt ended, for ``finish``."""

    state: str  # delivered, retrying or failed
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    next_attempt_at: float = 0.0


@dataclass(slots=True)
class Stats:
    depth: dict[str, int] = field(default_factory=dict)  # state -> events
    oldest_queued_at: float | None = None  # accepted_at of the oldest event not yet delivered or failed
    held: int = 0  # events not yet delivered (failed included), as queueMaxDepth counts them
    held_bytes: int = 0  # their stored bytes, as queueMaxBytes counts them


class QueueStore(Protocol):
    limits: Limits

    async def open(self) -> None:
        """Create or migrate the tables (safe when many sidecars start at once)."""

    async def close(self) -> None: ...

    async def enqueue(self, job: NewJob) -> bool:
        """Store the job durably (committed when this returns); False if its message_id was already
        accepted, in which case nothing changed. Raises QueueFull, writing nothing, past the limits."""

    async def enqueue_many(self, jobs: list[NewJob]) -> list[bool]:
        """Store all the jobs in one transaction (all or none, committed when this returns); for each,
        False if its message_id was already accepted (or came earlier in ``jobs``). A job with an
        ``error`` is stored failed, inactive: it holds no person's turn. Raises QueueFull, writing
        nothing, if the new ones would take the queue past its limits."""

    async def claim(self, owner: str, lease_seconds: float, limit: int) -> list[Job]:
        """Take up to ``limit`` due jobs, each its person's head (or, while the head is a Track waiting
        for its contact, the person's first Identify) with nothing of that person in flight, leased to
        ``owner``. First settles expired leases: a job whose write may have been sent
        becomes failed (TRENGO_OUTCOME_UNKNOWN); any other goes back to its earlier state."""

    async def heartbeat(self, owner: str, ids: list[int], lease_seconds: float) -> None:
        """Extend the leases ``owner`` still holds on these jobs."""

    async def mark_sending(self, owner: str, job_id: int) -> bool:
        """Record, durably, that a write may now be sent; False if the lease was lost (do not send)."""

    async def finish(self, owner: str, job_id: int, outcome: Outcome) -> bool:
        """End the attempt (attempts + 1); False if ``owner`` no longer held the lease."""

    async def release(self, owner: str, job_id: int) -> None:
        """Give the job back unattempted (shutdown before any write was sent)."""

    async def get(self, message_id: str) -> Job | None: ...

    async def by_state(self, state: str, after_id: int, limit: int) -> list[Listed]:
        """Events in ``state`` with id > after_id, oldest first, without their bodies (never read)."""

    async def changes(self, after_seq: int, limit: int) -> list[Change]:
        """The changes with a cursor > after_seq, in cursor order: every claim, outcome, give-back and
        operator retry (acceptance is not one). Reads the change log only."""

    async def retry_failed(self, message_ids: list[str] | None) -> int:
        """Queue failed jobs again (all of them for None), their retry schedule started afresh (attempts
        0, retry_from now); raises RetryRefused, changing nothing, if a named one is unknown or not
        failed. Returns how many were queued."""

    async def prune(self, delivered_before: float) -> int:
        """Delete delivered jobs finished before that time, and the changes logged before it (but each
        remaining job's last one); returns how many jobs."""

    async def prune_failed(self, failed_before: float) -> int:
        """Delete failed jobs that failed before that time (queueFailedRetentionSeconds), with every
        change logged for them; returns how many."""

    async def stats(self) -> Stats: ...
