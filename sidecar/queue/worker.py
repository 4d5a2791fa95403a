"""The queue worker: claims due events, delivers them with the same Delivery as the RPCs, settles them.

Shaped after procrastinate's worker: concurrency bounded (``queueConcurrency``
deliveries in flight), a stop event, woken by an Enqueue in this process or
by a poll, side tasks (lease heartbeat, retention and stats) watched, and a
graceful stop. Order per person is the store's business (a claim only takes
a person's head); this module decides what an attempt's failure means.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from opentelemetry.trace import Status, StatusCode

from ..deadline import Deadline
from ..delivery.delivery import Delivery
from ..delivery.outcome import deliver_error, to_result
from ..errors import InvalidArgument, ResourceExhausted, SidecarError, Unavailable
from ..plan.events import Event
from ..trengo_api.answers import OutcomeUnknown
from ..trengo_api.client import ATTEMPT_HOOK
from ..trengo_api.ratelimit import BACKGROUND
from .policy import KEEP_RETRYING, OUTCOME_UNKNOWN, REJECTED, TRANSIENT, WAITING_FOR_CONTACT, QueuePolicy
from .store import DELIVERED, FAILED, RETRYING, Job, Outcome, QueueError, QueueStore, Stats, unknown_error

log = logging.getLogger("sidecar.queue")
KEEP_RETRYING_STATUS = frozenset({408, 429})
CONTACT_NOT_FOUND = "CONTACT_NOT_FOUND"
STORE_ERROR_PAUSE_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    concurrency: int = 4
    lease_seconds: float = 60.0
    poll_seconds: float = 1.0
    attempt_seconds: float = 60.0  # one attempt's deadline: rate-limit waits and in-call retries included
    retention_seconds: float = 7 * 86400.0
    failed_retention_seconds: float = 7 * 86400.0
    maintenance_seconds: float = 60.0  # how often events past retention are pruned (at most)


class LeaseLost(Unavailable):
    """The store no longer gives this sidecar the event (its lease ran out): the write is not sent."""

    reason = "QUEUE_LEASE_LOST"


class _Attempt:
    """The ATTEMPT_HOOK of one delivery: records a write durably before it goes out."""

    def __init__(self, store: QueueStore, owner: str, job: Job, dedup: bool) -> None:
        self.store, self.owner, self.job = store, owner, job
        self.dedup = dedup
        self.marked = False
        self.last_status = -1

    async def sending(self, call: Any) -> None:
        if self.marked or (self.dedup and call.path.endswith("/contacts")):
            # A contact create is checkable: delivered again, the identify searches first and finds the
            # contact if the lost create happened (Delivery._create does the same for a lost answer).
            return
        try:
            held = await self.store.mark_sending(self.owner, self.job.id)
        except QueueError as exc:
            raise Unavailable(
                f"the queue store failed before a write: {exc}", reason="STORE_UNAVAILABLE"
            ) from exc
        if not held:
            raise LeaseLost("this sidecar's lease on the event ran out; another sidecar will deliver it")
        self.marked = True

    def answered(self, status: int) -> None:
        self.last_status = status


def _describe(span: Any, job: Job, outcome: Outcome | None) -> None:
    """What a queued delivery's span carries: the message_id (what GetDelivery is asked with), the
    attempt, its outcome and, when it failed, the error's reason (never its message)."""
    span.set_attribute("messaging.message.id", job.message_id)
    span.set_attribute("trengo_sidecar.queue.attempt", job.attempts + 1)
    span.set_attribute("trengo_sidecar.queue.outcome", outcome.state if outcome else "released")
    if outcome is not None and outcome.state != DELIVERED:
        span.set_attribute("error.type", (outcome.error or {}).get("reason") or outcome.state)
        span.set_status(Status(StatusCode.ERROR))


def classify(error: SidecarError, last_status: int, kind: str) -> str:
    """Which retry rule an attempt's failure (of an event of that kind) falls under (policy.py)."""
    if isinstance(error, OutcomeUnknown):
        return OUTCOME_UNKNOWN
    if error.reason == CONTACT_NOT_FOUND and kind == "track":
        # The identify that creates it may be behind it, or Trengo's search may not see it yet. (An
        # identify's CONTACT_NOT_FOUND is its trengoContactId answered 404: waiting will not change it.)
        return WAITING_FOR_CONTACT
    if isinstance(error, ResourceExhausted) or error.reason == "STORE_UNAVAILABLE":
        return KEEP_RETRYING
    if isinstance(error, Unavailable):
        return KEEP_RETRYING if last_status in KEEP_RETRYING_STATUS else TRANSIENT
    return REJECTED  # Trengo's 4xx, or what its data forbids (no contact, duplicate contacts, ...)


def event_from(data: dict[str, Any]) -> Event:
    try:
        return Event(**data)
    except TypeError:
        # An event the HTTP ingest refused (stored as sent), queued again by an operator's retry.
        raise InvalidArgument("the event was refused when accepted: it is not valid", field="event") from None


class Worker:
    def __init__(
        self,
        store: QueueStore,
        delivery: Delivery,
        policy: QueuePolicy,
        settings: WorkerSettings,
        clock: Any = time.time,
        tracing: Any = None,
    ) -> None:
        self.store = store
        self.tracing = tracing  # a sidecar.tracing.Tracing, or None when tracing is off
        self.delivery = delivery
        self.policy = policy
        self.settings = settings
        self.clock = clock
        self.owner = f"{socket.gethostname()}:{secrets.token_hex(4)}"
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._running: dict[int, tuple[asyncio.Task[None], _Attempt]] = {}
        self._main: asyncio.Task[None] | None = None
        self._side: list[asyncio.Task[None]] = []
        # for metrics: attempts by outcome (delivered, retrying, failed, released), and the last stats
        self.attempts: Counter[str] = Counter()
        self.stats = Stats()

    def wake(self) -> None:
        """An event was enqueued in this process: look for work now rather than at the next poll."""
        self._wake.set()

    def start(self) -> None:
        self._main = asyncio.create_task(self._run(), name="queue-worker")
        self._side = [
            asyncio.create_task(self._heartbeat(), name="queue-heartbeat"),
            asyncio.create_task(self._maintain(), name="queue-maintenance"),
        ]

    # --- claiming ------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            free = self.settings.concurrency - len(self._running)
            claimed = 0
            if free > 0:
                try:
                    jobs = await self.store.claim(self.owner, self.settings.lease_seconds, free)
                except QueueError as exc:
                    log.warning("queue: claiming failed: %s", exc)
                    await self._pause(STORE_ERROR_PAUSE_SECONDS)
                    continue
                for job in jobs:
                    attempt = _Attempt(self.store, self.owner, job, self.delivery.config.enable_dedup)
                    task = asyncio.create_task(self._deliver(job, attempt), name=f"queue-job-{job.id}")
                    self._running[job.id] = (task, attempt)
                claimed = len(jobs)
            if claimed and claimed == free:
                continue  # there may be more; a finishing task wakes the loop anyway
            await self._pause(self.settings.poll_seconds)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()

    # --- one delivery ----------------------------------------------------------------------

    async def _deliver(self, job: Job, attempt: _Attempt) -> None:
        ATTEMPT_HOOK.set(attempt)  # this task's own context: seen only by its own Trengo calls
        BACKGROUND.set(True)
        try:
            with self._span(job) as span:
                outcome = await self._attempt(job, attempt)
                if span is not None:
                    _describe(span, job, outcome)
            if outcome is None:
                await self.store.release(self.owner, job.id)
                self.attempts["released"] += 1
            elif await self.store.finish(self.owner, job.id, outcome):
                self.attempts[outcome.state] += 1
            else:
                log.warning("queue: lost the lease on %s before settling it", job.message_id)
        except QueueError as exc:
            # The lease runs out and another claim settles it (as unknown if a write may have gone).
            log.warning("queue: could not settle %s: %s", job.message_id, exc)
        finally:
            self._running.pop(job.id, None)
            self._wake.set()

    def _span(self, job: Job) -> contextlib.AbstractContextManager[Any]:
        """The attempt's span, linked to the Enqueue's trace, its Trengo calls its children; off, none."""
        if self.tracing is None:
            return contextlib.nullcontext()
        return self.tracing.linked_span("deliver queued", job.trace or {})

    async def _attempt(self, job: Job, attempt: _Attempt) -> Outcome | None:
        """Deliver once; the Outcome to store, or None to give the event back unattempted."""
        # Retried by an operator: sent again, not answered with the stored (failed) result.
        deliver = self.delivery.deliver_again if job.forced else self.delivery.deliver
        try:
            done = await deliver(event_from(job.event), Deadline.after(self.settings.attempt_seconds))
        except LeaseLost:
            return None
        except SidecarError as exc:
            return self._failed(job, exc, classify(exc, attempt.last_status, job.event.get("kind", "")))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("queue: delivering %s failed unexpectedly", job.message_id)
            return self._failed(job, Unavailable(f"internal error: {type(exc).__name__}"), TRANSIENT)
        result = json_format.MessageToDict(to_result(done), preserving_proto_field_name=True)
        return Outcome(DELIVERED, result=result)

    def _failed(self, job: Job, error: SidecarError, kind: str) -> Outcome:
        attempts = job.attempts + 1
        now = self.clock()
        age = now - job.retry_from
        verdict = self.policy.decide(kind, attempts, age)
        as_json = json_format.MessageToDict(deliver_error(error), preserving_proto_field_name=True)
        if kind == WAITING_FOR_CONTACT:
            as_json["message"] = self._contact_wait_message(verdict, error.message)
        if verdict == "fail":
            message = as_json["message"]
            log.warning("queue: %s failed for good after %d attempts: %s", job.message_id, attempts, message)
            return Outcome(FAILED, error=as_json)
        wait = self.policy.wait(kind, attempts, age)
        return Outcome(RETRYING, error=as_json, next_attempt_at=now + wait)

    def _contact_wait_message(self, verdict: str, message: str) -> str:
        """What ListDeliveries and the watch show of a Track waiting for its contact, and of one that
        waited in vain: the reason stays CONTACT_NOT_FOUND, the message says the wait."""
        limit = f"{self.policy.contact_wait_seconds:g} s (queueContactWaitSeconds)"
        if verdict == "fail":
            return f"the contact did not appear within {limit}: {message}"
        return f"waiting up to {limit} for the contact; the person's identifies may go first: {message}"

    # --- side tasks --------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        interval = self.settings.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self.store.heartbeat(self.owner, list(self._running), self.settings.lease_seconds)
            except QueueError as exc:
                log.warning("queue: lease heartbeat failed: %s", exc)

    async def _maintain(self) -> None:
        """Stats for metrics at every poll; delivered events past retention pruned now and then."""
        pruned_at = 0.0
        while True:
            try:
                self.stats = await self.store.stats()
                if time.monotonic() - pruned_at >= self._prune_every():
                    pruned_at = time.monotonic()
                    await self._prune()
            except QueueError as exc:
                log.warning("queue: maintenance failed: %s", exc)
            await asyncio.sleep(max(self.settings.poll_seconds, 1.0))

    def _prune_every(self) -> float:
        """Every maintenance_seconds, or twice per retention when one is shorter (so a short one holds)."""
        shortest = min(self.settings.retention_seconds, self.settings.failed_retention_seconds)
        return min(self.settings.maintenance_seconds, shortest / 2)

    async def _prune(self) -> None:
        now = self.clock()
        removed = await self.store.prune(now - self.settings.retention_seconds)
        if removed:
            log.info("queue: pruned %d delivered events past retention", removed)
        failed = await self.store.prune_failed(now - self.settings.failed_retention_seconds)
        if failed:
            log.info("queue: pruned %d failed events past queueFailedRetentionSeconds", failed)

    # --- stopping ------------------------------------------------------------------------------

    async def stop(self, grace: float) -> None:
        """Stop claiming; let deliveries in flight finish within ``grace``; settle the rest honestly."""
        self._stopping.set()
        self._wake.set()
        if self._main is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._main
        for task in self._side:
            task.cancel()
        running = dict(self._running)
        if running:
            await asyncio.wait([task for task, _ in running.values()], timeout=max(grace, 0.0))
        for job_id, (task, attempt) in running.items():
            if task.done():
                continue
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self._settle_cancelled(job_id, attempt)

    async def _settle_cancelled(self, job_id: int, attempt: _Attempt) -> None:
        """Out of grace: unsent, the event goes back; a write that may have gone is an unknown outcome."""
        try:
            if not attempt.marked:
                await self.store.release(self.owner, job_id)
                return
            message = (
                "the sidecar stopped while this event's write was in flight; whether Trengo did it is unknown"
            )
            await self.store.finish(self.owner, job_id, Outcome(FAILED, error=unknown_error(message)))
        except QueueError as exc:
            log.warning("queue: could not settle event %d at shutdown: %s", job_id, exc)
