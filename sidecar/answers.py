"""Turn delivery outcomes and errors into the contract's messages and rich gRPC statuses."""

from __future__ import annotations

from typing import NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from trengo.sidecar.v1 import sidecar_pb2 as pb

from .delivery import Outcome
from .errors import DOMAIN, SidecarError

ACTIONS = {
    "create_contact": pb.ACTION_CREATE_CONTACT,
    "update_contact": pb.ACTION_UPDATE_CONTACT,
    "create_ticket": pb.ACTION_CREATE_TICKET,
    "none": pb.ACTION_NONE,
    "filtered": pb.ACTION_FILTERED,
}


def to_result(outcome: Outcome) -> pb.DeliveryResult:
    return pb.DeliveryResult(
        action=ACTIONS[outcome.action],
        contact_id=outcome.contact_id,
        ticket_id=outcome.ticket_id,
        channel_id=outcome.channel_id,
        requests=[
            pb.TrengoRequest(
                method=c.method,
                url=c.url,
                body_json=c.body_json,
                status_code=c.status_code,
                attempts=c.attempts,
                duration_ms=c.duration_ms,
                headers=c.headers,
            )
            for c in outcome.calls
        ],
        dry_run=outcome.dry_run,
        contact_cache_hit=outcome.contact_cache_hit,
        replayed=outcome.replayed,
        message_id=outcome.message_id,
        filtered_reason=outcome.filtered_reason,
        failed_followups=[
            pb.FollowUpFailure(kind=f.kind, target=f.target, reason=f.reason, message=f.message)
            for f in outcome.failed_followups
        ],
        assignment=_assignment(outcome),
    )


def _assignment(outcome: Outcome) -> pb.TicketAssignment | None:
    a = outcome.assignment
    if a is None:
        return None
    return pb.TicketAssignment(type=a.kind, target=a.target, id=a.id, assigned=a.assigned)


def to_status(error: SidecarError) -> grpc.Status:
    """A rich gRPC status: ErrorInfo always, BadRequest naming the field, RetryInfo where a retry helps."""
    details = [error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)]
    if error.field:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=error.field, description=error.message)
                ]
            )
        )
    if error.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    packed = []
    for detail in details:
        box = any_pb2.Any()
        box.Pack(detail)
        packed.append(box)
    status = status_pb2.Status(code=error.code.value[0], message=error.message, details=packed)
    return rpc_status.to_status(status)


def deliver_error(error: SidecarError) -> pb.DeliverError:
    return pb.DeliverError(
        code=error.code.value[0],
        message=error.message,
        reason=error.reason,
        field=error.field or "",
        retry_after_seconds=error.retry_after or 0.0,
    )


async def abort_with(context: grpc.aio.ServicerContext, error: SidecarError) -> NoReturn:
    """End the call with the error's rich status (raises, as grpc's abort does)."""
    status = to_status(error)
    await context.abort(status.code, status.details, status.trailing_metadata)
    raise AssertionError("grpc's abort returned")  # abort always raises; this tells the type checker
