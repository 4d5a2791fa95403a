"""Helpers for the queue's tests: events that name themselves in the ticket they open, and waiting."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tests.support.harness import TEMPLATES, struct
from trengo.sidecar.v1 import sidecar_pb2 as pb
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

# A track "Order" opens a ticket whose subject names the event: "Order <n>".
QUEUE_TEMPLATES = [*TEMPLATES, {"from": "Order", "to": "Order {{ n }}"}]
TERMINAL = (pb.DELIVERY_STATE_DELIVERED, pb.DELIVERY_STATE_FAILED)
# Retries in tenths of a second, so a test of hours of RudderStack's schedule takes seconds.
FAST_QUEUE: dict[str, Any] = {
    "eventTemplateMap": QUEUE_TEMPLATES,
    "queueRetryBaseSeconds": 0.1,
    "queueRetryMaxSeconds": 0.4,
    "queueGiveUpSeconds": 30,
    "queuePollSeconds": 0.1,
    "queueAttemptTimeoutSeconds": 5,
}


def identify(person: str, message_id: str = "", name: str = "") -> pb.EnqueueRequest:
    traits = {"email": f"{person}@example.com", **({"name": name} if name else {})}
    return pb.EnqueueRequest(
        identify=pb.IdentifyRequest(user_id=person, traits=struct(traits), message_id=message_id)
    )


def order(person: str, n: int, message_id: str = "") -> pb.EnqueueRequest:
    context = struct({"traits": {"email": f"{person}@example.com"}})
    return pb.EnqueueRequest(
        track=pb.TrackRequest(
            user_id=person, event="Order", properties=struct({"n": n}), context=context, message_id=message_id
        )
    )


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    ends = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < ends, f"timed out waiting for {what}"
        time.sleep(0.05)


def settled(stub: pb_grpc.TrengoSidecarStub, message_ids: list[str], timeout: float = 30.0) -> dict[str, Any]:
    """Wait until every event is delivered or failed; their statuses by message_id."""

    def done() -> dict[str, Any] | None:
        found = {m: stub.GetDelivery(pb.GetDeliveryRequest(message_id=m), timeout=5) for m in message_ids}
        return found if all(s.state in TERMINAL for s in found.values()) else None

    return dict(wait_for(done, f"{len(message_ids)} events to settle", timeout))


def subject_order(tickets: list[dict[str, Any]]) -> list[int]:
    """The n of each "Order n" ticket, in the order the simulator created them."""
    ordered = sorted(tickets, key=lambda t: t["id"])
    return [int(t["subject"].split()[1]) for t in ordered if (t["subject"] or "").startswith("Order ")]
