"""How many Struct values a request carries, counted on its wire bytes before protobuf parses it.

A wide Struct is cheap to send and dear to take in: upb parsed a 3 MB Track of 190,000 fields in
0.3 to 2.5 s, all of it holding the GIL, so no other call (a kubelet health Check included) was
answered meanwhile (issue 22). ``maxEventFields`` caps the values per request; counting them here
stops at the cap, so a refused request costs at most that many steps, and parsing a request that
passes is bounded too. protobuf has no such limit of its own (only a nesting depth), hence this
walker: varints and lengths only, guided by the request's descriptor.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

STRUCT = "google.protobuf.Struct"
VALUE = "google.protobuf.Value"
LIST = "google.protobuf.ListValue"
_LENGTH_DELIMITED = 2


class TooManyFields(Exception):
    """More than ``limit`` Struct values: the request is refused before it is parsed."""

    def __init__(self, limit: int, where: str) -> None:
        super().__init__(f"more than {limit} fields")
        self.limit = limit
        self.where = where
        self.id = ""


class _Budget:
    __slots__ = ("left", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit

    def spend(self, where: str) -> None:
        self.left -= 1
        if self.left < 0:
            raise TooManyFields(self.limit, where)


def check(data: bytes, descriptor: Descriptor, limit: int) -> None:
    """Raise TooManyFields if ``data`` (a ``descriptor`` message) holds more than ``limit`` Struct
    values in all. Malformed bytes are left for protobuf to refuse: this only counts."""
    try:
        _message(memoryview(data), descriptor, _Budget(limit), "")
    except (IndexError, ValueError):
        return  # truncated or malformed: protobuf's parse says so, with its own words
    except TooManyFields as exc:
        exc.id = text_field(data, descriptor, "id")  # a Deliver item's answer still echoes its id
        raise


def text_field(data: bytes, descriptor: Descriptor, name: str) -> str:
    """A top-level string field of unparsed bytes ("" when absent or unreadable)."""
    field = descriptor.fields_by_name.get(name)
    if field is None or field.type != FieldDescriptor.TYPE_STRING:
        return ""
    try:
        for number, _, payload in _fields(memoryview(data)):
            if number == field.number and payload is not None:
                return bytes(payload).decode("utf-8", "replace")
    except (IndexError, ValueError):
        pass
    return ""


def _fields(data: memoryview) -> Any:
    """(field number, wire type, payload or None) for each field of one message's bytes."""
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(data, pos)
            yield number, wire, None
        elif wire == 1:
            pos += 8
            yield number, wire, None
        elif wire == _LENGTH_DELIMITED:
            size, pos = _varint(data, pos)
            if pos + size > end:
                raise ValueError("truncated")
            yield number, wire, data[pos : pos + size]
            pos += size
        elif wire == 5:
            pos += 4
            yield number, wire, None
        else:
            raise ValueError("a wire type protobuf 3 does not use")


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _message(data: memoryview, descriptor: Descriptor, budget: _Budget, where: str) -> None:
    for number, wire, payload in _fields(data):
        field = descriptor.fields_by_number.get(number)
        if payload is None or field is None or field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        inner = field.message_type
        if inner is None:
            continue
        at = f"{where}.{field.name}" if where else field.name
        if inner.full_name == STRUCT:
            _struct(payload, budget, at)
        elif inner.full_name == VALUE:
            _value(payload, budget, at)
        elif inner.full_name == LIST:
            _list(payload, budget, at)
        elif wire == _LENGTH_DELIMITED:
            _message(payload, inner, budget, at)


def _struct(data: memoryview, budget: _Budget, where: str) -> None:
    for number, _, entry in _fields(data):
        if number == 1 and entry is not None:  # map<string, Value> fields: entries of key 1, value 2
            for part, _, value in _fields(entry):
                if part == 2 and value is not None:
                    _value(value, budget, where)


def _value(data: memoryview, budget: _Budget, where: str) -> None:
    budget.spend(where)
    for number, _, payload in _fields(data):
        if number == 5 and payload is not None:
            _struct(payload, budget, where)
        elif number == 6 and payload is not None:
            _list(payload, budget, where)


def _list(data: memoryview, budget: _Budget, where: str) -> None:
    for number, _, payload in _fields(data):
        if number == 1 and payload is not None:
            _value(payload, budget, where)
