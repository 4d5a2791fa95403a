"""The simulator answers as Trengo's public captures show (docs/trengo-api.md cites each one):
phones stored in E.164 and shown internationally, digit search, tickets assigned to the token's owner,
notes wrapped in ``message``, archived labels, users, teams and ``/assign``. Real sockets throughout."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from sidecar.simulator import SimulatorControl, SimulatorThread
from sidecar.simulator.people import OWNER_ID

TOKEN = "test-token"
EMAIL, SMS = 405980, 405981


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    with SimulatorThread(tokens=[TOKEN]) as server:
        yield server


@pytest.fixture
def control(sim: SimulatorThread) -> Iterator[SimulatorControl]:
    sim.control.reset()
    yield sim.control
    sim.control.configure(phone_region=None)


@pytest.fixture
def api(sim: SimulatorThread, control: SimulatorControl) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}
    with httpx.Client(base_url=sim.base_url, headers=headers, timeout=5, trust_env=False) as client:
        yield client


def search(api: httpx.Client, term: str) -> list[int]:
    answer = api.get("/contacts", params={"page": 1, "term": term})
    assert answer.status_code == 200
    return [c["id"] for c in answer.json()["data"]]


def test_a_phone_contact_is_stored_as_the_capture_shows(control: SimulatorControl) -> None:
    contact = control.add_contact("Roby", "+972545614020", SMS)
    assert contact["phone"] == "+972545614020"
    assert contact["identifier"] == contact["formatted_phone"] == "+972 54-561-4020"
    assert contact["is_phone"] is True and contact["email"] is None


def test_search_finds_a_phone_by_its_digits_as_rudderstacks_mock_does(
    api: httpx.Client, control: SimulatorControl
) -> None:
    wanted = control.add_contact("Thalmor Bretz", "+98 30311521", SMS)["id"]
    control.add_contact("Someone else", "+31612345678", SMS)
    assert search(api, "9830311521") == [wanted]  # the term in RudderStack's network mocks
    assert search(api, "+98 303-115 21") == [wanted]  # any spelling: digits are compared
    assert search(api, "30311521") == [wanted]  # a substring of the digits
    assert search(api, "Thalmor") == [wanted]  # names by substring, case-insensitively
    assert search(api, "thalmor bretz") == [wanted]
    assert search(api, "9830311599") == []


def test_search_matches_names_and_emails_by_substring_only(api, control):
    named = control.add_contact("Flat 31612345678", "flat@example.com", EMAIL)["id"]
    mailed = control.add_contact("Jo", "jo31612345678@example.com", EMAIL)["id"]
    phoned = control.add_contact("P", "+31612345678", SMS)["id"]
    # Trengo's search is fuzzy: a name or address holding the digits comes back too (the sidecar's
    # match, not the search, keeps them from being taken for the person).
    assert search(api, "31612345678") == [named, mailed, phoned]
    assert search(api, "example.com") == [named, mailed]
    assert search(api, "+31 6 1234") == [phoned]  # a phone-like term: digits of phones only, plus text


def test_a_national_number_is_read_in_the_accounts_region(api, control):
    kept = control.add_contact("A", "06 12345678", SMS)
    assert kept["phone"] == kept["identifier"] == "06 12345678"  # no region: kept as given
    control.configure(phone_region="nl")
    read = control.add_contact("B", "06 87654321", SMS)
    assert (read["phone"], read["identifier"]) == ("+31687654321", "+31 6 87654321")


def test_an_api_ticket_is_assigned_to_the_tokens_owner(api: httpx.Client, control: SimulatorControl) -> None:
    contact = control.add_contact("P", "+31612345678", SMS)
    ticket = api.post("/tickets", json={"contact_id": contact["id"], "channel_id": SMS}).json()
    assert ticket["status"] == "ASSIGNED" and ticket["user_id"] == ticket["assigned_by"] == OWNER_ID
    assert ticket["team_id"] is None
    [owner] = [u for u in control.users() if u["id"] == OWNER_ID]
    assert owner["authorization"] == "OWNER"


def test_teams_and_users_are_paginated_lists(api: httpx.Client, control: SimulatorControl) -> None:
    for n in range(30):
        control.add_team(f"Team {n}")
    first = api.get("/teams", params={"page": 1}).json()
    second = api.get("/teams", params={"page": 2}).json()
    assert len(first["data"]) == 25 and len(second["data"]) == 5
    assert first["links"]["next"] and second["links"]["next"] is None
    agent = control.add_user("agent@example.com", "An Agent")
    users = api.get("/users").json()["data"]
    assert {"id": agent["id"], "email": "agent@example.com"}.items() <= users[-1].items()


def test_assign_to_a_team_or_a_user(api: httpx.Client, control: SimulatorControl) -> None:
    contact = control.add_contact("P", "+31612345678", SMS)
    ticket = api.post("/tickets", json={"contact_id": contact["id"], "channel_id": SMS}).json()
    team = control.add_team("Support")
    agent = control.add_user("agent@example.com", "An Agent")
    path = f"/tickets/{ticket['id']}/assign"
    to_team = api.post(path, json={"type": "team", "team_id": team["id"]})
    assert to_team.status_code == 200
    assert (to_team.json()["team_id"], to_team.json()["user_id"], to_team.json()["status"]) == (
        team["id"], None, "OPEN"
    )
    to_user = api.post(path, json={"type": "user", "user_id": agent["id"]}).json()
    assert (to_user["user_id"], to_user["status"]) == (agent["id"], "ASSIGNED")
    [stored] = control.tickets()
    assert (stored["team_id"], stored["user_id"]) == (team["id"], agent["id"])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "team", "team_id": 999}, "team_id"),
        ({"type": "user", "user_id": 999}, "user_id"),
        ({"type": "team"}, "team_id"),
        ({"type": "group", "team_id": 1}, "type"),
    ],
)
def test_assign_refuses_unknown_targets(api, control, body, field):
    contact = control.add_contact("P", "+31612345678", SMS)
    ticket = api.post("/tickets", json={"contact_id": contact["id"], "channel_id": SMS}).json()
    answer = api.post(f"/tickets/{ticket['id']}/assign", json=body)
    assert answer.status_code == 422 and list(answer.json()["errors"]) == [field]
    assert api.post("/tickets/1/assign", json={"type": "team", "team_id": 1}).status_code == 404


def test_labels_carry_archived_and_an_archived_one_is_not_attached(
    api: httpx.Client, control: SimulatorControl
) -> None:
    live = control.add_label("VIP")
    old = control.add_label("Old", archived=True)
    listed = {label["name"]: label for label in api.get("/labels").json()["data"]}
    assert listed["VIP"]["archived"] is None and listed["Old"]["archived"]
    contact = control.add_contact("P", "+31612345678", SMS)
    ticket = api.post("/tickets", json={"contact_id": contact["id"], "channel_id": SMS}).json()
    path = f"/tickets/{ticket['id']}/labels"
    assert api.post(path, json={"label_id": live["id"]}).status_code == 200
    refused = api.post(path, json={"label_id": old["id"]})
    assert refused.status_code == 422 and "label_id" in refused.json()["errors"]
    [stored] = control.tickets()
    assert [label["name"] for label in stored["labels"]] == ["VIP"]


def test_a_note_answer_is_wrapped_in_message(api: httpx.Client, control: SimulatorControl) -> None:
    contact = control.add_contact("P", "+31612345678", SMS)
    ticket = api.post("/tickets", json={"contact_id": contact["id"], "channel_id": SMS}).json()
    answer = api.post(f"/tickets/{ticket['id']}/messages", json={"message": "n", "internal_note": True})
    assert answer.status_code == 201
    assert set(answer.json()) == {"message"}
    note = answer.json()["message"]
    assert note["type"] == "NOTE" and note["ticket_id"] == ticket["id"]
