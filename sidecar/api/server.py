"""The grpc.aio servicer: a thin layer over events -> delivery, with statuses and one log line per RPC."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from trengo.sidecar.v1 import sidecar_pb2 as pb
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

from ..config.load import Config
from ..deadline import Deadline
from ..delivery.delivery import Delivery
from ..delivery.outcome import Outcome
from ..errors import InvalidArgument, ShuttingDown, SidecarError
from ..plan import events, filters
from .answers import abort_with, deliver_error, to_result
from .decoding import decoded as _decoded
from .drain import InFlight
from .offload import Deferred, in_pool, off_loop
from .stream import OrderedByKey, StreamIds, echoed_id

log = logging.getLogger("sidecar")
T = TypeVar("T")


_PARSERS: dict[str, tuple[str, Callable[[Any], events.Event]]] = {
    "identify": ("Identify", events.from_identify),
    "track": ("Track", events.from_track),
    "send_event": ("SendEvent", events.from_send_event),
}


class Servicer(pb_grpc.TrengoSidecarServicer):
    def __init__(self, config: Config, delivery: Delivery) -> None:
        self.config = config
        self.delivery = delivery
        self.in_flight = InFlight()
        # metrics hook: rpc(method, code_name, seconds), filtered(rule), followup_failed(kind)
        self.observer: Any = None

    async def Identify(
        self, request: pb.IdentifyRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeliveryResult:
        parse = events.from_identify
        return await self._handle("Identify", context, lambda: off_loop(request, parse, _decoded))

    async def Track(self, request: pb.TrackRequest, context: grpc.aio.ServicerContext) -> pb.DeliveryResult:
        return await self._handle("Track", context, lambda: off_loop(request, events.from_track, _decoded))

    async def SendEvent(
        self, request: pb.SendEventRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeliveryResult:
        parse = events.from_send_event
        return await self._handle("SendEvent", context, lambda: off_loop(request, parse, _decoded))

    async def Deliver(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.DeliverResponse]:
        request_id = _request_id(context)
        await context.send_initial_metadata((("x-request-id", request_id),))
        ids = StreamIds()

        async def prepare(item: Any) -> tuple[str, Callable[[], Awaitable[pb.DeliverResponse]]]:
            """Parse now (to know whose event it is); deliver when that person's previous event is done."""
            try:
                large = isinstance(item, Deferred)
                item = await off_loop(item, _as_is, _decoded)
                ids.check(item.id)
                which = item.WhichOneof("event")
                if which is None:
                    raise InvalidArgument("one of identify, track or send_event is required", field="event")
                method, parse = _PARSERS[which]
                part = getattr(item, which)
                event = await in_pool(lambda: parse(part)) if large else parse(part)
                event = self.delivery.normalise(event)  # one person per E.164 number, as delivery sees it
            except SidecarError as exc:  # an item refused before it was parsed still has its id read
                self.refused("Deliver", exc, request_id)
                answer = pb.DeliverResponse(id=echoed_id(getattr(item, "id", "")), error=deliver_error(exc))
                return f"invalid:{id(item)}", lambda: _ready(answer)
            except Exception:
                log.exception("Deliver request_id=%s: an event could not be read", request_id)
                internal = _internal(request_id)
                answer = pb.DeliverResponse(id=echoed_id(getattr(item, "id", "")), error=internal)
                return f"invalid:{id(item)}", lambda: _ready(answer)
            key = event.user_id or event.anonymous_id or event.email or event.phone or f"anonymous:{id(item)}"
            return key, lambda: self._answer(item.id, method, event, context, request_id)

        ordered = OrderedByKey(prepare)
        try:
            if self.in_flight.closing:
                raise self.refused("Deliver", ShuttingDown(), request_id)
            with self.in_flight.track(on_cut=ordered.stop):
                async for answer in ordered.run(requests):
                    yield answer
            if ordered.stopped:
                # Every event read was answered above; the ones the caller sent after are unread.
                raise ShuttingDown(
                    "the sidecar is shutting down: events not answered on this stream were not read; "
                    "send them again"
                )
        except ShuttingDown as exc:
            await abort_with(context, exc)

    async def _answer(
        self, id_: str, method: str, event: events.Event, context: grpc.aio.ServicerContext, request_id: str
    ) -> pb.DeliverResponse:
        deadline = Deadline.after(
            min(self.config.default_deadline_seconds, self._deadline(context).remaining())
        )
        try:
            outcome = await self._run(method, lambda: _ready(event), deadline, request_id)
        except SidecarError as exc:
            return pb.DeliverResponse(id=id_, error=deliver_error(exc))
        except Exception:  # _run logged it; the stream answers it and goes on
            return pb.DeliverResponse(id=id_, error=_internal(request_id))
        return pb.DeliverResponse(id=id_, result=to_result(outcome))

    async def _handle(
        self, method: str, context: grpc.aio.ServicerContext, parse: Callable[[], Awaitable[events.Event]]
    ) -> pb.DeliveryResult:
        request_id = _request_id(context)
        # Sent while the event is delivered, not before: awaited first, it would add a trip through
        # grpc's completion queue and poller thread (about 0.1 ms) to every call's latency. It must be
        # out before the handler answers, or grpc would send a second set of initial metadata.
        metadata = asyncio.ensure_future(context.send_initial_metadata((("x-request-id", request_id),)))
        try:
            if self.in_flight.closing:
                raise self.refused(method, ShuttingDown(), request_id)
            with self.in_flight.track():
                outcome = await self._run(method, parse, self._deadline(context), request_id)
            await metadata
            return to_result(outcome)
        except SidecarError as exc:
            await metadata
            await abort_with(context, exc)
        except Exception:
            await metadata
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error (request_id {request_id})")
            raise
        finally:
            _settle(metadata)

    def refused(self, method: str, error: SidecarError, request_id: str) -> SidecarError:
        """A call or event refused before delivery (auth, shutdown, a bad stream id): logged and counted
        like any other, as docs/operating.md promises one line per RPC. Returns the error, for raising."""
        if self.observer:
            self.observer.rpc(method, error.code.name, 0.0)
            self.observer.refused(error)
        _log_rpc(method, error.code.name, 0.0, request_id, None, None, error)
        return error

    def refused_call(self, method: str, error: SidecarError, context: grpc.aio.ServicerContext) -> None:
        """The same for a call refused by an interceptor (auth.py), which knows only its context."""
        self.refused(method, error, _request_id(context))

    async def _run(
        self, method: str, parse: Callable[[], Awaitable[events.Event]], deadline: Deadline, request_id: str
    ) -> Outcome:
        """Parse and deliver one event, with its log line and metrics."""
        started = time.monotonic()
        code, outcome, error, event = "OK", None, None, None
        try:
            event = await parse()
            outcome = self.filtered(event) or await self.delivery.deliver(event, deadline)
            return outcome
        except SidecarError as exc:
            error, code = exc, exc.code.name
            raise
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception:
            code = "INTERNAL"
            log.exception("rpc %s request_id=%s failed unexpectedly", method, request_id)
            raise
        finally:
            seconds = time.monotonic() - started
            if self.observer:
                self.observer.rpc(method, code, seconds)
                if code != "CANCELLED":  # the caller left: neither delivered nor failed here
                    self.observer.event(outcome, error)
                for failure in outcome.failed_followups if outcome and not outcome.replayed else ():
                    self.observer.followup_failed(failure.kind)
            # Written once the answer is on its way, not before: formatting and writing the line took
            # about 60 us per call on the benchmark machine, all of it in the caller's latency.
            args = (method, code, seconds, request_id, event, outcome, error)
            asyncio.get_running_loop().call_soon(_log_rpc, *args)

    def filtered(self, event: events.Event) -> Outcome | None:
        """The answer to an event RudderStack would not deliver (counted by rule); None: deliver it."""
        dropped = filters.check(event, self.config)
        if dropped is None:
            return None
        if self.observer:
            self.observer.filtered(dropped.rule)
        return Outcome(
            "filtered", 0, dry_run=event.dry_run, message_id=event.message_id, filtered_reason=dropped.reason
        )

    def _deadline(self, context: grpc.aio.ServicerContext) -> Deadline:
        remaining = context.time_remaining()
        if remaining is None:
            return Deadline.after(self.config.default_deadline_seconds)
        # Answer a little before the caller gives up, so it hears why.
        return Deadline.after(remaining - min(0.25, remaining * 0.1))


def _settle(sending: asyncio.Future[None]) -> None:
    """Stop a metadata send the handler no longer waits for (the caller went away); read its error."""
    if not sending.done():
        sending.cancel()
    elif not sending.cancelled():
        sending.exception()  # retrieved, so asyncio does not log "exception was never retrieved"


def _internal(request_id: str) -> pb.DeliverError:
    return pb.DeliverError(
        code=grpc.StatusCode.INTERNAL.value[0], message=f"internal error (request_id {request_id})"
    )


async def _ready(answer: T) -> T:
    return answer


def _as_is(message: Any) -> Any:
    return message


def _request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str) and 0 < len(value) <= 128 and value.isprintable():
            return value
    return secrets.token_hex(16)  # 32 hex digits, as uuid4().hex gave, at a third of the cost


def _log_rpc(
    method: str,
    code: str,
    seconds: float,
    request_id: str,
    event: events.Event | None,
    outcome: Outcome | None,
    error: SidecarError | None,
) -> None:
    fields: dict[str, Any] = {
        "rpc": method,
        "code": code,
        "ms": round(seconds * 1000, 2),
        "request_id": request_id,
    }
    if event is not None:
        fields.update(kind=event.kind, message_id=event.message_id or None, dry_run=event.dry_run or None)
    if outcome is not None:
        fields.update(
            action=outcome.action,
            contact_id=outcome.contact_id or None,
            ticket_id=outcome.ticket_id or None,
            trengo_calls=len(outcome.calls),
            replayed=outcome.replayed or None,
            filtered_reason=outcome.filtered_reason or None,
            # follow-ups that did not land, as kind:target (the target is config, never event data)
            failed_followups=",".join(f"{f.kind}:{f.target}" for f in outcome.failed_followups) or None,
        )
    if error is not None:
        fields.update(reason=error.reason, error=error.message)
    level = (
        logging.WARNING
        if error is not None and code not in ("INVALID_ARGUMENT", "NOT_FOUND")
        else logging.INFO
    )
    if outcome is not None and outcome.failed_followups:  # OK, but something the config asked for is missing
        level = logging.WARNING
    log.log(level, "handled", extra={"fields": {k: v for k, v in fields.items() if v is not None}})
