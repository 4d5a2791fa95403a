"""Plain Python values to request messages, and result messages back to dataclasses."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC
from typing import Any

import grpc
from google.protobuf import struct_pb2

from ._gen import sidecar_pb2 as pb
from .result import (
    Action,
    Delivered,
    DeliveryError,
    DeliveryPage,
    DeliveryResult,
    DeliveryState,
    DeliveryStatus,
    DeliveryUpdate,
    Enqueued,
    FollowUpFailure,
    TicketAssignment,
    TrengoCall,
)

CHANNEL_ID = "trengoChannelId"
CONTACT_ID = "trengoContactId"


def to_struct(data: Mapping[str, Any] | None, what: str) -> struct_pb2.Struct | None:
    """A JSON-like mapping as a google.protobuf.Struct (numbers become doubles, as in JSON)."""
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise TypeError(f"{what} must be a mapping, not {type(data).__name__}")
    struct = struct_pb2.Struct()
    try:
        struct.update(data)
    except (TypeError, ValueError, AttributeError) as exc:
        raise TypeError(f"{what} is not JSON-like: {exc}") from exc
    return struct


def with_fields(data: Any, **fields: Any) -> Any:
    """data with the fields that are not None set; data unchanged when there are none."""
    given = {key: value for key, value in fields.items() if value is not None}
    if not given:
        return data
    if data is not None and not isinstance(data, Mapping):
        raise TypeError(f"cannot add {sorted(given)} to traits of type {type(data).__name__}")
    return {**(data or {}), **given}


def external_ids(channel_id: int | str | None, contact_id: int | str | None) -> list[pb.ExternalId]:
    pairs = ((CHANNEL_ID, channel_id), (CONTACT_ID, contact_id))
    return [pb.ExternalId(type=kind, id=str(value)) for kind, value in pairs if value is not None]


def action_of(value: pb.Action.ValueType) -> Action:
    try:
        return Action(pb.Action.Name(value).removeprefix("ACTION_").lower())
    except ValueError:  # a value newer than this client
        return Action.UNSPECIFIED


def to_result(message: pb.DeliveryResult, request_id: str | None) -> DeliveryResult:
    return DeliveryResult(
        action=action_of(message.action),
        contact_id=message.contact_id,
        ticket_id=message.ticket_id,
        channel_id=message.channel_id,
        requests=tuple(
            TrengoCall(method=r.method, url=r.url, body_json=r.body_json, status_code=r.status_code,
                       attempts=r.attempts, duration_ms=r.duration_ms, headers=dict(r.headers))
            for r in message.requests
        ),
        dry_run=message.dry_run,
        contact_cache_hit=message.contact_cache_hit,
        replayed=message.replayed,
        message_id=message.message_id,
        request_id=request_id,
        filtered_reason=message.filtered_reason,
        failed_followups=tuple(
            FollowUpFailure(kind=f.kind, target=f.target, reason=f.reason, message=f.message)
            for f in message.failed_followups
        ),
        assignment=_assignment(message),
    )


def _assignment(message: pb.DeliveryResult) -> TicketAssignment | None:
    if not message.HasField("assignment"):
        return None
    a = message.assignment
    return TicketAssignment(type=a.type, target=a.target, id=a.id, assigned=a.assigned)


def to_enqueued(message: pb.EnqueueResponse, request_id: str | None) -> Enqueued:
    return Enqueued(message_id=message.message_id, duplicate=message.duplicate,
                    filtered_reason=message.filtered_reason, request_id=request_id)


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def to_status(message: pb.DeliveryStatus, request_id: str | None) -> DeliveryStatus:
    try:
        state = DeliveryState(pb.DeliveryState.Name(message.state).removeprefix("DELIVERY_STATE_").lower())
    except ValueError:  # a state newer than this client
        state = DeliveryState.UNSPECIFIED
    error = message.error
    return DeliveryStatus(
        message_id=message.message_id,
        state=state,
        attempts=message.attempts,
        accepted_at=message.accepted_at.ToDatetime(tzinfo=UTC),
        result=to_result(message.result, None) if message.HasField("result") else None,
        error=to_error(error) if message.HasField("error") else None,
        next_attempt_at=message.next_attempt_at.ToDatetime(tzinfo=UTC)
        if message.HasField("next_attempt_at") else None,
        request_id=request_id,
    )


def request_id(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    for key, value in metadata or ():
        if key == "x-request-id":
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def to_error(error: pb.DeliverError) -> DeliveryError:
    return DeliveryError(code=_CODES.get(error.code, grpc.StatusCode.UNKNOWN), reason=error.reason,
                         message=error.message, field=error.field,
                         retry_after_seconds=error.retry_after_seconds)


def deliver_request(item: tuple[str, Mapping[str, Any]], dry_run: bool) -> pb.DeliverRequest:
    """One event of a Deliver stream: (id, a RudderStack/Segment-spec event dict)."""
    event_id, event = item
    return pb.DeliverRequest(id=event_id, send_event=pb.SendEventRequest(
        event=to_struct(event, f"event {event_id!r}"), dry_run=dry_run))


def to_delivered(message: pb.DeliverResponse) -> Delivered:
    if message.HasField("error"):
        return Delivered(id=message.id, error=to_error(message.error))
    return Delivered(id=message.id, result=to_result(message.result, None))


def to_update(message: pb.DeliveryUpdate) -> DeliveryUpdate:
    return DeliveryUpdate(cursor=message.cursor, status=to_status(message.status, None))


def to_page(message: pb.ListDeliveriesResponse, request_id: str | None) -> DeliveryPage:
    return DeliveryPage(deliveries=tuple(to_status(s, request_id) for s in message.deliveries),
                        next_page_token=message.next_page_token)


def state_number(state: DeliveryState | str) -> int:
    """A DeliveryState (or its name, "failed") as the proto's enum number."""
    return int(pb.DeliveryState.Value(f"DELIVERY_STATE_{DeliveryState(state).value.upper()}"))


def list_request(state: DeliveryState | str, limit: int, page_token: str) -> pb.ListDeliveriesRequest:
    return pb.ListDeliveriesRequest(state=state_number(state), limit=limit, page_token=page_token)  # type: ignore[arg-type]
