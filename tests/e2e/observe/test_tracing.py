"""Traces: the sidecar CLI in a subprocess, configured by OTEL_* only, exporting to a real OTLP/gRPC
receiver (opentelemetry-proto's TraceService on a local port). A caller's W3C traceparent must go on
through the sidecar's server span to its Trengo calls; the token and the search term go nowhere.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
from pathlib import Path

import grpc
import pytest

from sidecar.errors import ConfigError
from sidecar.observe import tracing
from sidecar.simulator.otlp import attributes
from tests.support import tracing as traces
from tests.support.grpc_helpers import failure
from tests.support.harness import EMAIL_CHANNEL, TOKEN, free_port, struct
from tests.support.tracing import (
    SERVICE,
    parent,
    spans_of,
    wait_for,
)
from trengo.sidecar.v1 import sidecar_pb2 as pb

receiver, start_traced = traces.receiver, traces.start_traced  # the fixtures (shared with the queue's)
ROOT = Path(__file__).resolve().parents[3]
EMAIL = "tracy.searched@example.com"








@pytest.fixture
def traced(start_traced):
    return start_traced()






def test_the_callers_trace_goes_on_through_the_sidecar_to_each_trengo_call(traced, control):
    stub, receiving, log = traced
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    identify = pb.IdentifyRequest(traits=struct({"email": EMAIL, "name": "Tracy"}))
    result = stub.Identify(identify, metadata=parent(trace_id, caller_span), timeout=10)
    assert result.action == pb.ACTION_CREATE_CONTACT

    spans = spans_of(receiving, trace_id, 2)  # e-mail: the create, no search before it
    [server] = [s for s in spans if s.name == f"{SERVICE}/Identify"]
    assert server.parent_span_id.hex() == caller_span  # the caller's trace continues
    assert server.kind == server.SPAN_KIND_SERVER
    assert attributes(server.attributes) == {
        "rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": "Identify", "rpc.grpc.status_code": 0,
    }  # fmt: skip
    children = sorted((s for s in spans if s is not server), key=lambda s: s.start_time_unix_nano)
    assert [s.name for s in children] == ["POST /channels/{id}/contacts"]
    for child in children:
        assert child.parent_span_id == server.span_id and child.kind == child.SPAN_KIND_CLIENT
        assert server.start_time_unix_nano <= child.start_time_unix_nano <= child.end_time_unix_nano
        assert child.end_time_unix_nano <= server.end_time_unix_nano
    create = attributes(children[0].attributes)
    assert create["http.request.method"] == "POST" and create["url.template"] == "/channels/{id}/contacts"
    assert create["http.response.status_code"] == 201 and create["trengo_sidecar.attempts"] == 1
    assert create["trengo_sidecar.rate_limit_wait_seconds"] >= 0
    # One span per call made; the channel list was fetched at start by the readiness check, a trace
    # of its own.
    assert [(r["method"], r["path"]) for r in control.requests()] == [
        ("GET", "/api/v2/channels"),
        ("POST", f"/api/v2/channels/{EMAIL_CHANNEL}/contacts"),
    ]
    [check] = [s for s in receiving.spans() if s.name == "GET /channels"]
    assert check.parent_span_id == b"" and check.trace_id != server.trace_id

    [resource] = receiving.resources()[:1]
    assert resource["service.name"] == "sidecar-under-test"

    # The log line of the call carries the same trace.
    lines = wait_for(lambda: [json.loads(line) for line in log.read_text().splitlines()
                              if '"rpc": "Identify"' in line], "the Identify log line")
    assert lines[0]["trace_id"] == trace_id and lines[0]["span_id"] == server.span_id.hex()


def test_retries_and_errors_are_on_the_spans(traced, control):
    stub, receiving, _ = traced
    control.add_contact(name="Tracy", identifier=EMAIL, channel_id=EMAIL_CHANNEL)
    control.add_fault(method="POST", path="/api/v2/tickets", status=503, count=1)
    trace_id = secrets.token_hex(16)
    track = pb.TrackRequest(event="Checked Out", context=struct({"traits": {"email": EMAIL}}))
    stub.Track(track, metadata=parent(trace_id, secrets.token_hex(8)), timeout=10)
    spans = spans_of(receiving, trace_id, 3)
    [ticket] = [s for s in spans if s.name == "POST /tickets"]
    values = attributes(ticket.attributes)
    assert values["trengo_sidecar.attempts"] == 2 and values["http.request.resend_count"] == 1
    assert values["http.response.status_code"] == 201

    control.add_fault(method="POST", path="/api/v2/tickets", status=500, count=50)
    down = secrets.token_hex(16)
    with pytest.raises(grpc.RpcError):
        stub.Track(track, metadata=parent(down, secrets.token_hex(8)), timeout=10)
    [failed] = [s for s in spans_of(receiving, down, 2) if s.name == "POST /tickets"]
    values = attributes(failed.attributes)
    assert values["error.type"] == "TRENGO_UNAVAILABLE" and values["trengo_sidecar.attempts"] == 5
    assert values["http.response.status_code"] == 500
    assert failed.status.code == failed.status.STATUS_CODE_ERROR
    control.clear_faults()

    refused = secrets.token_hex(16)
    unmapped = pb.TrackRequest(event="Page Viewed", context=struct({"traits": {"email": EMAIL}}))
    with pytest.raises(grpc.RpcError) as caught:
        stub.Track(unmapped, metadata=parent(refused, secrets.token_hex(8)), timeout=10)
    assert failure(caught.value).reason == "EVENT_NOT_MAPPED"
    [server] = spans_of(receiving, refused, 1)
    code = attributes(server.attributes)["rpc.grpc.status_code"]
    assert code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert server.status.code == server.status.STATUS_CODE_ERROR
    assert attributes(server.attributes)["error.type"] == "EVENT_NOT_MAPPED"
    assert "Page Viewed" not in str(server)  # the reason, never the message (it quotes the request)


def test_a_call_made_while_recovering_from_an_error_is_not_marked_failed(traced, control):
    """A lost create answer is resolved by a search, sent from inside the handler of that error."""
    stub, receiving, _ = traced
    control.add_fault(method="POST", path=f"/api/v2/channels/{EMAIL_CHANNEL}/contacts", drop=True, after=True)
    trace_id = secrets.token_hex(16)
    identify = pb.IdentifyRequest(traits=struct({"email": EMAIL, "name": "Tracy"}))
    assert stub.Identify(identify, metadata=parent(trace_id, secrets.token_hex(8)), timeout=10).contact_id
    spans = sorted(spans_of(receiving, trace_id, 3), key=lambda s: s.start_time_unix_nano)
    assert [s.name for s in spans[1:]] == ["POST /channels/{id}/contacts", "GET /contacts"]
    lost, search = spans[1], spans[2]
    assert attributes(lost.attributes)["error.type"] == "TRENGO_OUTCOME_UNKNOWN"
    assert "error.type" not in attributes(search.attributes)
    assert search.status.code == search.status.STATUS_CODE_UNSET


def test_a_deliver_stream_is_one_server_span_with_its_events_trengo_calls_under_it(traced, control):
    stub, receiving, _ = traced
    control.add_contact(name="Tracy", identifier=EMAIL, channel_id=EMAIL_CHANNEL)
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    track = pb.TrackRequest(event="Checked Out", context=struct({"traits": {"email": EMAIL}}))
    requests = [pb.DeliverRequest(id=str(n), track=track) for n in range(2)]
    answers = list(stub.Deliver(iter(requests), metadata=parent(trace_id, caller_span), timeout=10))
    assert [a.WhichOneof("outcome") for a in answers] == ["result", "result"]
    spans = spans_of(receiving, trace_id, 4)  # the stream, the search, two tickets
    [server] = [s for s in spans if s.name == f"{SERVICE}/Deliver"]
    assert server.parent_span_id.hex() == caller_span
    tickets = [s for s in spans if s.name == "POST /tickets"]
    assert len(tickets) == 2 and all(t.parent_span_id == server.span_id for t in tickets)


def test_neither_the_token_nor_the_search_term_reaches_the_collector(traced, control):
    stub, receiving, _ = traced
    trace_id = secrets.token_hex(16)
    stub.Identify(pb.IdentifyRequest(traits=struct({"email": EMAIL})), metadata=parent(trace_id, "1" * 16),
                  timeout=10)
    # Someone the sidecar has not seen: the track searches (an e-mail identify creates at once).
    other = "tracy.other@example.com"
    control.add_contact(name="Other", identifier=other, channel_id=EMAIL_CHANNEL)
    stub.Track(pb.TrackRequest(event="Checked Out", context=struct({"traits": {"email": other}})),
               metadata=parent(trace_id, "2" * 16), timeout=10)
    spans_of(receiving, trace_id, 5)  # two server spans, the create, the search, the ticket
    assert any(b"/contacts" in raw for raw in receiving.raw)  # the search was traced, as a template
    for raw in receiving.raw:
        assert TOKEN.encode() not in raw
        for term in (EMAIL, other, "tracy.searched", "tracy.searched%40", "tracy.other%40", "term="):
            assert term.encode() not in raw


def test_a_call_the_auth_token_refuses_has_its_span_too(start_traced, control):
    stub, receiving, _ = start_traced(authToken="caller-secret")
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    identify = pb.IdentifyRequest(traits=struct({"email": EMAIL}))
    with pytest.raises(grpc.RpcError) as caught:
        stub.Identify(identify, metadata=parent(trace_id, caller_span), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    [server] = spans_of(receiving, trace_id, 1)
    assert server.name == f"{SERVICE}/Identify" and server.parent_span_id.hex() == caller_span
    values = attributes(server.attributes)
    assert values["error.type"] == "CALLER_UNAUTHENTICATED"
    assert values["rpc.grpc.status_code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    allowed = (*parent(trace_id, caller_span), ("authorization", "Bearer caller-secret"))
    stub.Identify(identify, metadata=allowed, timeout=10)
    spans = spans_of(receiving, trace_id, 3)  # the refused call, then the allowed one and its create
    assert not any(b"caller-secret" in raw for raw in receiving.raw)
    assert len([s for s in spans if s.name == f"{SERVICE}/Identify"]) == 2


def test_spans_still_batched_at_sigterm_are_exported_before_the_process_exits(start_traced, control):
    # A batch delay of a minute: only the shutdown's flush can deliver these spans in time.
    stub, receiving, _, process = start_traced(env={"OTEL_BSP_SCHEDULE_DELAY": "60000"})
    trace_id = secrets.token_hex(16)
    stub.Identify(pb.IdentifyRequest(traits=struct({"email": EMAIL})), metadata=parent(trace_id, "3" * 16),
                  timeout=10)
    time.sleep(0.5)
    assert [s for s in receiving.spans() if s.trace_id.hex() == trace_id] == []  # still batched
    process.send_signal(signal.SIGTERM)
    assert process.wait(20) == 0
    assert len([s for s in receiving.spans() if s.trace_id.hex() == trace_id]) == 2  # the call, its create


def test_an_untraced_call_starts_a_trace_of_its_own(traced):
    stub, receiving, _ = traced
    before = len(receiving.spans())
    stub.Identify(pb.IdentifyRequest(traits=struct({"email": "root@example.com"})), timeout=10)
    new = wait_for(lambda: receiving.spans()[before:] if len(receiving.spans()) >= before + 2 else [],
                   "the untraced call's spans")
    [server] = [s for s in new if s.name == f"{SERVICE}/Identify"]
    assert server.parent_span_id == b"" and len(server.trace_id) == 16


def test_off_unless_an_otlp_endpoint_is_set_and_refused_over_http():
    assert tracing.from_env({}) is None
    assert tracing.from_env({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}) is None
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}
    assert tracing.from_env({**endpoint, "OTEL_SDK_DISABLED": "true"}) is None
    assert tracing.from_env({**endpoint, "OTEL_TRACES_EXPORTER": "none"}) is None
    with pytest.raises(ConfigError, match=r"OTEL_EXPORTER_OTLP_PROTOCOL.*grpc"):
        tracing.from_env({**endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
    on = tracing.from_env(endpoint)
    assert on is not None
    on.shutdown()


def test_off_the_sidecar_adds_nothing_to_the_call_path(monkeypatch, make_sidecar):
    for key in [k for k in os.environ if k.startswith("OTEL_")]:
        monkeypatch.delenv(key)
    off = make_sidecar().sidecar
    assert off.tracing is None and off.client.span_hook is None  # handlers unwrapped, no client hook
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    on = make_sidecar().sidecar
    assert on.tracing is not None and on.client.span_hook is not None


def test_a_queued_delivery_links_back_to_the_enqueuing_trace():
    """The helper for queued deliveries: carrier() at Enqueue, linked_span() at delivery."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    tracer = tracing.Tracing(provider)
    with tracer.tracer.start_as_current_span("Enqueue") as enqueue:
        stored = tracing.carrier()
    assert stored["traceparent"].split("-")[1] == f"{enqueue.get_span_context().trace_id:032x}"
    with tracer.linked_span("deliver queued", stored) as delivery:
        pass
    assert delivery.get_span_context().trace_id != enqueue.get_span_context().trace_id
    [link] = delivery.links
    assert link.context.span_id == enqueue.get_span_context().span_id
    assert tracing.carrier() == {}  # outside any span there is nothing to carry
