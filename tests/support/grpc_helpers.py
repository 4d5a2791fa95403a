"""Reading rich gRPC errors, and health, in tests."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status


@dataclass
class Failure:
    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    field: str = ""
    retry_delay: float | None = None


def failure(error: grpc.RpcError) -> Failure:
    call: grpc.Call = error  # type: ignore[assignment]
    found = Failure(call.code(), call.details() or "")
    status = rpc_status.from_call(call)
    for detail in status.details if status else []:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                if isinstance(message, error_details_pb2.ErrorInfo):
                    found.reason, found.domain = message.reason, message.domain
                elif isinstance(message, error_details_pb2.BadRequest):
                    found.field = message.field_violations[0].field
                else:
                    found.retry_delay = message.retry_delay.ToNanoseconds() / 1e9
    return found


def health_status(address: str, service: str = "") -> int:
    """A health Check of ``service`` on a new connection: the status, or -1 when nothing answers at all."""
    try:
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1).status)
    except grpc.RpcError:
        return -1
