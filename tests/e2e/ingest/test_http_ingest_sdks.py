"""The real RudderStack and Segment SDKs, pointed at a real sidecar's httpListen, deliver to the simulator.

Each SDK sends identify and track for 50 people and flushes; the simulator then holds exactly 50
contacts and 50 tickets with the template's subject. Once on SQLite, once on PostgreSQL with two
sidecars behind the same store (half the people through each).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sidecar.simulator import SimulatorControl
from tests.support.harness import SidecarThread
from tests.support.ingest_helpers import SUBJECT, WRITE_KEY, all_deliveries, deliveries, ingest_config, url_of
from tests.support.queue_helpers import wait_for
from tests.support.sdk_clients import SDKS, SEND
from trengo.sidecar.v1 import sidecar_pb2 as pb

PEOPLE = 50


def _settled(control: SimulatorControl) -> bool:
    return len(control.contacts()) >= PEOPLE and len(control.tickets()) >= PEOPLE


def _check_simulator(control: SimulatorControl) -> None:
    wait_for(lambda: _settled(control), f"{PEOPLE} contacts and {PEOPLE} tickets", 120)
    contacts, tickets = control.contacts(), control.tickets()
    assert sorted(c["identifier"] for c in contacts) == [f"p{n:03d}@example.com" for n in range(PEOPLE)]
    assert sorted(c["name"] for c in contacts) == sorted(f"Person {n}" for n in range(PEOPLE))
    assert len(tickets) == PEOPLE and {t["subject"] for t in tickets} == {SUBJECT}
    assert len({t["contact_id"] for t in tickets}) == PEOPLE


@pytest.mark.parametrize("sdk", SDKS)
def test_an_sdk_on_sqlite_delivers_identify_and_track_for_fifty_people(
    sdk: str, make_sidecar: Callable[..., SidecarThread], control: SimulatorControl, tmp_path: Path
):
    thread = make_sidecar(**ingest_config(f"sqlite:///{tmp_path}/state.db"))
    errors = SEND[sdk](url_of(thread), WRITE_KEY, range(PEOPLE))
    assert errors == []
    _check_simulator(control)
    # Flaky cause (seen once: 101 statuses): a ticket exists in the simulator before the worker stores
    # its job DELIVERED, and all_deliveries lists state by state, so a job settling between two lists
    # was counted as DELIVERING and again as DELIVERED. Wait for the store to settle, then check.
    stub = thread.stub()[1]
    wait_for(lambda: len(deliveries(stub, pb.DELIVERY_STATE_DELIVERED)) >= 2 * PEOPLE, "100 delivered", 30)
    statuses = all_deliveries(stub)
    assert len(statuses) == 2 * PEOPLE
    assert {s.state for s in statuses} == {pb.DELIVERY_STATE_DELIVERED}


@pytest.mark.parametrize("sdk", SDKS)
def test_an_sdk_through_two_sidecars_on_postgresql_delivers_each_event_once(
    sdk: str, make_sidecar: Callable[..., SidecarThread], control: SimulatorControl, pg_url: str
):
    first, second = (make_sidecar(**ingest_config(pg_url)) for _ in range(2))
    half = PEOPLE // 2
    assert SEND[sdk](url_of(first), WRITE_KEY, range(half)) == []
    assert SEND[sdk](url_of(second), WRITE_KEY, range(half, PEOPLE)) == []
    _check_simulator(control)
    assert len(control.requests(path_prefix="/api/v2/tickets", method="POST")) == PEOPLE


@pytest.mark.parametrize("sdk", SDKS)
def test_an_sdk_with_a_wrong_key_gets_401_and_nothing_is_queued(
    sdk: str, make_sidecar: Callable[..., SidecarThread], control: SimulatorControl, tmp_path: Path
):
    thread = make_sidecar(**ingest_config(f"sqlite:///{tmp_path}/state.db"))
    errors = SEND[sdk](url_of(thread), "wk-not-a-key-9Xq", range(3))
    assert errors == [401] * 6  # every event's batch refused, and not retried into success
    assert all_deliveries(thread.stub()[1]) == [] and control.requests() == []
