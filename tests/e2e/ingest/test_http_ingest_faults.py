"""The HTTP ingest's guarantees, broken on purpose: the store stopped under an SDK, and kill -9 after a 200.

- PostgreSQL stopped: the sidecar answers 503 with Retry-After (never 200 for what it did not
  commit); rudder-sdk-python keeps the batch, retries, and once the store is back the batch is
  delivered once.
- A real sidecar process SIGKILLed right after answering 200s: after the restart every acknowledged
  event reaches Trengo (the simulator) exactly once.
And the request's trace: a server span continuing the caller's traceparent, linked from the delivery.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest

from sidecar.observe.metrics import install_metrics
from sidecar.simulator import SimulatorControl, SimulatorThread
from sidecar.simulator.otlp import attributes, serve
from tests.support.harness import SidecarThread, free_port
from tests.support.ingest_helpers import (
    SUBJECT,
    WRITE_KEY,
    all_deliveries,
    identify,
    ingest_config,
    post,
    url_of,
)
from tests.support.postgres import Postgres
from tests.support.queue_helpers import QUEUE_TEMPLATES, wait_for
from tests.support.queue_procs import sidecar_process
from tests.support.sdk_clients import rudder_python
from trengo.sidecar.v1 import sidecar_pb2 as pb

PEOPLE = 5


def _answered_503(registry: object, at_least: int) -> bool:
    scrape = generate_latest(registry).decode()  # type: ignore[arg-type]
    line = 'trengo_sidecar_http_requests_total{route="/v1/batch",status="503"} '
    found = [float(row.split()[-1]) for row in scrape.splitlines() if row.startswith(line)]
    return bool(found) and found[0] >= at_least


@pytest.mark.timeout(420)
def test_with_the_store_stopped_the_sdk_gets_503_then_its_retried_batch_is_delivered_once(
    make_sidecar: Callable[..., SidecarThread], control: SimulatorControl, pg_url: str, postgres: Postgres
):
    thread = make_sidecar(**ingest_config(pg_url))
    registry = install_metrics(thread.sidecar, process=False)  # type: ignore[arg-type]
    postgres.stop()
    try:
        refused = post(url_of(thread), "batch", {"batch": [identify(99)]})
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["Retry-After"]) >= 1 and refused.json()["code"] == "STORE_UNAVAILABLE"
        with ThreadPoolExecutor(1) as pool:
            sending = pool.submit(rudder_python, url_of(thread), WRITE_KEY, range(PEOPLE), 10)
            wait_for(lambda: _answered_503(registry, 2), "the SDK's batch to be refused with 503", 60)
            assert not sending.done()  # the SDK holds the batch and retries
            postgres.start()
            # The SDK backs off exponentially with full jitter (no cap): its next try may be minutes away
            # when the store took a while to come back on a loaded machine.
            assert sending.result(300) == []
    finally:
        if not postgres.running():
            postgres.start()
    wait_for(lambda: len(control.tickets()) >= PEOPLE, f"{PEOPLE} tickets", 60)
    assert sorted(c["identifier"] for c in control.contacts()) == [
        f"p{n:03d}@example.com" for n in range(PEOPLE)
    ]
    assert [t["subject"] for t in control.tickets()] == [SUBJECT] * PEOPLE
    statuses = all_deliveries(thread.stub()[1])
    assert len(statuses) == 2 * PEOPLE and {s.state for s in statuses} == {pb.DELIVERY_STATE_DELIVERED}
    assert "p099@example.com" not in {c["identifier"] for c in control.contacts()}  # the 503'd one


def _order_batch(first: int, people: int) -> list[dict[str, object]]:
    """For each person an identify, then a track "Order" whose ticket subject names its number."""
    events: list[dict[str, object]] = []
    for n in range(first, first + people):
        person = f"k{n:04d}"
        email = f"{person}@example.com"
        events.append({"type": "identify", "userId": person, "messageId": f"id-{person}",
                       "traits": {"email": email, "name": person}})  # fmt: skip
        events.append({"type": "track", "userId": person, "messageId": f"tr-{person}", "event": "Order",
                       "properties": {"n": n}, "context": {"traits": {"email": email}}})  # fmt: skip
    return events


@pytest.mark.timeout(240)
def test_a_sigkill_right_after_a_200_loses_no_acknowledged_event_and_sends_none_twice(
    sim: SimulatorThread, control: SimulatorControl, tmp_path: Path
):
    http = f"127.0.0.1:{free_port()}"
    config = {**ingest_config(f"sqlite:///{tmp_path}/state.db"), "httpListen": http,
              "eventTemplateMap": QUEUE_TEMPLATES, "queueConcurrency": 1, "queueLeaseSeconds": 3,
              "requestTimeoutSeconds": 2}  # fmt: skip
    process = sidecar_process(tmp_path, sim.base_url, "ingest-crash", **config).start()
    acknowledged: list[str] = []
    try:
        with httpx.Client(base_url=f"http://{http}", auth=(WRITE_KEY, ""), timeout=30) as client:
            for batch in range(10):
                events = _order_batch(batch * 20, 20)
                answer = client.post("/v1/batch", json={"batch": events})
                assert answer.status_code == 200 and answer.json()["accepted"] == 40, answer.text
                acknowledged += [str(e["messageId"]) for e in events]
        process.kill()  # right after the last 200: most events are still queued
        delivered_before = len(control.tickets())
        assert delivered_before < 200, "the queue drained before the kill: the test proves nothing"
        process.start()
        stub = process.stub()
        # Flaky cause (seen twice under load): this waited for 200 tickets. But the worker marks a ticket
        # write durably *before* it goes out (mark_sending), so a kill between that commit and the
        # request leaving the sidecar leaves a track FAILED as TRENGO_OUTCOME_UNKNOWN whose ticket
        # Trengo never got: 199 tickets, forever. The sidecar is right not to resend it blindly; the
        # test now waits for what is promised, every acknowledged event settled, and checks both cases.
        statuses = wait_for(lambda: _settled(all_deliveries(stub), acknowledged), "every event settled", 180)
        wait_for(lambda: all(r["status"] is not None for r in control.requests()), "requests to end", 10)
    finally:
        process.stop()
    unknown = [s for s in statuses.values() if s.state != pb.DELIVERY_STATE_DELIVERED]
    # Only the one write in flight at the kill may have lost its answer (its outcome unknown).
    assert len(unknown) <= 1 and all(s.error.reason == "TRENGO_OUTCOME_UNKNOWN" for s in unknown), unknown
    tracks = [s for m, s in statuses.items() if m.startswith("tr-")]
    delivered = {_subject(s.message_id) for s in tracks if s.state == pb.DELIVERY_STATE_DELIVERED}
    maybe = {_subject(s.message_id) for s in tracks if s in unknown}
    subjects = Counter(t["subject"] for t in control.tickets())
    assert max(subjects.values()) == 1, subjects  # none twice
    assert delivered <= set(subjects) <= delivered | maybe  # every delivered one; the unknown one, maybe
    assert len(delivered | maybe) == 200
    # A contact create is never left unknown (searched for before it is sent again): all 200, once each.
    assert sorted(c["identifier"] for c in control.contacts()) == [
        f"k{n:04d}@example.com" for n in range(200)
    ]


def _subject(message_id: str) -> str:
    return f"Order {int(message_id.removeprefix('tr-k'))}"


def _settled(found: list[pb.DeliveryStatus], acknowledged: list[str]) -> dict[str, pb.DeliveryStatus] | None:
    """Statuses by message_id once every acknowledged event (and no other) is delivered or failed."""
    statuses = {s.message_id: s for s in found}
    terminal = all(s.state in (pb.DELIVERY_STATE_DELIVERED, pb.DELIVERY_STATE_FAILED) for s in found)
    return statuses if terminal and sorted(statuses) == sorted(acknowledged) else None


def test_a_request_span_continues_the_callers_traceparent_and_the_delivery_links_to_it(
    sim: SimulatorThread, control: SimulatorControl, tmp_path: Path
):
    server, receiving, port = serve()
    http = f"127.0.0.1:{free_port()}"
    config = {**ingest_config(f"sqlite:///{tmp_path}/state.db"), "httpListen": http}
    process = sidecar_process(tmp_path, sim.base_url, "ingest-traced", **config)
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_BSP_SCHEDULE_DELAY": "50"}
    process.env = env
    trace_id, caller = secrets.token_hex(16), secrets.token_hex(8)
    try:
        process.start()
        answer = post(f"http://{http}", "batch", {"batch": [identify(7)]},
                      headers={"traceparent": f"00-{trace_id}-{caller}-01"})  # fmt: skip
        assert answer.status_code == 200, answer.text

        def found() -> list[Any]:
            spans = receiving.spans()
            request = [s for s in spans if s.trace_id.hex() == trace_id and s.name == "POST /v1/batch"]
            linked = [s for s in spans if s.name == "deliver queued" and s.links]
            return [request[0], linked[0]] if request and linked else []

        request, delivery = wait_for(found, "the request's span and the delivery's", 30)
    finally:
        process.stop()
        server.stop(0)
    assert request.parent_span_id.hex() == caller and request.kind == request.SPAN_KIND_SERVER
    values = attributes(request.attributes)
    assert values["http.route"] == "/v1/batch" and values["http.response.status_code"] == 200
    assert values["trengo_sidecar.events.accepted"] == 1
    assert not any(WRITE_KEY in str(v) for v in values.values())
    [link] = delivery.links
    assert link.trace_id.hex() == trace_id and link.span_id == request.span_id
