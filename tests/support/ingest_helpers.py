"""Helpers for the HTTP ingest's tests: a sidecar with httpListen on, posting to it, reading the queue."""

from __future__ import annotations

import gzip as gzip_module
import json
from collections.abc import Callable
from typing import Any

import httpx

from tests.support.harness import SidecarThread
from tests.support.queue_helpers import FAST_QUEUE, wait_for
from trengo.sidecar.v1 import sidecar_pb2 as pb
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

WRITE_KEY = "wk7F3a9C2e1B84d6"  # tests assert that no part of it shows up anywhere
OTHER_KEY = "Qz5Xv0Lp8Rt2Nm4J"
SUBJECT = "Product Purchased from our store"  # tests/support/harness.py TEMPLATES' subject for this event


def ingest_config(store: str, **overrides: Any) -> dict[str, Any]:
    return {"store": store, "httpListen": "127.0.0.1:0", "writeKeys": [WRITE_KEY, OTHER_KEY], **FAST_QUEUE,
            **overrides}  # fmt: skip


def url_of(thread: SidecarThread) -> str:
    assert thread.sidecar is not None and thread.sidecar.ingest is not None
    return f"http://127.0.0.1:{thread.sidecar.ingest.port}"


def post(url: str, route: str, body: Any, key: str | None = WRITE_KEY, gzip: bool = False,
         raw: bytes | None = None, headers: dict[str, str] | None = None) -> httpx.Response:  # fmt: skip
    """POST as the RudderStack SDKs do: Basic auth with the key as user name, JSON, gzip if asked."""
    data = raw if raw is not None else json.dumps(body).encode()
    sent = {"Content-Type": "application/json", **(headers or {})}
    if gzip:
        data, sent["Content-Encoding"] = gzip_module.compress(data), "gzip"
    auth = (key, "") if key is not None else None
    return httpx.post(f"{url}/v1/{route}", content=data, headers=sent, auth=auth, timeout=30)


def identify(n: int, **extra: Any) -> dict[str, Any]:
    person = f"p{n:03d}"
    return {"type": "identify", "userId": person, "messageId": f"id-{person}",
            "traits": {"email": f"{person}@example.com", "name": f"Person {n}"}, **extra}  # fmt: skip


def track(n: int, event: str = "Product Purchased", **extra: Any) -> dict[str, Any]:
    person = f"p{n:03d}"
    return {"type": "track", "userId": person, "messageId": f"tr-{person}", "event": event,
            "properties": {"revenue": n}, "context": {"traits": {"email": f"{person}@example.com"}},
            **extra}  # fmt: skip


def deliveries(stub: pb_grpc.TrengoSidecarStub, state: int) -> list[pb.DeliveryStatus]:
    found: list[pb.DeliveryStatus] = []
    token = ""
    while True:
        page = stub.ListDeliveries(
            pb.ListDeliveriesRequest(state=state, page_token=token, limit=1000), timeout=10
        )
        found += page.deliveries
        token = page.next_page_token
        if not token:
            return found


def all_deliveries(stub: pb_grpc.TrengoSidecarStub) -> list[pb.DeliveryStatus]:
    states = (pb.DELIVERY_STATE_QUEUED, pb.DELIVERY_STATE_DELIVERING, pb.DELIVERY_STATE_RETRYING,
              pb.DELIVERY_STATE_DELIVERED, pb.DELIVERY_STATE_FAILED)  # fmt: skip
    return [d for state in states for d in deliveries(stub, state)]


def wait_delivered(
    stub: pb_grpc.TrengoSidecarStub, count: int, timeout: float = 60
) -> list[pb.DeliveryStatus]:
    def done() -> list[pb.DeliveryStatus] | None:
        found = deliveries(stub, pb.DELIVERY_STATE_DELIVERED)
        return found if len(found) >= count else None

    return wait_for(done, f"{count} deliveries", timeout)  # type: ignore[no-any-return]


def wait_simulator(
    count: Callable[[], tuple[int, int]], expected: tuple[int, int], timeout: float = 90
) -> None:
    wait_for(lambda: count() == expected or None, f"the simulator to hold {expected}", timeout)
