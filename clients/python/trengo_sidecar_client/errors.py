"""gRPC failures as typed exceptions, read from the sidecar's rich status (see sidecar.proto)."""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ._convert import request_id as _request_id

OUTCOME_UNKNOWN = "TRENGO_OUTCOME_UNKNOWN"  # a write whose answer was lost: resending may write twice


class SidecarError(Exception):
    """A failed call: the gRPC code, the ErrorInfo reason, the message and what else the status said."""

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str | None,
        message: str,
        field: str | None = None,
        retry_delay: float | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason  # ErrorInfo.reason, e.g. "EVENT_NOT_MAPPED"; None when the sidecar sent none
        self.message = message
        self.field = field  # BadRequest: the request field at fault, e.g. "traits.email"
        self.retry_delay = retry_delay  # RetryInfo, in seconds: wait this long before retrying
        self.request_id = request_id  # x-request-id, to find the call in the sidecar's logs

    @property
    def retryable(self) -> bool:
        """Whether sending the same call again can succeed (and cannot write twice)."""
        if self.reason == OUTCOME_UNKNOWN:
            return False
        if self.code == grpc.StatusCode.UNAVAILABLE:
            return True
        return self.code == grpc.StatusCode.RESOURCE_EXHAUSTED and self.retry_delay is not None

    def __str__(self) -> str:
        return f"{self.code.name} {self.reason or '-'}: {self.message}"


class InvalidArgument(SidecarError):
    """The request is malformed (INVALID_EVENT, MISSING_IDENTIFIER); Trengo was not called."""


class FailedPrecondition(SidecarError):
    """Configuration or Trengo's data forbids it (EVENT_NOT_MAPPED, DUPLICATE_CONTACTS, ...; for an enqueue
    on a sidecar whose store is memory:, STORE_NOT_DURABLE)."""


class NotFound(SidecarError):
    """No Trengo contact for the person (CONTACT_NOT_FOUND); from get_delivery, a message_id never
    accepted (DELIVERY_NOT_FOUND)."""


class Unavailable(SidecarError):
    """Trengo or the sidecar could not be reached; see `retryable` (not for TRENGO_OUTCOME_UNKNOWN)."""


class RateLimited(SidecarError):
    """RESOURCE_EXHAUSTED (RATE_LIMITED): retry after `retry_delay` seconds."""


class Unauthenticated(SidecarError):
    """The sidecar's own auth token was missing or wrong (CALLER_UNAUTHENTICATED)."""


class DeadlineExceeded(SidecarError):
    """The call's timeout passed before the sidecar answered."""


_BY_CODE: dict[grpc.StatusCode, type[SidecarError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RateLimited,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def from_rpc_error(error: grpc.RpcError) -> SidecarError:
    """The typed exception for a failed call (sync grpc.Call or grpc.aio.AioRpcError)."""
    call: Any = error
    code = call.code() if hasattr(call, "code") else grpc.StatusCode.UNKNOWN
    message = (call.details() if hasattr(call, "details") else None) or str(error)
    reason: str | None = None
    field: str | None = None
    retry_delay: float | None = None
    try:
        status = rpc_status.from_call(call) if hasattr(call, "trailing_metadata") else None
    except ValueError:  # the rich status contradicts the call's own code/message: ignore it
        status = None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason or None
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            field = bad.field_violations[0].field if bad.field_violations else None
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_delay = retry.retry_delay.ToNanoseconds() / 1e9
    metadata = call.initial_metadata() if hasattr(call, "initial_metadata") else None
    return _BY_CODE.get(code, SidecarError)(code, reason, message, field, retry_delay, _request_id(metadata))
