"""TrengoSidecarClient (blocking) and AsyncTrengoSidecarClient (grpc.aio): the same methods."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Self, TypeVar

import grpc

from . import _convert as cv
from ._gen import sidecar_pb2 as pb
from ._gen import sidecar_pb2_grpc as pb_grpc
from .errors import from_rpc_error
from .result import (
    Delivered,
    DeliveryPage,
    DeliveryResult,
    DeliveryState,
    DeliveryStatus,
    DeliveryUpdate,
    Enqueued,
)

Json = Mapping[str, Any]
Id = int | str
T = TypeVar("T")


def _identify(email: str | None, phone: str | None, name: str | None, traits: Json | None,
              context: Json | None, user_id: str, anonymous_id: str, channel_id: Id | None,
              contact_id: Id | None, message_id: str, dry_run: bool) -> pb.IdentifyRequest:
    return pb.IdentifyRequest(
        user_id=user_id, anonymous_id=anonymous_id,
        traits=cv.to_struct(cv.with_fields(traits, email=email, phone=phone, name=name), "traits"),
        context=cv.to_struct(context, "context"), external_ids=cv.external_ids(channel_id, contact_id),
        message_id=message_id, dry_run=dry_run)


def _track(event: str, email: str | None, phone: str | None, properties: Json | None, context: Json | None,
           user_id: str, anonymous_id: str, channel_id: Id | None, contact_id: Id | None, message_id: str,
           dry_run: bool) -> pb.TrackRequest:
    traits = cv.with_fields((context or {}).get("traits"), email=email, phone=phone)
    if traits is not None:
        context = {**(context or {}), "traits": traits}
    return pb.TrackRequest(
        user_id=user_id, anonymous_id=anonymous_id, event=event,
        properties=cv.to_struct(properties, "properties"), context=cv.to_struct(context, "context"),
        external_ids=cv.external_ids(channel_id, contact_id), message_id=message_id, dry_run=dry_run)


class _Options:
    def __init__(self, target: str, auth_token: str | None, timeout: float | None) -> None:
        self.target = target
        self.timeout = timeout  # seconds per call, unless a call gives its own; None = no deadline
        self._metadata = (("authorization", f"Bearer {auth_token}"),) if auth_token else ()

    def _kwargs(self, timeout: float | None) -> dict[str, Any]:
        return {"timeout": self.timeout if timeout is None else timeout, "metadata": self._metadata}

    def _stream_kwargs(self, timeout: float | None) -> dict[str, Any]:
        """A stream lasts as long as its caller wants: no deadline unless the call gives one."""
        return {"timeout": timeout, "metadata": self._metadata}


_DELIVER_DOC = """Many RudderStack/Segment-spec events over one Deliver stream: ``(id, event dict)`` pairs in,
        one `Delivered` per event out as each is done (echoing its id; a person's events keep their order,
        others' may overtake). A failed event is a `Delivered` with `error`, and the stream goes on; a
        failure of the whole stream raises `SidecarError`. ``timeout`` bounds the stream (default none)."""
_WATCH_DOC = """Every change of queued events' states after ``cursor`` (0: the oldest kept), oldest
        first, then as they happen, until the caller stops iterating. Keep the last `DeliveryUpdate.cursor`
        seen: resuming from it misses nothing. ``timeout`` bounds the stream (default none)."""


class TrengoSidecarClient(_Options):
    """A blocking client. Failures raise `SidecarError` subclasses (see errors.py)."""

    def __init__(self, target: str = "127.0.0.1:50051", *, auth_token: str | None = None,
                 credentials: grpc.ChannelCredentials | None = None, timeout: float | None = 10.0) -> None:
        super().__init__(target, auth_token, timeout)
        self._channel = (grpc.secure_channel(target, credentials) if credentials is not None
                         else grpc.insecure_channel(target))
        self._stub = pb_grpc.TrengoSidecarStub(self._channel)

    def identify(self, *, email: str | None = None, phone: str | None = None, name: str | None = None,
                 traits: Json | None = None, context: Json | None = None, user_id: str = "",
                 anonymous_id: str = "", channel_id: Id | None = None, contact_id: Id | None = None,
                 message_id: str = "", dry_run: bool = False, timeout: float | None = None) -> DeliveryResult:
        """Create the person's Trengo contact, or update its name."""
        request = _identify(email, phone, name, traits, context, user_id, anonymous_id, channel_id,
                            contact_id, message_id, dry_run)
        return self._call(self._stub.Identify, request, timeout)

    def track(self, event: str, *, email: str | None = None, phone: str | None = None,
              properties: Json | None = None, context: Json | None = None, user_id: str = "",
              anonymous_id: str = "", channel_id: Id | None = None, contact_id: Id | None = None,
              message_id: str = "", dry_run: bool = False, timeout: float | None = None) -> DeliveryResult:
        """Open a Trengo ticket for an existing contact; `event` must be a key of eventTemplateMap."""
        request = _track(event, email, phone, properties, context, user_id, anonymous_id, channel_id,
                         contact_id, message_id, dry_run)
        return self._call(self._stub.Track, request, timeout)

    def send_event(self, event: Json, *, dry_run: bool = False,
                   timeout: float | None = None) -> DeliveryResult:
        """Deliver a RudderStack/Segment-spec event (its JSON as a dict), unchanged."""
        request = pb.SendEventRequest(event=cv.to_struct(event, "event"), dry_run=dry_run)
        return self._call(self._stub.SendEvent, request, timeout)

    # --- the queue: accepted now, delivered at Trengo's pace (the sidecar needs a durable store) ---

    def enqueue_identify(self, *, email: str | None = None, phone: str | None = None,
                         name: str | None = None, traits: Json | None = None, context: Json | None = None,
                         user_id: str = "", anonymous_id: str = "", channel_id: Id | None = None,
                         contact_id: Id | None = None, message_id: str = "",
                         timeout: float | None = None) -> Enqueued:
        """Queue an identify; answered once the sidecar has durably stored it."""
        event = _identify(email, phone, name, traits, context, user_id, anonymous_id, channel_id,
                          contact_id, message_id, False)
        return self._ask(self._stub.Enqueue, pb.EnqueueRequest(identify=event), timeout, cv.to_enqueued)

    def enqueue_track(self, event: str, *, email: str | None = None, phone: str | None = None,
                      properties: Json | None = None, context: Json | None = None, user_id: str = "",
                      anonymous_id: str = "", channel_id: Id | None = None, contact_id: Id | None = None,
                      message_id: str = "", timeout: float | None = None) -> Enqueued:
        """Queue a track; answered once the sidecar has durably stored it."""
        track = _track(event, email, phone, properties, context, user_id, anonymous_id, channel_id,
                       contact_id, message_id, False)
        return self._ask(self._stub.Enqueue, pb.EnqueueRequest(track=track), timeout, cv.to_enqueued)

    def enqueue_send_event(self, event: Json, *, timeout: float | None = None) -> Enqueued:
        """Queue a RudderStack/Segment-spec event (its JSON as a dict), unchanged."""
        request = pb.EnqueueRequest(send_event=pb.SendEventRequest(event=cv.to_struct(event, "event")))
        return self._ask(self._stub.Enqueue, request, timeout, cv.to_enqueued)

    def get_delivery(self, message_id: str, *, timeout: float | None = None) -> DeliveryStatus:
        """Where a queued event is; NotFound (DELIVERY_NOT_FOUND) for a message_id never accepted."""
        request = pb.GetDeliveryRequest(message_id=message_id)
        return self._ask(self._stub.GetDelivery, request, timeout, cv.to_status)

    # --- streams, and the operator's view of the queue ---

    def deliver(self, events: Iterable[tuple[str, Json]], *, dry_run: bool = False,
                timeout: float | None = None) -> Iterator[Delivered]:
        requests = (cv.deliver_request(item, dry_run) for item in events)
        return self._stream(self._stub.Deliver(requests, **self._stream_kwargs(timeout)), cv.to_delivered)

    deliver.__doc__ = _DELIVER_DOC

    def watch_deliveries(self, cursor: int = 0, *, timeout: float | None = None) -> Iterator[DeliveryUpdate]:
        request = pb.WatchDeliveriesRequest(cursor=cursor)
        return self._stream(self._stub.WatchDeliveries(request, **self._stream_kwargs(timeout)), cv.to_update)

    watch_deliveries.__doc__ = _WATCH_DOC

    def list_deliveries(self, state: DeliveryState | str = DeliveryState.FAILED, *, limit: int = 100,
                        page_token: str = "", timeout: float | None = None) -> DeliveryPage:
        """Accepted events in one state (default failed), oldest first, a page of at most ``limit``."""
        request = cv.list_request(state, limit, page_token)
        return self._ask(self._stub.ListDeliveries, request, timeout, cv.to_page)

    def retry_deliveries(self, message_ids: Sequence[str] = (), *, all_failed: bool = False,
                         timeout: float | None = None) -> int:
        """Queue failed events again (these, or ``all_failed``); how many were. NotFound for an unknown
        id, FailedPrecondition for one not failed: then none is queued."""
        request = pb.RetryDeliveriesRequest(message_ids=message_ids, all_failed=all_failed)
        return self._ask(self._stub.RetryDeliveries, request, timeout, lambda answer, _: int(answer.retried))

    def _stream(self, responses: Any, convert: Callable[[Any], T]) -> Iterator[T]:
        try:
            for response in responses:
                yield convert(response)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        finally:
            responses.cancel()  # the caller stopped iterating: end the call, not just the loop

    def _call(self, method: Any, request: Any, timeout: float | None) -> DeliveryResult:
        return self._ask(method, request, timeout, cv.to_result)

    def _ask(self, method: Any, request: Any, timeout: float | None,
             convert: Callable[[Any, str | None], T]) -> T:
        try:
            response, call = method.with_call(request, **self._kwargs(timeout))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return convert(response, cv.request_id(call.initial_metadata()))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncTrengoSidecarClient(_Options):
    """The asyncio client (grpc.aio); create it inside the event loop that uses it."""

    def __init__(self, target: str = "127.0.0.1:50051", *, auth_token: str | None = None,
                 credentials: grpc.ChannelCredentials | None = None, timeout: float | None = 10.0) -> None:
        super().__init__(target, auth_token, timeout)
        self._channel = (grpc.aio.secure_channel(target, credentials) if credentials is not None
                         else grpc.aio.insecure_channel(target))
        self._stub = pb_grpc.TrengoSidecarStub(self._channel)

    async def identify(self, *, email: str | None = None, phone: str | None = None, name: str | None = None,
                       traits: Json | None = None, context: Json | None = None, user_id: str = "",
                       anonymous_id: str = "", channel_id: Id | None = None, contact_id: Id | None = None,
                       message_id: str = "", dry_run: bool = False,
                       timeout: float | None = None) -> DeliveryResult:
        """Create the person's Trengo contact, or update its name."""
        request = _identify(email, phone, name, traits, context, user_id, anonymous_id, channel_id,
                            contact_id, message_id, dry_run)
        return await self._call(self._stub.Identify, request, timeout)

    async def track(self, event: str, *, email: str | None = None, phone: str | None = None,
                    properties: Json | None = None, context: Json | None = None, user_id: str = "",
                    anonymous_id: str = "", channel_id: Id | None = None, contact_id: Id | None = None,
                    message_id: str = "", dry_run: bool = False,
                    timeout: float | None = None) -> DeliveryResult:
        """Open a Trengo ticket for an existing contact; `event` must be a key of eventTemplateMap."""
        request = _track(event, email, phone, properties, context, user_id, anonymous_id, channel_id,
                         contact_id, message_id, dry_run)
        return await self._call(self._stub.Track, request, timeout)

    async def send_event(self, event: Json, *, dry_run: bool = False,
                         timeout: float | None = None) -> DeliveryResult:
        """Deliver a RudderStack/Segment-spec event (its JSON as a dict), unchanged."""
        request = pb.SendEventRequest(event=cv.to_struct(event, "event"), dry_run=dry_run)
        return await self._call(self._stub.SendEvent, request, timeout)

    # --- the queue: accepted now, delivered at Trengo's pace (the sidecar needs a durable store) ---

    async def enqueue_identify(self, *, email: str | None = None, phone: str | None = None,
                               name: str | None = None, traits: Json | None = None,
                               context: Json | None = None, user_id: str = "", anonymous_id: str = "",
                               channel_id: Id | None = None, contact_id: Id | None = None,
                               message_id: str = "", timeout: float | None = None) -> Enqueued:
        """Queue an identify; answered once the sidecar has durably stored it."""
        event = _identify(email, phone, name, traits, context, user_id, anonymous_id, channel_id,
                          contact_id, message_id, False)
        return await self._ask(self._stub.Enqueue, pb.EnqueueRequest(identify=event), timeout,
                               cv.to_enqueued)

    async def enqueue_track(self, event: str, *, email: str | None = None, phone: str | None = None,
                            properties: Json | None = None, context: Json | None = None, user_id: str = "",
                            anonymous_id: str = "", channel_id: Id | None = None,
                            contact_id: Id | None = None, message_id: str = "",
                            timeout: float | None = None) -> Enqueued:
        """Queue a track; answered once the sidecar has durably stored it."""
        track = _track(event, email, phone, properties, context, user_id, anonymous_id, channel_id,
                       contact_id, message_id, False)
        return await self._ask(self._stub.Enqueue, pb.EnqueueRequest(track=track), timeout, cv.to_enqueued)

    async def enqueue_send_event(self, event: Json, *, timeout: float | None = None) -> Enqueued:
        """Queue a RudderStack/Segment-spec event (its JSON as a dict), unchanged."""
        request = pb.EnqueueRequest(send_event=pb.SendEventRequest(event=cv.to_struct(event, "event")))
        return await self._ask(self._stub.Enqueue, request, timeout, cv.to_enqueued)

    async def get_delivery(self, message_id: str, *, timeout: float | None = None) -> DeliveryStatus:
        """Where a queued event is; NotFound (DELIVERY_NOT_FOUND) for a message_id never accepted."""
        request = pb.GetDeliveryRequest(message_id=message_id)
        return await self._ask(self._stub.GetDelivery, request, timeout, cv.to_status)

    # --- streams, and the operator's view of the queue ---

    def deliver(self, events: Iterable[tuple[str, Json]] | AsyncIterable[tuple[str, Json]], *,
                dry_run: bool = False, timeout: float | None = None) -> AsyncIterator[Delivered]:
        async def requests() -> AsyncIterator[pb.DeliverRequest]:
            if isinstance(events, AsyncIterable):
                async for item in events:
                    yield cv.deliver_request(item, dry_run)
            else:
                for item in events:
                    yield cv.deliver_request(item, dry_run)

        call = self._stub.Deliver(requests(), **self._stream_kwargs(timeout))
        return self._stream(call, cv.to_delivered)

    deliver.__doc__ = _DELIVER_DOC

    def watch_deliveries(self, cursor: int = 0, *,
                         timeout: float | None = None) -> AsyncIterator[DeliveryUpdate]:
        request = pb.WatchDeliveriesRequest(cursor=cursor)
        return self._stream(self._stub.WatchDeliveries(request, **self._stream_kwargs(timeout)), cv.to_update)

    watch_deliveries.__doc__ = _WATCH_DOC

    async def list_deliveries(self, state: DeliveryState | str = DeliveryState.FAILED, *, limit: int = 100,
                              page_token: str = "", timeout: float | None = None) -> DeliveryPage:
        """Accepted events in one state (default failed), oldest first, a page of at most ``limit``."""
        request = cv.list_request(state, limit, page_token)
        return await self._ask(self._stub.ListDeliveries, request, timeout, cv.to_page)

    async def retry_deliveries(self, message_ids: Sequence[str] = (), *, all_failed: bool = False,
                               timeout: float | None = None) -> int:
        """Queue failed events again (these, or ``all_failed``); how many were."""
        request = pb.RetryDeliveriesRequest(message_ids=message_ids, all_failed=all_failed)
        return await self._ask(self._stub.RetryDeliveries, request, timeout,
                               lambda answer, _: int(answer.retried))

    async def _stream(self, call: Any, convert: Callable[[Any], T]) -> AsyncIterator[T]:
        try:
            async for response in call:
                yield convert(response)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        finally:
            call.cancel()

    async def _call(self, method: Any, request: Any, timeout: float | None) -> DeliveryResult:
        return await self._ask(method, request, timeout, cv.to_result)

    async def _ask(self, method: Any, request: Any, timeout: float | None,
                   convert: Callable[[Any, str | None], T]) -> T:
        call = method(request, **self._kwargs(timeout))
        try:
            response = await call
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return convert(response, cv.request_id(await call.initial_metadata()))

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
