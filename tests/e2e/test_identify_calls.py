"""Identify's Trengo calls on both channel kinds, as the simulator recorded them (issue 13).

E-mail channels: Trengo never duplicates a contact by address, so a new address is created at once
(its answer is the contact, new or existing) and only a name that differs costs an update. Phone
channels duplicate numbers: a number the sidecar does not know is searched for first. On both, an
identify with the name the sidecar last wrote or read for the contact sends nothing.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import httpx
import pytest

from sidecar.simulator import SimulatorControl
from tests.support.grpc_helpers import failure
from tests.support.harness import EMAIL_CHANNEL, SMS_CHANNEL, TOKEN, struct
from trengo.sidecar.v1 import sidecar_pb2 as pb

# kind -> (channel, trait, identifier, the path a create goes to)
KINDS: dict[str, tuple[int, str, str, str]] = {
    "email": (EMAIL_CHANNEL, "email", "ann@example.com", f"/channels/{EMAIL_CHANNEL}/contacts"),
    "phone": (SMS_CHANNEL, "phone", "+31612345678", f"/channels/{SMS_CHANNEL}/contacts"),
}
both_kinds = pytest.mark.parametrize("kind", ["email", "phone"])


def on_channel(kind: str) -> list[pb.ExternalId]:
    return [pb.ExternalId(type="trengoChannelId", id=str(KINDS[kind][0]))]


def identify(kind: str, name: str | None = None, value: str = "", **extra: Any) -> pb.IdentifyRequest:
    _, trait, known, _ = KINDS[kind]
    traits = {trait: value or known, **({"name": name} if name else {})}
    return pb.IdentifyRequest(traits=struct(traits), external_ids=on_channel(kind), **extra)


def track(kind: str) -> pb.TrackRequest:
    _, trait, value, _ = KINDS[kind]
    return pb.TrackRequest(
        event="Checked Out", context=struct({"traits": {trait: value}}), external_ids=on_channel(kind)
    )


def seed(control: SimulatorControl, kind: str, name: str) -> dict[str, Any]:
    channel, _, value, _ = KINDS[kind]
    return control.add_contact(name=name, identifier=value, channel_id=channel)


def calls(control: SimulatorControl) -> list[tuple[str, str, int | None]]:
    """Every Trengo call but the (cached) channel listing: (method, path below /api/v2, status)."""
    return [
        (r["method"], r["path"].removeprefix("/api/v2"), r["status"])
        for r in control.requests()
        if r["path"] != "/api/v2/channels"
    ]


def search() -> tuple[str, str, int]:
    return ("GET", "/contacts", 200)


def create(kind: str, status: int = 201) -> tuple[str, str, int]:
    return ("POST", KINDS[kind][3], status)


def update(contact_id: int) -> tuple[str, str, int]:
    return ("PUT", f"/contacts/{contact_id}", 200)


def names(control: SimulatorControl) -> list[str]:
    return [c["name"] for c in control.contacts()]


# --- a new person ------------------------------------------------------------------------------------


@both_kinds
def test_a_new_person_is_one_create_on_email_and_a_search_then_a_create_on_phone(stub, control, kind):
    result = stub.Identify(identify(kind, "Ann Lee"))
    [contact] = control.contacts()
    assert result.action == pb.ACTION_CREATE_CONTACT and result.contact_id == contact["id"]
    assert calls(control) == ([create(kind)] if kind == "email" else [search(), create(kind)])
    assert contact["name"] == "Ann Lee"


# --- a person Trengo already has ----------------------------------------------------------------------


@both_kinds
def test_an_existing_person_with_the_same_name_gets_no_update(stub, control, kind):
    existing = seed(control, kind, "Ann Lee")
    result = stub.Identify(identify(kind, "Ann Lee"))
    assert result.contact_id == existing["id"] and len(control.contacts()) == 1
    if kind == "email":
        # The create's answer is the existing contact; it does not say it was not new.
        assert calls(control) == [create(kind)] and result.action == pb.ACTION_CREATE_CONTACT
    else:
        assert calls(control) == [search()] and result.action == pb.ACTION_NONE
    assert names(control) == ["Ann Lee"]


@both_kinds
def test_an_existing_person_with_another_name_gets_one_update(stub, control, kind):
    existing = seed(control, kind, "Old Name")
    result = stub.Identify(identify(kind, "New Name"))
    assert result.action == pb.ACTION_UPDATE_CONTACT and result.contact_id == existing["id"]
    first = create(kind) if kind == "email" else search()
    assert calls(control) == [first, update(existing["id"])]
    assert control.requests(method="PUT")[0]["body"] == {"name": "New Name"}
    assert names(control) == ["New Name"]


# --- an account that refuses a known address with a 422 ------------------------------------------------


@pytest.mark.parametrize(("name", "renamed"), [("New Name", True), ("Old Name", False)])
def test_a_create_refused_as_existing_falls_back_to_a_search(stub, control, name, renamed):
    control.configure(existing_email_answer="422")
    existing = seed(control, "email", "Old Name")
    result = stub.Identify(identify("email", name))
    assert result.contact_id == existing["id"] and len(control.contacts()) == 1
    expected = [create("email", 422), search()]
    if renamed:
        assert calls(control) == [*expected, update(existing["id"])]
        assert result.action == pb.ACTION_UPDATE_CONTACT
    else:
        assert calls(control) == expected and result.action == pb.ACTION_NONE
    assert names(control) == [name]
    before = len(calls(control))
    assert stub.Identify(identify("email", name)).contact_cache_hit  # found once, then cached
    assert len(calls(control)) == before


def test_a_422_on_the_identifier_of_an_address_nobody_has_stays_a_rejection(stub, control):
    refusal = {"message": "The given data was invalid.", "errors": {"identifier": ["Not deliverable."]}}
    control.add_fault(method="POST", path="/api/v2/channels/", status=422, body=refusal)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Identify(identify("email", "Ann"))
    f = failure(caught.value)
    assert f.code == grpc.StatusCode.FAILED_PRECONDITION and f.reason == "TRENGO_REJECTED", f
    assert "Not deliverable" in f.message
    assert calls(control) == [create("email", 422), search()] and control.contacts() == []


# --- concurrency ------------------------------------------------------------------------------------------


@both_kinds
def test_12_concurrent_identifies_for_one_new_person_make_one_create(stub, control, kind):
    first_call = ("POST", "/api/v2/channels/") if kind == "email" else ("GET", "/api/v2/contacts")
    control.add_fault(method=first_call[0], path=first_call[1], delay=0.3)  # all twelve arrive meanwhile
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda _: stub.Identify(identify(kind, "Same"), timeout=5), range(12)))
    [contact] = control.contacts()
    assert {r.contact_id for r in results} == {contact["id"]}
    assert calls(control) == ([create(kind)] if kind == "email" else [search(), create(kind)])
    assert sum(r.action == pb.ACTION_CREATE_CONTACT for r in results) == 1


# --- the name the sidecar knows ---------------------------------------------------------------------------


@both_kinds
def test_the_same_name_twice_makes_no_call_the_second_time(stub, control, kind):
    first = stub.Identify(identify(kind, "Ann"))
    before = len(calls(control))
    again = stub.Identify(identify(kind, "Ann"))
    assert again.action == pb.ACTION_NONE and again.contact_cache_hit
    assert again.contact_id == first.contact_id and list(again.requests) == []
    assert len(calls(control)) == before
    renamed = stub.Identify(identify(kind, "Ann Lee"))  # a new name: one call
    assert renamed.action == pb.ACTION_UPDATE_CONTACT
    assert calls(control)[before:] == [update(first.contact_id)]
    assert stub.Identify(identify(kind, "Ann Lee")).action == pb.ACTION_NONE  # the name it wrote
    assert len(calls(control)) == before + 1 and names(control) == ["Ann Lee"]


@both_kinds
def test_a_searched_name_is_remembered_too(stub, control, kind):
    existing = seed(control, kind, "Ann")
    stub.Track(track(kind))  # its search reads the contact's name
    before = len(calls(control))
    result = stub.Identify(identify(kind, "Ann"))
    assert (
        result.action == pb.ACTION_NONE and result.contact_id == existing["id"] and result.contact_cache_hit
    )
    assert len(calls(control)) == before


def test_a_known_trengo_contact_id_with_the_same_name_makes_no_call(stub, control):
    first = stub.Identify(identify("email", "Ann"))
    by_id = pb.ExternalId(type="trengoContactId", id=str(first.contact_id))
    before = len(calls(control))
    request = pb.IdentifyRequest(
        traits=struct({"email": "ann@example.com", "name": "Ann"}), external_ids=[by_id]
    )
    result = stub.Identify(request)
    assert result.action == pb.ACTION_NONE and result.contact_id == first.contact_id
    assert len(calls(control)) == before


@both_kinds
def test_with_skip_unchanged_names_off_every_known_contact_gets_the_name(make_sidecar, control, kind):
    channel, stub = make_sidecar(skipUnchangedNames=False).stub()
    with channel:
        first = stub.Identify(identify(kind, "Ann"))
        before = len(calls(control))
        again = stub.Identify(identify(kind, "Ann"))
        assert again.action == pb.ACTION_UPDATE_CONTACT and again.contact_cache_hit
        assert calls(control)[before:] == [update(first.contact_id)]
        if kind == "phone":  # a search's answer is not trusted either
            other = control.add_contact(name="Bo", identifier="+31687654321", channel_id=SMS_CHANNEL)
            before = len(calls(control))
            assert stub.Identify(identify(kind, "Bo", "+31687654321")).action == pb.ACTION_UPDATE_CONTACT
            assert calls(control)[before:] == [search(), update(other["id"])]


def test_a_name_changed_by_hand_in_trengo_is_overwritten_after_one_cache_ttl(sim, make_sidecar, control):
    channel, stub = make_sidecar(contactCacheTtlSeconds=1.0).stub()
    with channel:
        first = stub.Identify(identify("email", "Ann"))
        by_hand = httpx.put(
            f"{sim.base_url}/contacts/{first.contact_id}",
            json={"name": "Changed By Hand"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert by_hand.status_code == 200
        before = len(calls(control))
        assert stub.Identify(identify("email", "Ann")).action == pb.ACTION_NONE  # the cache still says Ann
        assert names(control) == ["Changed By Hand"] and len(calls(control)) == before
        time.sleep(1.1)  # past the contact cache's TTL
        result = stub.Identify(identify("email", "Ann"))
    assert result.action == pb.ACTION_UPDATE_CONTACT and not result.contact_cache_hit
    assert calls(control)[before:] == [create("email"), update(first.contact_id)]
    assert names(control) == ["Ann"]


def test_a_dry_run_on_an_email_channel_lists_the_create_alone(stub, control):
    result = stub.Identify(identify("email", "Ann", dry_run=True))
    assert result.dry_run and result.action == pb.ACTION_CREATE_CONTACT and result.contact_id == 0
    assert [(r.method, r.attempts) for r in result.requests if "/channels?" not in r.url] == [("POST", 0)]
    assert calls(control) == [] and control.contacts() == []


# --- with a shared store ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_name_one_sidecar_wrote_is_known_to_another_on_the_store(
    make_sidecar, control, tmp_path, backend, request
):
    store = f"sqlite:///{tmp_path}/state.db" if backend == "sqlite" else request.getfixturevalue("pg_url")
    first_channel, first = make_sidecar(store=store).stub()
    second_channel, second = make_sidecar(store=store).stub()
    with first_channel, second_channel:
        made = first.Identify(identify("email", "Ann"))
        assert calls(control) == [create("email")]
        again = second.Identify(identify("email", "Ann"))  # the record, name included, from the store
        assert again.action == pb.ACTION_NONE and again.contact_cache_hit
        assert again.contact_id == made.contact_id and calls(control) == [create("email")]
        renamed = second.Identify(identify("email", "Ann Lee"))
        assert renamed.action == pb.ACTION_UPDATE_CONTACT
        assert calls(control) == [create("email"), update(made.contact_id)]
