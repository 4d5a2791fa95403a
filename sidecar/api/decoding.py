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
from .field_budget import TooManyFields, check
from .offload import OFFLOAD_BYTES, Deferred


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


# The fewest bytes one Struct value takes on the wire (an empty Value in a list: a tag and a length).
# A request shorter than twice maxEventFields cannot hold too many, and is not counted.
MIN_VALUE_BYTES = 2


def tolerant(message_type: Any, limit: int, max_fields: int = 10_000) -> Callable[[bytes], Any]:
    """The deserializer grpc calls on the event loop: cheap checks only, a large request deferred."""

    def parse(data: bytes) -> Any:
        if len(data) > limit:
            return Oversized(len(data), limit)
        if len(data) > OFFLOAD_BYTES:
            # parsed on the decoding threads (api/offload.py)
            return Deferred(data, parse_now, message_type.DESCRIPTOR)
        return parse_now(data)

    def parse_now(data: bytes) -> Any:
        if len(data) >= MIN_VALUE_BYTES * max_fields:
            try:
                check(data, message_type.DESCRIPTOR, max_fields)
            except TooManyFields as exc:
                return exc
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
    if isinstance(request, Deferred):
        request = request.parse(request.data)
    if isinstance(request, TooManyFields):
        raise InvalidArgument(
            f"{request.where} makes the event more than {request.limit} fields (Struct values), over "
            "maxEventFields",
            field=request.where,
        )
    if isinstance(request, Undecodable):
        raise _undecodable(request)
    if isinstance(request, Oversized):
        raise ResourceExhausted(
            f"the request is {request.size} bytes, over maxMessageBytes ({request.limit})",
            reason="MESSAGE_TOO_LARGE",
        )
    return request
