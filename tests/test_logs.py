"""One log line per RPC, as text or JSON, carrying the request id the caller also gets back."""

from __future__ import annotations

import json
import logging
import time

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from sidecar.observe.logs import JsonFormatter, TextFormatter
from trengo.sidecar.v1 import sidecar_pb2 as pb


class Lines(logging.Handler):
    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__()
        self.setFormatter(formatter)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def json_lines():
    handler = Lines(JsonFormatter())
    logger = logging.getLogger("sidecar")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.lines
    logger.removeHandler(handler)


def identify(email: str) -> pb.IdentifyRequest:
    return pb.IdentifyRequest(
        traits=json_format.ParseDict({"email": email, "name": "A"}, struct_pb2.Struct())
    )


def handled(lines: list[str], count: int) -> list[dict[str, object]]:
    """The "handled" lines, once ``count`` are there: each is written just after its answer is sent."""
    deadline = time.monotonic() + 5
    while sum('"handled"' in line for line in lines) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    found = [json.loads(line) for line in lines if '"handled"' in line]
    assert len(found) == count, found
    return found


def test_one_json_line_per_rpc_with_the_request_id_sent_back(stub, json_lines):
    _, call = stub.Identify.with_call(identify("log@example.com"), metadata=(("x-request-id", "req-42"),))
    assert dict(call.initial_metadata())["x-request-id"] == "req-42"
    with pytest.raises(grpc.RpcError) as caught:
        stub.Identify(pb.IdentifyRequest())
    generated = dict(caught.value.initial_metadata())["x-request-id"]
    lines = handled(json_lines, 2)
    ok, bad = lines
    assert ok["rpc"] == "Identify" and ok["code"] == "OK" and ok["request_id"] == "req-42"
    assert ok["action"] == "create_contact" and ok["trengo_calls"] == 2 and ok["level"] == "info"
    assert bad["code"] == "INVALID_ARGUMENT" and bad["request_id"] == generated and len(generated) == 32
    assert bad["reason"] == "MISSING_IDENTIFIER"
    assert all("test-token" not in line for line in json_lines)


def test_text_lines_quote_values_with_spaces():
    record = logging.LogRecord("sidecar", logging.INFO, __file__, 1, "handled", None, None)
    record.fields = {"rpc": "Track", "error": "two words"}
    line = TextFormatter().format(record)
    assert line.endswith('handled rpc=Track error="two words"')
