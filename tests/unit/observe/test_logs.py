"""One log line per RPC, as text or JSON, carrying the request id the caller also gets back."""

from __future__ import annotations

import logging

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from sidecar.observe.logs import TextFormatter
from tests.support.logs import handled
from trengo.sidecar.v1 import sidecar_pb2 as pb


def identify(email: str) -> pb.IdentifyRequest:
    return pb.IdentifyRequest(
        traits=json_format.ParseDict({"email": email, "name": "A"}, struct_pb2.Struct())
    )




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
