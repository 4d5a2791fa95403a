"""The benchmark's call-count scenarios, as a test: Trengo calls per event, never wall-clock numbers.

Runs the same code as `python -m benchmarks` (its first part) against the test simulator and a
sidecar on a thread, with a handful of people, so it takes a second or two.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from benchmarks import CUSTOM_FIELDS, PHONE_REGION, TEMPLATES
from benchmarks.scenarios import calls_per_event
from sidecar.simulator import SimulatorThread
from tests.support.harness import SidecarThread


def test_calls_per_event_beat_the_reference(
    sim: SimulatorThread, make_sidecar: Callable[..., SidecarThread]
) -> None:
    sidecar = make_sidecar(
        enableDedup=True,
        eventTemplateMap=TEMPLATES,
        customFieldMap=CUSTOM_FIELDS,
        defaultPhoneRegion=PHONE_REGION,
    )
    rows = {row.key: row for row in asyncio.run(calls_per_event(sidecar.address, sim.base_url, people=5))}

    assert rows["warm_track"].per_event == 1.0  # the ticket only: the contact comes from the cache
    assert rows["warm_identify"].per_event == 1.0  # a changed name: the update only, no search
    assert rows["repeat_identify"].per_event == 0.0  # the name the sidecar wrote: nothing to send
    assert rows["new_identify_track"].per_event == 2.0  # e-mail: the create, then the ticket (reference: 4)
    assert rows["new_identify_track_phone"].per_event == 3.0  # phone: search + create, then the ticket
    assert rows["warm_track_phone"].per_event == 1.0  # "(06) 1234-5678" after "06-1234 5678": one person
    assert rows["warm_track_assigned"].per_event == 2.0  # the ticket and its /assign (teams listed once)
    assert rows["new_identify"].per_event == 1.0  # e-mail: the create alone (reference: search + create)
    # Follow-ups: the note and two labels after the ticket; two custom fields (the name unchanged:
    # no update), and nothing at all when the same name and values come again.
    assert rows["warm_track_followups"].per_event == 4.0
    assert rows["warm_identify_fields"].per_event == 2.0
    assert rows["warm_identify_fields_same"].per_event == 0.0
    # One listing on the sidecar's first event, for every event after it.
    assert rows["channels"].calls == 1
    for row in rows.values():
        assert row.per_event <= row.reference or row.key == "channels", row
