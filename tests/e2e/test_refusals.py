"""Calls the sidecar refuses before delivering anything still leave a trace (issue 10, items 12 and 13).

Every refusal gets its log line and its count in ``trengo_sidecar_rpcs_total``, as docs/operating.md
promises one line per RPC: a caller without the authToken, a call during the drain, a request over
maxMessageBytes. The Deliver stream refuses an empty or repeated ``id`` per event and goes on.
A call refused during the drain is checked in tests/e2e/test_shutdown.py, with the real process.
"""

from __future__ import annotations

import json
import logging
import queue
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from sidecar.observe.logs import JsonFormatter
from sidecar.observe.metrics import MetricsServer, start_metrics
from tests.support.grpc_helpers import failure
from tests.support.harness import struct
from tests.support.metrics import scrape, value
from tests.support.processes import track
from trengo.sidecar.v1 import sidecar_pb2 as pb

RPCS = "trengo_sidecar_rpcs_total"
AUTH_TOKEN = "caller-secret-7f3a"


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def logged() -> Iterator[Callable[..., list[dict[str, Any]]]]:
    """logged(**fields): the sidecar's log lines so far that carry all of ``fields``."""
    handler = Lines()
    logger = logging.getLogger("sidecar")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)

    def matching(**fields: Any) -> list[dict[str, Any]]:
        return [line for line in handler.lines if all(line.get(k) == v for k, v in fields.items())]

    yield matching
    logger.removeHandler(handler)
    logger.setLevel(previous)


@pytest.fixture
def metered(make_sidecar: Any) -> Iterator[Callable[..., tuple[Any, MetricsServer]]]:
    servers: list[MetricsServer] = []

    def make(**config: Any) -> tuple[Any, MetricsServer]:
        thread = make_sidecar(**config)
        servers.append(start_metrics("127.0.0.1:0", thread.sidecar))
        return thread, servers[-1]

    yield make
    for server in servers:
        server.close()


def eventually(lines: Callable[[], list[dict[str, Any]]], count: int = 1) -> list[dict[str, Any]]:
    """The log line is written just after the answer leaves (call_soon): poll for it."""
    ends = time.monotonic() + 5
    while len(found := lines()) < count and time.monotonic() < ends:
        time.sleep(0.01)
    return found


def identify(email: str = "ann@example.com", **traits: Any) -> pb.IdentifyRequest:
    return pb.IdentifyRequest(traits=struct({"email": email, **traits}))


# --- item 12: refused calls are logged and counted ------------------------------------------------


def test_a_caller_without_the_auth_token_is_logged_and_counted(metered, control, logged):
    thread, server = metered(authToken=AUTH_TOKEN)
    channel, stub = thread.stub()
    with channel:
        for call in (lambda: stub.Identify(identify(), timeout=5), lambda: stub.Track(track(), timeout=5)):
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert failure(caught.value).reason == "CALLER_UNAUTHENTICATED"
        with pytest.raises(grpc.RpcError):
            stub.Identify(identify(), timeout=5, metadata=(("authorization", "Bearer wrong"),))
    lines = eventually(lambda: logged(msg="handled", code="UNAUTHENTICATED"), 3)
    assert [line["rpc"] for line in lines] == ["Identify", "Track", "Identify"]
    assert {line["reason"] for line in lines} == {"CALLER_UNAUTHENTICATED"}
    assert all(line["request_id"] for line in lines) and all(line["level"] == "warning" for line in lines)
    text, samples = scrape(server.url)
    assert value(samples, RPCS, method="Identify", code="UNAUTHENTICATED") == 2
    assert value(samples, RPCS, method="Track", code="UNAUTHENTICATED") == 1
    assert AUTH_TOKEN not in text and "wrong" not in json.dumps(lines)
    assert control.requests() == []


@pytest.mark.parametrize("method", ["Identify", "SendEvent"])
def test_a_request_over_max_message_bytes_is_refused_by_the_sidecar_logged_and_counted(
    metered, control, logged, method
):
    thread, server = metered(maxMessageBytes=64 * 1024)
    channel, stub = thread.stub()
    blob = "x" * 100_000
    request: Any = (
        identify(blob=blob)
        if method == "Identify"
        else pb.SendEventRequest(event=struct({"type": "identify", "traits": {"email": "a@b.co", "b": blob}}))
    )
    with channel, pytest.raises(grpc.RpcError) as caught:
        getattr(stub, method)(request, timeout=5)
    f = failure(caught.value)
    assert f.code == grpc.StatusCode.RESOURCE_EXHAUSTED and f.reason == "MESSAGE_TOO_LARGE", f
    assert "maxMessageBytes (65536)" in f.message and f.retry_delay is None, f
    [line] = eventually(lambda: logged(msg="handled", rpc=method, code="RESOURCE_EXHAUSTED"))
    assert line["reason"] == "MESSAGE_TOO_LARGE"
    _, samples = scrape(server.url)
    assert value(samples, RPCS, method=method, code="RESOURCE_EXHAUSTED") == 1
    assert control.requests() == []


def test_an_event_over_max_message_bytes_in_a_stream_is_refused_alone(make_sidecar, control, ann, logged):
    thread = make_sidecar(maxMessageBytes=64 * 1024)
    channel, stub = thread.stub()
    with channel:
        answers = list(
            stub.Deliver(
                iter(
                    [
                        pb.DeliverRequest(id="big", identify=identify(blob="x" * 100_000)),
                        pb.DeliverRequest(id="ok", track=track()),
                    ]
                ),
                timeout=10,
            )
        )
    by_id = {a.id: a for a in answers}
    assert len(answers) == 2, answers
    assert by_id[""].error.reason == "MESSAGE_TOO_LARGE"  # not decoded, so its id is not known
    assert by_id["ok"].result.ticket_id > 0
    assert eventually(lambda: logged(msg="handled", rpc="Deliver", reason="MESSAGE_TOO_LARGE"))
    assert len(control.tickets()) == 1


# --- item 13: Deliver ids -----------------------------------------------------------------------------


def test_deliver_refuses_an_empty_or_repeated_id_per_event_and_goes_on(stub, control, ann, logged):
    requests = [
        pb.DeliverRequest(id="a", track=track()),
        pb.DeliverRequest(id="", track=track()),
        pb.DeliverRequest(id="a", track=track()),
        pb.DeliverRequest(id="b", track=track()),
    ]
    answers = list(stub.Deliver(iter(requests), timeout=10))
    assert len(answers) == 4, answers
    errors = [a.error for a in answers if a.WhichOneof("outcome") == "error"]
    results = [a for a in answers if a.WhichOneof("outcome") == "result"]
    assert sorted(a.id for a in results) == ["a", "b"]
    assert len(errors) == 2 and {e.field for e in errors} == {"id"}, errors
    assert {e.code for e in errors} == {grpc.StatusCode.INVALID_ARGUMENT.value[0]}
    assert any("required" in e.message for e in errors) and any("already used" in e.message for e in errors)
    assert len(control.tickets()) == 2  # the refused events wrote nothing
    assert len(eventually(lambda: logged(msg="handled", rpc="Deliver", code="INVALID_ARGUMENT"), 2)) == 2


def test_an_id_refused_as_repeated_does_not_depend_on_the_first_being_answered(stub, control, ann):
    sent: queue.Queue[pb.DeliverRequest | None] = queue.Queue()
    sent.put(pb.DeliverRequest(id="x", track=track()))
    answers = stub.Deliver(iter(sent.get, None), timeout=10)
    assert next(answers).result.ticket_id > 0  # the first is answered before the repeat is sent
    sent.put(pb.DeliverRequest(id="x", track=track()))
    sent.put(None)
    [repeat] = list(answers)
    assert repeat.id == "x" and repeat.error.field == "id", repeat
    assert len(control.tickets()) == 1
