"""The fleet: three real sidecar processes on one PostgreSQL drain one queue, one is SIGKILLed mid-run.

Each person's events are accepted one after another but through different sidecars, and delivered
by whichever sidecar claims them: order per person must hold across the fleet. The simulator
enforces the per-token limit (429 with Retry-After) that the fleet shares through the store.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import grpc
import pytest

from sidecar.simulator import SimulatorThread
from tests.support.grpc_helpers import failure
from tests.support.queue_helpers import QUEUE_TEMPLATES, identify, order, settled, wait_for
from tests.support.queue_procs import sidecar_process
from trengo.sidecar.v1 import sidecar_pb2 as pb
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

PEOPLE, TRACKS = 30, 4
UNSETTLED = (pb.DELIVERY_STATE_QUEUED, pb.DELIVERY_STATE_DELIVERING, pb.DELIVERY_STATE_RETRYING)
CONFIG = {
    "eventTemplateMap": QUEUE_TEMPLATES,
    "queueConcurrency": 2,
    "queueLeaseSeconds": 2,
    "requestTimeoutSeconds": 1.5,
    "queuePollSeconds": 0.1,
    "queueRetryBaseSeconds": 0.1,
    "queueRetryMaxSeconds": 0.5,
    # 30 calls per rolling 3 s stand in for Trengo's 120 a minute, so a saturated drain takes seconds.
    "rateLimitPerMinute": 30,
    "rateLimitWindowSeconds": 3.0,
}
WINDOW = 3.0


@pytest.mark.timeout(180)
def test_three_sidecars_drain_one_queue_in_order_per_person_through_a_sigkill(
    sim: SimulatorThread, control, tmp_path: Path, pg_url: str
):
    # The simulator enforces the very limit the fleet shares through the store: more calls than it
    # allows in a minute are needed, so the drain runs into it, and must never draw a 429.
    control.configure(rate_limit_per_minute=CONFIG["rateLimitPerMinute"], rate_window_seconds=WINDOW)
    # Each sidecar's first call (its channel listing) is held while the events are accepted, so every
    # person's events are all queued before any goes: only the queue keeps their order.
    # (after=True: the simulator counts each call against its limit when it arrives, then waits.)
    control.add_fault(method="GET", path="/api/v2/channels", delay=3.0, count=3, after=True)
    control.add_fault(delay=0.02, count=-1, after=True)  # every call a little slow: the kill lands mid-run
    fleet = [
        sidecar_process(tmp_path, sim.base_url, f"fleet{i}", store=pg_url, **CONFIG).start()
        for i in range(3)
    ]
    try:
        stubs = [process.stub() for process in fleet]
        accepted: dict[str, tuple[str, int]] = {}
        for step in range(TRACKS + 1):  # one event per person per step, a step accepted before the next
            calls = []
            for p in range(PEOPLE):
                n = p * TRACKS + step
                request = identify(f"p{p}") if step == 0 else order(f"p{p}", n)
                stub = stubs[(p + step) % 3]  # a person's events go through all three sidecars
                calls.append((f"p{p}", 0 if step == 0 else n, stub.Enqueue.future(request, timeout=10)))
            accepted.update({call.result().message_id: (person, n) for person, n, call in calls})
        assert len(control.tickets()) == 0
        wait_for(lambda: len(control.tickets()) >= 20, "deliveries under way", 60)
        fleet[0].kill()
        survivor = stubs[1]

        def pending() -> bool:
            return any(
                survivor.ListDeliveries(pb.ListDeliveriesRequest(state=state, limit=1), timeout=5).deliveries
                for state in UNSETTLED
            )

        wait_for(lambda: not pending(), "the fleet to drain the queue", 120)
        statuses = {
            m: survivor.GetDelivery(pb.GetDeliveryRequest(message_id=m), timeout=5) for m in accepted
        }
    finally:
        for process in fleet:
            process.stop()
    control.clear_faults()
    wait_for(lambda: all(r["status"] is not None for r in control.requests()), "held requests to end", 10)

    assert not [r for r in control.requests() if r["status"] == 429], "the fleet drew a 429"
    tickets = control.tickets()
    subjects = [t["subject"] for t in tickets]
    assert len(subjects) == len(set(subjects)), "a ticket was written twice"
    identifiers = sorted(c["identifier"] for c in control.contacts())
    assert identifiers == sorted(f"p{p}@example.com" for p in range(PEOPLE))
    failed = [s for s in statuses.values() if s.state == pb.DELIVERY_STATE_FAILED]
    # Only what the killed sidecar had in flight may fail, and only as an unknown outcome.
    assert all(s.error.reason == "TRENGO_OUTCOME_UNKNOWN" for s in failed), failed
    assert len(failed) <= CONFIG["queueConcurrency"]
    delivered = [m for m, s in statuses.items() if s.state == pb.DELIVERY_STATE_DELIVERED]
    assert len(delivered) + len(failed) == len(accepted) == PEOPLE * (TRACKS + 1)
    created: dict[str, list[int]] = defaultdict(list)
    for ticket in sorted(tickets, key=lambda t: t["id"]):
        created[ticket["contact"]["identifier"].split("@")[0]].append(int(ticket["subject"].split()[1]))
    disorder = {person: ns for person, ns in created.items() if ns != sorted(ns)}
    assert not disorder


@pytest.mark.timeout(120)
def test_a_sidecar_started_with_postgres_down_queues_once_it_is_up(
    sim: SimulatorThread, control, tmp_path: Path, pg_url: str, postgres
):
    postgres.stop()
    try:
        process = sidecar_process(tmp_path, sim.base_url, "late", store=pg_url, **CONFIG)
        process.start()  # health "" serves without the store; the queue waits for it
        stub = process.stub()
        with pytest.raises(grpc.RpcError) as caught:
            stub.Enqueue(identify("ann"), timeout=5)
        found = failure(caught.value)
        assert (found.code, found.reason) == (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE"), found
        postgres.start()
        answer = wait_for(lambda: _enqueued(stub), "Enqueue to work once PostgreSQL is up", 60)
        status = settled(stub, [answer.message_id])[answer.message_id]
        assert status.state == pb.DELIVERY_STATE_DELIVERED
        assert status.result.action == pb.ACTION_CREATE_CONTACT
    finally:
        if not postgres.running():
            postgres.start()
        process.stop()


def _enqueued(stub: pb_grpc.TrengoSidecarStub) -> pb.EnqueueResponse | None:
    try:
        return stub.Enqueue(identify("ann", message_id="late-1"), timeout=5)
    except grpc.RpcError:
        return None
