"""Turn errors into rich gRPC statuses.

An outcome's and an error's messages are made in delivery/outcome.py (the queue's worker stores them
too) and re-exported here, where the servicers read them.
"""

from __future__ import annotations

from typing import NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from ..delivery.outcome import ACTIONS as ACTIONS  # re-exported: server.py and the tests read them here
from ..delivery.outcome import deliver_error as deliver_error
from ..delivery.outcome import to_result as to_result
from ..errors import DOMAIN, SidecarError


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


async def abort_with(context: grpc.aio.ServicerContext, error: SidecarError) -> NoReturn:
    """End the call with the error's rich status (raises, as grpc's abort does)."""
    status = to_status(error)
    await context.abort(status.code, status.details, status.trailing_metadata)
    raise AssertionError("grpc's abort returned")  # abort always raises; this tells the type checker
