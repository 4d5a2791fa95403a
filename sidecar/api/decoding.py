"""Request bytes -> messages, tolerantly: what protobuf or the size limit refuses becomes a clean error.

grpc would turn a failing deserializer into INTERNAL, and refuse an oversized message in its core
(no log line, no metric). The deserializer here returns a marker instead, and the handler raises
the caller's error from it, inside its logged and counted path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.message import DecodeError

from ..errors import InvalidArgument, ResourceExhausted


class Undecodable:
    """A request protobuf could not parse (nested past its depth limit): INVALID_ARGUMENT, not INTERNAL."""

    def __init__(self, problem: str) -> None:
        self.problem = problem


class Oversized:
    """A request over maxMessageBytes: refused by the handler, so it is logged and counted like any call.

    grpc's own limit (grpc.max_receive_message_length) would refuse it in its core, before any code of
    ours runs, with no log line and no metric. That limit is set to TRANSPORT_FACTOR times
    maxMessageBytes instead, still bounding what one request can make the process buffer.
    """

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit


TRANSPORT_FACTOR = 2


def transport_limit(max_message_bytes: int) -> int:
    return min(TRANSPORT_FACTOR * max_message_bytes, 2**31 - 1)  # grpc's option is a C int


def tolerant(message_type: Any, limit: int) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        if len(data) > limit:
            return Oversized(len(data), limit)
        try:
            return message_type.FromString(data)
        except DecodeError as exc:
            return Undecodable(str(exc))

    return parse


def _undecodable(request: Undecodable) -> InvalidArgument:
    return InvalidArgument(
        f"the request could not be decoded ({request.problem}): nested deeper than protobuf allows?",
        field="request",
    )


def decoded(request: Any) -> Any:
    if isinstance(request, Undecodable):
        raise _undecodable(request)
    if isinstance(request, Oversized):
        raise ResourceExhausted(
            f"the request is {request.size} bytes, over maxMessageBytes ({request.limit})",
            reason="MESSAGE_TOO_LARGE",
        )
    return request
