"""Struct and parsed-JSON values to plain Python under one set of rules: depth limited, numbers finite,
whole numbers below 2^53 as ints (a Struct carries doubles; JavaScript would print 5000, not 5000.0).

Apart from events.py, which builds an Event from what these return.
"""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import struct_pb2

from ..errors import InvalidArgument

# Struct levels. Each is three protobuf message levels, and protobuf stops decoding at 100.
MAX_DEPTH = 24


def struct_to_dict(struct: struct_pb2.Struct, where: str) -> dict[str, Any]:
    """Convert a Struct to plain Python, refusing what JSON cannot carry."""
    return _struct(struct, where, 0)


def _struct(struct: struct_pb2.Struct, where: str, depth: int) -> dict[str, Any]:
    if depth > MAX_DEPTH:
        raise InvalidArgument(f"{where} is nested deeper than {MAX_DEPTH} levels", field=where)
    return {key: _value(value, f"{where}.{key}", depth + 1) for key, value in struct.fields.items()}


def _value(value: struct_pb2.Value, where: str, depth: int) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise InvalidArgument(f"{where} is {number}; JSON numbers must be finite", field=where)
        # Struct carries every number as a double; whole ones become ints so
        # they render and serialise as JavaScript would (5000, not 5000.0).
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return _struct(value.struct_value, where, depth)
    if kind == "list_value":
        if depth > MAX_DEPTH:
            raise InvalidArgument(f"{where} is nested deeper than {MAX_DEPTH} levels", field=where)
        return [_value(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value.list_value.values)]
    return None  # null_value, or a Value with no kind set


def too_many_fields(value: Any, limit: int) -> bool:
    """Whether a parsed JSON event holds more than ``limit`` values below its root, counted as a
    Struct's values are (maxEventFields). Containers are counted by their length, so the walk stops
    within ``limit`` values, however wide the event."""
    seen = 0
    stack = [value]
    while stack:
        node = stack.pop()
        kind = type(node)
        if kind is not dict and kind is not list:
            continue
        seen += len(node)
        if seen > limit:
            return True
        stack.extend(node.values() if kind is dict else node)
    return False


def plain_json(value: Any, where: str) -> Any:
    """A parsed JSON value (json.loads, NaN refused there) under the same rules as a Struct's: depth
    limited, whole numbers below 2^53 as ints, other numbers as floats (a Struct carries doubles).

    The HTTP ingest's events take this path instead of a round trip through a Struct, which costs
    twice as much for the same result. The path to a bad value is built only when there is one.
    """
    try:
        return _plain(value, 0)
    except _BadValue as bad:
        at = where + "".join(reversed(bad.path))
        raise InvalidArgument(bad.problem.format(at=at), field=at) from None


class _BadValue(Exception):
    def __init__(self, problem: str) -> None:
        self.problem = problem
        self.path: list[str] = []


def _plain(value: Any, depth: int) -> Any:
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is dict or kind is list:
        if depth > MAX_DEPTH:
            raise _BadValue(f"{{at}} is nested deeper than {MAX_DEPTH} levels")
        items = value.items() if kind is dict else enumerate(value)
        out: Any = {} if kind is dict else [None] * len(value)
        for key, item in items:
            leaf = type(item)
            if leaf is str or leaf is bool or item is None:  # most values: kept without a call
                out[key] = item
                continue
            try:
                out[key] = _plain(item, depth + 1)
            except _BadValue as bad:
                bad.path.append(f".{key}" if kind is dict else f"[{key}]")
                raise
        return out
    if kind is int and abs(value) < 2**53:
        return value
    try:
        number = float(value)
    except OverflowError:  # an integer past a double's range: a Struct could not carry it either
        raise _BadValue("{at} is too large a number for JSON's doubles") from None
    if not math.isfinite(number):
        raise _BadValue(f"{{at}} is {number}; JSON numbers must be finite")
    return int(number) if number.is_integer() and abs(number) < 2**53 else number
