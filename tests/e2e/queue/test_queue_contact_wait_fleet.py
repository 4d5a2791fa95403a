"""Tracks accepted on one pod wait for the identify another pod accepts later: two real sidecar
processes on one PostgreSQL, the simulator as Trengo (issue 20, part 3)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from sidecar.simulator import SimulatorThread
from tests.support.queue_helpers import QUEUE_TEMPLATES, identify, order, settled, wait_for
from tests.support.queue_procs import sidecar_process
from trengo.sidecar.v1 import sidecar_pb2 as pb

PEOPLE = 8
CONFIG = {
    "eventTemplateMap": QUEUE_TEMPLATES,
    "queueConcurrency": 2,
    "queuePollSeconds": 0.1,
    "queueRetryBaseSeconds": 0.1,
    "queueRetryMaxSeconds": 0.5,
}


@pytest.mark.timeout(150)
def test_tracks_on_one_pod_wait_for_identifies_accepted_later_on_another(
    sim: SimulatorThread, control, tmp_path: Path, pg_url: str
):
    fleet = [sidecar_process(tmp_path, sim.base_url, f"pod{i}", store=pg_url, **CONFIG) for i in (0, 1)]
    for process in fleet:
        process.start()
    try:
        a, b = (process.stub() for process in fleet)
        firsts = [a.Enqueue(order(f"p{p}", 3 * p + 1), timeout=10).message_id for p in range(PEOPLE)]
        ids = firsts + [b.Enqueue(order(f"p{p}", 3 * p + 2), timeout=10).message_id for p in range(PEOPLE)]

        def all_waiting() -> bool:
            found = [a.GetDelivery(pb.GetDeliveryRequest(message_id=m), timeout=5) for m in firsts]
            # Tried and not delivered (there is no contact yet): each attempt so far met CONTACT_NOT_FOUND.
            return all(s.attempts >= 1 and s.error.reason == "CONTACT_NOT_FOUND" for s in found)

        wait_for(all_waiting, "every person's first track to wait for its contact", 60)
        assert control.tickets() == []
        # Each person's identify arrives later, on the other pod, with one more track behind it.
        ids += [b.Enqueue(identify(f"p{p}"), timeout=10).message_id for p in range(PEOPLE)]
        ids += [a.Enqueue(order(f"p{p}", 3 * p + 3), timeout=10).message_id for p in range(PEOPLE)]
        statuses = settled(b, ids, timeout=90)
    finally:
        for process in fleet:
            process.stop()
    assert {s.state for s in statuses.values()} == {pb.DELIVERY_STATE_DELIVERED}
    identifiers = sorted(c["identifier"] for c in control.contacts())
    assert identifiers == sorted(f"p{p}@example.com" for p in range(PEOPLE))  # one contact each
    creates = [r for r in control.requests(method="POST") if r["path"].endswith("/contacts")]
    assert len(creates) == PEOPLE
    created: dict[str, list[int]] = defaultdict(list)
    for ticket in sorted(control.tickets(), key=lambda t: t["id"]):
        created[ticket["contact"]["identifier"].split("@")[0]].append(int(ticket["subject"].split()[1]))
    assert created == {f"p{p}": [3 * p + 1, 3 * p + 2, 3 * p + 3] for p in range(PEOPLE)}
