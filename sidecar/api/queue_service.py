"""The queue's RPCs (Enqueue, GetDelivery, WatchDeliveries, ListDeliveries, RetryDeliveries) and life cycle.

app.py registers these handlers beside the servicer's and starts and stops this
service with the sidecar; the queue itself (store, backends, worker) lives under sidecar/queue/.
Enqueue validates exactly as the synchronous calls do (same parsers, then
Delivery.check), and answers only once the store has committed the event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, replace
from typing import Any

import grpc
from prometheus_client.core import Metric

from trengo.sidecar.v1 import sidecar_pb2 as pb

from ..config.load import Config
from ..delivery.delivery import Delivery
from ..errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    SidecarError,
    StoreError,
    Unavailable,
)
from ..observe import tracing
from ..plan import events, filters
from ..queue.backends import queue_on
from ..queue.metrics import collect as queue_metrics
from ..queue.store import NewJob, QueueStore, RetryRefused
from ..queue.worker import Worker
from ..state import open_state
from ..state.url import scheme_of
from .answers import abort_with
from .decoding import decoded, tolerant
from .offload import off_loop
from .queue_config import limits_of, policy_of, queue_connections, settings_of
from .queue_status import DEFAULT_PAGE, MAX_PAGE, STATE_NAMES, STATES, page_token, to_status

log = logging.getLogger("sidecar.queue")
SERVICE = pb.DESCRIPTOR.services_by_name["TrengoSidecar"].full_name
PARSERS: dict[str, Callable[[Any], events.Event]] = {
    "identify": events.from_identify,
    "track": events.from_track,
    "send_event": events.from_send_event,
}
WATCH_POLL_SECONDS = 0.5
STORE_RETRY_SECONDS = 1.0
OPEN_WAIT_SECONDS = 2.0  # how long start-up waits for the queue's tables before going on without them
WATCHERS_RETRY_SECONDS = 5.0  # RetryInfo of TOO_MANY_WATCHERS


def person(event: events.Event) -> str:
    """Whose event it is, for order: user_id, else anonymous_id, else the identifier (or contact id)."""
    if event.user_id:
        return f"user:{event.user_id}"
    if event.anonymous_id:
        return f"anonymous:{event.anonymous_id}"
    if event.email:
        return f"email:{event.email.lower()}"
    if event.phone:
        return "phone:" + "".join(ch for ch in event.phone if ch.isdigit() or ch == "+")
    if event.contact_id is not None:
        return f"contact:{event.contact_id}"
    return f"message:{event.message_id}"


def _not_durable() -> FailedPrecondition:
    return FailedPrecondition(
        "Enqueue needs a durable store, and this sidecar runs with store memory: (nothing would survive a "
        "restart); set store to sqlite:///path/state.db or postgresql://...",
        reason="STORE_NOT_DURABLE",
    )


class QueueService:
    def __init__(self, config: Config, delivery: Delivery, observer: Callable[[], Any]) -> None:
        self.config = config
        self.delivery = delivery
        self._observer = observer  # the servicer's metrics hook, looked up per call (installed later)
        self.store: QueueStore | None = None
        self.worker: Worker | None = None
        self._state: Any = None
        self._owns_state = False
        self._ready: Callable[[], bool] = lambda: True
        self._opening: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self.watchers = 0  # WatchDeliveries streams open now (maxWatchers)
        self.tracing: Any = None  # the sidecar's Tracing, set by server.py when tracing is on

    def metrics(self) -> Iterator[Metric]:
        """The queue's figures, read at scrape time (sidecar/queue/metrics.py; observe/metrics.py asks)."""
        return queue_metrics(self)

    # --- life cycle ----------------------------------------------------------------------------

    async def start(self, state: Any = None, ready: Callable[[], bool] | None = None) -> None:
        """Open the queue in ``state`` (the sidecar's; ``ready`` says when its store answers), or in a
        state of its own for ``store``.

        A store that cannot be reached yet does not stop the sidecar: the queue keeps trying in the
        background, and Enqueue answers UNAVAILABLE (STORE_UNAVAILABLE) meanwhile.
        """
        if scheme_of(self.config.store.reveal()) == "memory":
            return  # Enqueue answers FAILED_PRECONDITION naming store
        if state is None:
            state, self._owns_state = open_state(self.config.store.reveal()), True
        self._state = state
        self._ready = ready or (lambda: True)
        self._opening = asyncio.create_task(self._open(), name="queue-open")
        if self._owns_state or self._ready():  # a store that answers: Enqueue works from the start
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._opening), OPEN_WAIT_SECONDS)

    async def _open(self) -> None:
        while True:
            try:
                if self._owns_state:
                    await self._state.start()
                elif not self._ready():  # the sidecar retries its store itself: no second prober
                    await asyncio.sleep(STORE_RETRY_SECONDS)
                    continue
                self.store = await queue_on(self._state, limits_of(self.config))
                break
            except StoreError as exc:
                log.warning("queue: the store is not usable yet, retrying: %s", exc)
                await asyncio.sleep(STORE_RETRY_SECONDS)
        if self.config.queue_concurrency > 0 and self.store is not None:
            policy, settings = policy_of(self.config), settings_of(self.config)
            self.worker = Worker(self.store, self.delivery, policy, settings, tracing=self.tracing)
            self.worker.start()

    async def stop(self, grace: float) -> None:
        self._closing.set()
        if self._opening is not None and not self._opening.done():
            self._opening.cancel()
        if self.worker is not None:
            await self.worker.stop(grace)
        if self._owns_state and self._state is not None:
            await self._state.aclose()
            self._state = None

    # --- registration --------------------------------------------------------------------------

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """The RPC handlers, for server.py to register with its own; requests are parsed as its are."""

        def deserializer(message_type: Any) -> Callable[[bytes], Any]:
            return tolerant(message_type, self.config.max_message_bytes, self.config.max_event_fields)

        unary: dict[str, tuple[Callable[[Any], Awaitable[Any]], Any, Any]] = {
            "Enqueue": (self.Enqueue, pb.EnqueueRequest, pb.EnqueueResponse),
            "GetDelivery": (self.GetDelivery, pb.GetDeliveryRequest, pb.DeliveryStatus),
            "ListDeliveries": (self.ListDeliveries, pb.ListDeliveriesRequest, pb.ListDeliveriesResponse),
            "RetryDeliveries": (self.RetryDeliveries, pb.RetryDeliveriesRequest, pb.RetryDeliveriesResponse),
        }
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                self._unary(name, handler),
                request_deserializer=deserializer(request),
                response_serializer=response.SerializeToString,
            )
            for name, (handler, request, response) in unary.items()
        }
        handlers["WatchDeliveries"] = grpc.unary_stream_rpc_method_handler(
            self.WatchDeliveries,
            request_deserializer=deserializer(pb.WatchDeliveriesRequest),
            response_serializer=pb.DeliveryUpdate.SerializeToString,
        )
        return handlers

    def _unary(self, name: str, handler: Callable[[Any], Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started, code = time.monotonic(), "OK"
            try:
                return await handler(await off_loop(request, _as_is, decoded))
            except SidecarError as exc:  # StoreError (UNAVAILABLE, STORE_UNAVAILABLE) among them
                code = exc.code.name
                await abort_with(context, exc)
            finally:
                observer = self._observer()
                if observer:
                    observer.rpc(name, code, time.monotonic() - started)

        return call

    def _durable(self) -> QueueStore:
        if self.store is not None:
            return self.store
        if self._state is None:
            raise _not_durable()
        raise Unavailable("the queue's store is not reachable yet", reason="STORE_UNAVAILABLE",
                          retry_after=STORE_RETRY_SECONDS)

    # --- the RPCs --------------------------------------------------------------------------------

    async def Enqueue(self, request: pb.EnqueueRequest) -> pb.EnqueueResponse:
        store = self._durable()
        which = request.WhichOneof("event")
        if which is None:
            raise InvalidArgument("one of identify, track or send_event is required", field="event")
        event = PARSERS[which](getattr(request, which))
        if event.dry_run:
            raise InvalidArgument(
                "a dry run cannot be queued: call Identify, Track or SendEvent", field="dry_run"
            )
        message_id = event.message_id or uuid.uuid4().hex
        event = replace(event, message_id=message_id)
        dropped = filters.check(event, self.config)  # first, as the synchronous calls filter first
        if dropped is not None:
            observer = self._observer()
            if observer:
                observer.filtered(dropped.rule)
            return pb.EnqueueResponse(message_id=message_id, filtered_reason=dropped.reason)
        event = self.delivery.check(event)  # the phone in E.164 with a region: the person key below
        trace = (tracing.carrier() or None) if self.tracing is not None else None  # off: no work at all
        new = await store.enqueue(NewJob(message_id, person(event), asdict(event), trace))
        if new and self.worker is not None:
            self.worker.wake()
        return pb.EnqueueResponse(message_id=message_id, duplicate=not new)

    async def accept_many(self, jobs: list[NewJob]) -> list[bool]:
        """The HTTP ingest's batch (sidecar/ingest/), stored in one transaction: for each job, False if
        its message_id was already accepted. Raises as Enqueue does when the store cannot take it."""
        stored = await self._durable().enqueue_many(jobs)
        if any(stored) and self.worker is not None:
            self.worker.wake()
        return stored

    async def GetDelivery(self, request: pb.GetDeliveryRequest) -> pb.DeliveryStatus:
        store = self._durable()
        if not request.message_id:
            raise InvalidArgument("message_id is required", field="message_id")
        job = await store.get(request.message_id)
        if job is None:
            raise NotFound(
                f"no accepted event has message_id {request.message_id[:80]!r}", reason="DELIVERY_NOT_FOUND"
            )
        return to_status(job)

    async def ListDeliveries(self, request: pb.ListDeliveriesRequest) -> pb.ListDeliveriesResponse:
        store = self._durable()
        state = STATE_NAMES.get(request.state or pb.DELIVERY_STATE_FAILED)
        if state is None:
            raise InvalidArgument(f"state {request.state} is not a DeliveryState", field="state")
        if request.limit < 0:
            raise InvalidArgument("limit must not be negative", field="limit")
        limit = min(request.limit or DEFAULT_PAGE, MAX_PAGE)
        after = page_token(request.page_token)
        jobs = await store.by_state(state, after, limit)
        token = str(jobs[-1].id) if len(jobs) == limit else ""
        return pb.ListDeliveriesResponse(deliveries=[to_status(j) for j in jobs], next_page_token=token)

    async def RetryDeliveries(self, request: pb.RetryDeliveriesRequest) -> pb.RetryDeliveriesResponse:
        store = self._durable()
        if request.all_failed == bool(request.message_ids):
            raise InvalidArgument("give message_ids or all_failed, one of the two", field="message_ids")
        try:
            retried = await store.retry_failed(None if request.all_failed else list(request.message_ids))
        except RetryRefused as exc:
            if exc.state is None:
                raise NotFound(str(exc), reason="DELIVERY_NOT_FOUND") from None
            raise FailedPrecondition(str(exc), reason="DELIVERY_NOT_FAILED") from None
        if retried and self.worker is not None:
            self.worker.wake()
        return pb.RetryDeliveriesResponse(retried=retried)

    async def WatchDeliveries(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.DeliveryUpdate]:
        try:
            store = self._durable()
            cursor = decoded(request).cursor
            if cursor < 0:
                raise InvalidArgument("cursor must not be negative", field="cursor")
            if self.watchers >= self.config.max_watchers:
                raise ResourceExhausted(
                    f"{self.watchers} WatchDeliveries streams are open on this sidecar, its maxWatchers; "
                    "retry later, or close one",
                    reason="TOO_MANY_WATCHERS",
                    retry_after=WATCHERS_RETRY_SECONDS,
                )
        except SidecarError as exc:
            await abort_with(context, exc)
        self.watchers += 1
        try:
            async for update in self._watch(store, cursor, context):
                yield update
        finally:
            self.watchers -= 1

    async def _watch(
        self, store: QueueStore, cursor: int, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.DeliveryUpdate]:
        """Poll the change log (a read that takes no write lock) until the caller or the sidecar stops."""
        while not self._closing.is_set():
            try:
                jobs = await store.changes(cursor, DEFAULT_PAGE)
            except StoreError as exc:
                await abort_with(context, exc)
            for job in jobs:
                cursor = job.seq
                yield pb.DeliveryUpdate(cursor=job.seq, status=to_status(job))
            if len(jobs) < DEFAULT_PAGE:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), WATCH_POLL_SECONDS)



def _as_is(message: Any) -> Any:
    return message


# re-exported: app.py, the ingest and the tests import these from here
__all__ = [
    "STATES", "STATE_NAMES", "QueueService", "limits_of", "person", "policy_of", "queue_connections",
    "settings_of", "to_status",
]
