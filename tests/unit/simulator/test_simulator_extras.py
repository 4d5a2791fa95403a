"""The simulator's labels, custom fields and ticket messages over real sockets: shapes, Laravel's errors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sidecar.simulator import SimulatorControl, SimulatorThread
from tests.support.harness import EMAIL_CHANNEL, TOKEN


@pytest.fixture
def api(sim: SimulatorThread, control: SimulatorControl) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}
    with httpx.Client(base_url=sim.base_url, headers=headers, timeout=5, trust_env=False) as client:
        yield client


@pytest.fixture
def ticket(api: httpx.Client, control: SimulatorControl) -> dict[str, Any]:
    contact = control.add_contact("Ann", "ann@example.com", EMAIL_CHANNEL)
    answer = api.post("/tickets", json={"contact_id": contact["id"], "channel_id": EMAIL_CHANNEL})
    assert answer.status_code == 201
    return dict(answer.json())


def errors(answer: httpx.Response) -> dict[str, list[str]]:
    assert answer.status_code == 422 and answer.json()["message"] == "The given data was invalid."
    return dict(answer.json()["errors"])


def test_labels_and_custom_fields_are_paginated_lists(api, control):
    for n in range(30):
        control.add_label(f"L{n}")
    control.add_custom_field("Plan")
    first, second = api.get("/labels", params={"page": 1}).json(), api.get("/labels?page=2").json()
    assert len(first["data"]) == 25 and len(second["data"]) == 5
    assert first["meta"]["last_page"] == 2 and first["links"]["next"] and second["links"]["next"] is None
    assert set(first["data"][0]) >= {"id", "name"}
    [field] = api.get("/custom_fields").json()["data"]
    assert field == {"id": field["id"], "title": "Plan", "type": "CONTACT", "field_type": "TEXT"}


def test_a_label_is_attached_once_and_unknown_ids_are_laravels_422(api, control, ticket):
    vip = control.add_label("VIP")["id"]
    path = f"/tickets/{ticket['id']}/labels"
    assert api.post(path, json={"label_id": vip}).status_code == 200
    assert api.post(path, json={"label_id": str(vip)}).status_code == 200  # again: no second label
    assert errors(api.post(path, json={"label_id": 99999})) == {
        "label_id": ["The selected label id is invalid."]
    }
    assert errors(api.post(path, json={})) == {"label_id": ["The label id field is required."]}
    assert api.post("/tickets/1/labels", json={"label_id": vip}).status_code == 404
    [stored] = control.tickets()
    assert [label["name"] for label in stored["labels"]] == ["VIP"]


def test_a_note_is_a_message_of_type_note(api, control, ticket):
    path = f"/tickets/{ticket['id']}/messages"
    answer = api.post(path, json={"message": "Order A-1", "internal_note": True})
    assert answer.status_code == 201 and answer.json()["message"]["type"] == "NOTE"
    assert api.post(path, json={"message": "Hello"}).json()["message"]["type"] == "OUTBOUND"
    assert errors(api.post(path, json={"message": "  "})) == {"message": ["The message field is required."]}
    assert "internal_note" in errors(api.post(path, json={"message": "x", "internal_note": "yes"}))
    assert api.post("/tickets/1/messages", json={"message": "x"}).status_code == 404
    [stored] = control.tickets()
    assert [(m["type"], m["message"]) for m in stored["messages"]] == [
        ("NOTE", "Order A-1"),
        ("OUTBOUND", "Hello"),
    ]


def test_contact_custom_fields_take_contact_fields_only(api, control):
    contact = control.add_contact("Ann", "ann@example.com", EMAIL_CHANNEL)
    plan = control.add_custom_field("Plan")["id"]
    ticket_field = control.add_custom_field("Order", type="TICKET")["id"]
    path = f"/contacts/{contact['id']}/custom_fields"
    answer = api.post(path, json={"custom_field_id": plan, "value": "pro"})
    assert answer.status_code == 200 and answer.json()["custom_field_data"] == {str(plan): "pro"}
    invalid = {"custom_field_id": ["The selected custom field id is invalid."]}
    assert errors(api.post(path, json={"custom_field_id": ticket_field, "value": "x"})) == invalid
    assert errors(api.post(path, json={"custom_field_id": 5, "value": "x"})) == invalid
    assert "value" in errors(api.post(path, json={"custom_field_id": plan, "value": 5}))
    assert (
        api.post("/contacts/1/custom_fields", json={"custom_field_id": plan, "value": "x"}).status_code == 404
    )
    assert control.contacts()[0]["custom_field_data"] == {str(plan): "pro"}


def test_the_control_api_refuses_a_taken_id_and_a_bad_type(control):
    control.add_label("VIP", id=7)
    with pytest.raises(httpx.HTTPStatusError):
        control.add_label("Other", id=7)
    with pytest.raises(httpx.HTTPStatusError):
        control.add_custom_field("X", type="ORDER")
    assert [label["id"] for label in control.labels()] == [7] and control.custom_fields() == []
    control.reset()
    assert control.labels() == []
