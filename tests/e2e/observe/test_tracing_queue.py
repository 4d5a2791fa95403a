"""Traces of queued deliveries: the sidecar CLI on a SQLite store, exporting to a real OTLP/gRPC receiver.

An Enqueue continues the caller's trace and stores its context with the event; the worker's delivery,
which may run hours later, is a trace of its own whose span links back to the Enqueue's span, with the
Trengo calls as its children.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from sidecar.simulator.otlp import attributes
from tests.support import tracing as traces
from tests.support.harness import EMAIL_CHANNEL, TOKEN
from tests.support.queue_helpers import FAST_QUEUE, identify, order, settled, wait_for
from tests.support.tracing import SERVICE, parent, spans_of
from trengo.sidecar.v1 import sidecar_pb2 as pb

# test_tracing's fixtures, used here too: the OTLP receiver and the traced sidecar CLI.
receiver, start_traced = traces.receiver, traces.start_traced


def delivery_span(receiving: Any, enqueue: Any) -> Any:
    """The "deliver queued" span whose link points at the Enqueue's span."""

    def found() -> Any:
        for span in receiving.spans():
            if span.name == "deliver queued" and any(
                link.trace_id == enqueue.trace_id and link.span_id == enqueue.span_id for link in span.links
            ):
                return span
        return None

    return wait_for(found, "the queued delivery's span")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_queued_delivery_is_a_span_linked_to_the_enqueue_with_the_trengo_calls_under_it(
    start_traced, control, tmp_path: Path, request: pytest.FixtureRequest, backend: str
):
    store = f"sqlite:///{tmp_path}/state.db" if backend == "sqlite" else request.getfixturevalue("pg_url")
    stub, receiving, _ = start_traced(store=store, **FAST_QUEUE)
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    answer = stub.Enqueue(identify("ann", message_id="m-1", name="Ann Lee"),
                          metadata=parent(trace_id, caller_span), timeout=10)
    assert answer.message_id == "m-1"
    assert settled(stub, ["m-1"])["m-1"].state == pb.DELIVERY_STATE_DELIVERED

    [enqueue] = spans_of(receiving, trace_id, 1)  # the delivery is not in the caller's trace
    assert enqueue.name == f"{SERVICE}/Enqueue" and enqueue.parent_span_id.hex() == caller_span
    delivery = delivery_span(receiving, enqueue)
    assert delivery.trace_id != enqueue.trace_id and delivery.parent_span_id == b""
    assert delivery.kind == delivery.SPAN_KIND_CONSUMER
    values = attributes(delivery.attributes)
    assert values["messaging.message.id"] == "m-1" and values["trengo_sidecar.queue.attempt"] == 1
    assert values["trengo_sidecar.queue.outcome"] == "delivered" and "error.type" not in values

    calls = wait_for(lambda: [s for s in receiving.spans() if s.trace_id == delivery.trace_id
                              and s.span_id != delivery.span_id] or None, "the delivery's Trengo calls")
    calls.sort(key=lambda s: s.start_time_unix_nano)
    assert [s.name for s in calls] == ["POST /channels/{id}/contacts"]  # e-mail: created at once
    for call in calls:
        assert call.parent_span_id == delivery.span_id and call.kind == call.SPAN_KIND_CLIENT
        assert delivery.start_time_unix_nano <= call.start_time_unix_nano <= call.end_time_unix_nano
        assert call.end_time_unix_nano <= delivery.end_time_unix_nano
    assert [c["name"] for c in control.contacts()] == ["Ann Lee"]  # what Trengo recorded
    for raw in receiving.raw:
        assert TOKEN.encode() not in raw
        assert b"ann@example.com" not in raw


def test_a_failed_queued_delivery_span_names_the_reason_and_links_to_an_untraced_enqueues_own_trace(
    start_traced, control, tmp_path: Path
):
    stub, receiving, _ = start_traced(store=f"sqlite:///{tmp_path}/state.db", **FAST_QUEUE)
    control.add_fault(method="POST", path="/api/v2/tickets", status=422, count=1)
    control.add_contact(name="Bo", identifier="bo@example.com", channel_id=EMAIL_CHANNEL)
    stub.Enqueue(order("bo", 1, message_id="m-422"), timeout=10)  # no traceparent: a root Enqueue span
    assert settled(stub, ["m-422"])["m-422"].state == pb.DELIVERY_STATE_FAILED

    def failed() -> Any:
        return next((s for s in receiving.spans() if s.name == "deliver queued"), None)

    span = wait_for(failed, "the failed delivery's span")
    [enqueue] = [s for s in receiving.spans() if s.name == f"{SERVICE}/Enqueue"]
    [link] = span.links  # the Enqueue started a trace of its own, which the delivery links to
    assert (link.trace_id, link.span_id) == (enqueue.trace_id, enqueue.span_id)
    values = attributes(span.attributes)
    assert values["trengo_sidecar.queue.outcome"] == "failed"
    assert values["error.type"] == "TRENGO_REJECTED"
    assert span.status.code == span.status.STATUS_CODE_ERROR


def test_off_an_enqueue_stores_no_trace_and_the_worker_opens_no_span(
    monkeypatch, make_sidecar, tmp_path: Path
):
    for key in [k for k in os.environ if k.startswith("OTEL_")]:
        monkeypatch.delenv(key)
    thread = make_sidecar(store=f"sqlite:///{tmp_path}/state.db", **FAST_QUEUE)
    _, stub = thread.stub()
    stub.Enqueue(identify("ann", message_id="m-off"), metadata=parent("a" * 32, "b" * 16), timeout=10)
    assert settled(stub, ["m-off"])["m-off"].state == pb.DELIVERY_STATE_DELIVERED
    queue = thread.sidecar.queue
    assert queue.tracing is None and queue.worker is not None and queue.worker.tracing is None
    with sqlite3.connect(tmp_path / "state.db") as db:
        rows = db.execute("SELECT trace FROM queue_deliveries WHERE message_id = 'm-off'").fetchall()
    assert rows == [(None,)]
