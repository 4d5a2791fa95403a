"""WatchDeliveries misses nothing (issue 23): every transition of a retried delivery, live and across a
reconnect, on SQLite and on a real PostgreSQL; and a retry after give-up gets the full schedule again.

The simulator answers Trengo's 503 as an outage (``control.add_fault``); the sidecar's own retries are
off (maxAttempts 1), so each queue attempt is one ticket POST the simulator records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from sidecar.simulator import SimulatorControl
from tests.support.harness import SidecarThread
from tests.support.queue_helpers import FAST_QUEUE, identify, order, settled, wait_for
from trengo.sidecar.v1 import sidecar_pb2 as pb
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

TICKETS = "/api/v2/tickets"
S = pb.DeliveryState
# queued -> delivering -> retrying -> delivering -> failed (2 attempts, given up), twice over, then
# delivered: what one event goes through when its first four attempts meet an outage.
GIVEN_UP = [
    (S.DELIVERY_STATE_DELIVERING, 0), (S.DELIVERY_STATE_RETRYING, 1),
    (S.DELIVERY_STATE_DELIVERING, 1), (S.DELIVERY_STATE_FAILED, 2),
]  # fmt: skip
QUEUED_AGAIN = [(S.DELIVERY_STATE_QUEUED, 0)]
DELIVERED = [(S.DELIVERY_STATE_DELIVERING, 0), (S.DELIVERY_STATE_DELIVERED, 1)]


@pytest.fixture(params=["sqlite", "postgresql"])
def stub(
    request: pytest.FixtureRequest, make_sidecar: Callable[..., SidecarThread], tmp_path: Path
) -> Iterator[pb_grpc.TrengoSidecarStub]:
    sqlite = f"sqlite:///{tmp_path}/state.db"
    store = sqlite if request.param == "sqlite" else request.getfixturevalue("pg_url")
    config: dict[str, Any] = {
        **FAST_QUEUE, "store": store, "maxAttempts": 1, "queueGiveUpAttempts": 2, "queueGiveUpSeconds": 0,
    }  # fmt: skip
    _, found = make_sidecar(**config).stub()
    yield found


class Watch:
    """One WatchDeliveries stream, read in the test's thread."""

    def __init__(self, stub: pb_grpc.TrengoSidecarStub, cursor: int) -> None:
        self.stream = stub.WatchDeliveries(pb.WatchDeliveriesRequest(cursor=cursor), timeout=60)
        self.seen: list[pb.DeliveryUpdate] = []

    def until(self, message_id: str, state: int, attempts: int) -> list[pb.DeliveryUpdate]:
        """Read until ``message_id`` reaches that state with that many attempts; every update read."""
        for update in self.stream:
            self.seen.append(update)
            status = update.status
            if (status.message_id, status.state, status.attempts) == (message_id, state, attempts):
                return self.seen
        raise AssertionError(f"the stream ended before {message_id} was {state}: {self.seen}")

    def close(self) -> None:
        self.stream.cancel()


def transitions(updates: list[pb.DeliveryUpdate], message_id: str) -> list[tuple[int, int]]:
    return [(u.status.state, u.status.attempts) for u in updates if u.status.message_id == message_id]


def failed_for_good(stub: pb_grpc.TrengoSidecarStub, message_id: str) -> bool:
    status = stub.GetDelivery(pb.GetDeliveryRequest(message_id=message_id), timeout=5)
    return status.state == S.DELIVERY_STATE_FAILED


def test_every_transition_of_a_retried_delivery_live_and_across_a_reconnect(
    stub: pb_grpc.TrengoSidecarStub, control: SimulatorControl
) -> None:
    settled(stub, [stub.Enqueue(identify("ann"), timeout=5).message_id])  # the contact exists
    control.add_fault(method="POST", path=TICKETS, status=503, count=4)
    live = Watch(stub, _last_cursor(stub))
    message_id = stub.Enqueue(order("ann", 1, message_id="o-1"), timeout=5).message_id
    accepted = stub.GetDelivery(pb.GetDeliveryRequest(message_id=message_id), timeout=5).accepted_at

    # Live, up to the give-up; then the watcher goes away in the middle of the first retry.
    live.until(message_id, S.DELIVERY_STATE_FAILED, 2)
    assert stub.RetryDeliveries(pb.RetryDeliveriesRequest(message_ids=[message_id]), timeout=5).retried == 1
    live.until(message_id, S.DELIVERY_STATE_RETRYING, 1)
    live.close()
    reconnect_at = live.seen[-1].cursor

    # The retry gets the full schedule again: two attempts, not one, before it fails for good again.
    wait_for(lambda: failed_for_good(stub, message_id), "the retried event to be given up again")
    assert stub.RetryDeliveries(pb.RetryDeliveriesRequest(all_failed=True), timeout=5).retried == 1
    final = settled(stub, [message_id])[message_id]
    assert final.state == S.DELIVERY_STATE_DELIVERED and final.attempts == 1
    assert final.accepted_at == accepted  # when it was accepted, not when it was last retried

    # Reconnected from the last cursor seen: the rest, nothing twice, nothing missed.
    resumed = Watch(stub, reconnect_at)
    resumed.until(message_id, S.DELIVERY_STATE_DELIVERED, 1)
    resumed.close()
    expected = GIVEN_UP + QUEUED_AGAIN + GIVEN_UP + QUEUED_AGAIN + DELIVERED
    assert transitions(live.seen + resumed.seen, message_id) == expected
    mine = [u for u in live.seen + resumed.seen if u.status.message_id == message_id]
    assert all(u.status.accepted_at == accepted for u in mine)
    cursors = [u.cursor for u in live.seen + resumed.seen]
    assert cursors == sorted(set(cursors))

    # And from any cursor in between, the same history from there on.
    whole = Watch(stub, 0)
    whole.until(message_id, S.DELIVERY_STATE_DELIVERED, 1)
    whole.close()
    history = [u for u in whole.seen if u.status.message_id == message_id]
    assert [(u.status.state, u.status.attempts) for u in history] == expected
    middle = history[6]  # after the first "queued again" and its first attempt
    again = Watch(stub, middle.cursor)
    again.until(message_id, S.DELIVERY_STATE_DELIVERED, 1)
    again.close()
    assert transitions(again.seen, message_id) == expected[7:]
    posts = control.requests(path_prefix=TICKETS)
    assert [r["status"] for r in posts if r["method"] == "POST"] == [503, 503, 503, 503, 201]


def _last_cursor(stub: pb_grpc.TrengoSidecarStub) -> int:
    """The cursor of the newest change so far (the identify's), so the live watch starts after it."""
    watch = Watch(stub, 0)
    try:
        for update in watch.stream:
            if update.status.state == S.DELIVERY_STATE_DELIVERED:
                return update.cursor
    except grpc.RpcError:
        pass
    finally:
        watch.close()
    raise AssertionError("no change seen")
