"""Phone channels with defaultPhoneRegion: a real sidecar over gRPC, the simulator storing contacts as
Trengo does (E.164 phone, international identifier), and the real phonenumbers. Every test asserts
on what the simulator stored and recorded."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from sidecar.state import ContactRecord, open_state, scope_of
from tests.support.fleet import Fleet, wait_for
from tests.support.grpc_helpers import failure
from tests.support.harness import SMS_CHANNEL, TOKEN, struct
from trengo.sidecar.v1 import sidecar_pb2 as pb

API = "/api/v2"
SEARCH = f"{API}/contacts"
CREATE = f"{API}/channels/{SMS_CHANNEL}/contacts"
FIVE_SPELLINGS = ["06 12345678", "(06) 1234-5678", "0031 6 12345678", "+31612345678", "06-12345678"]


def identify(phone: str, name: str | None = None, **extra) -> pb.IdentifyRequest:
    traits = {"phone": phone, **({"name": name} if name else {})}
    return pb.IdentifyRequest(traits=struct(traits), **extra)


def track(phone: str) -> pb.TrackRequest:
    return pb.TrackRequest(event="Checked Out", properties=struct({"phone": phone}))


@pytest.fixture
def nl(make_sidecar):
    sidecar = make_sidecar(channelId=SMS_CHANNEL, channelIdentifier="phone", defaultPhoneRegion="nl")
    channel, stub = sidecar.stub()
    yield stub
    channel.close()


def test_an_existing_contact_is_found_from_five_spellings_and_none_is_created(nl, control, make_sidecar):
    stored = control.add_contact("Piet", "+31 6 12345678", SMS_CHANNEL)  # as Trengo keeps it
    assert (stored["phone"], stored["identifier"]) == ("+31612345678", "+31 6 12345678")
    for spelling in FIVE_SPELLINGS:
        # A fresh sidecar each time: no cache, so each spelling is looked up in Trengo.
        sidecar = make_sidecar(channelId=SMS_CHANNEL, channelIdentifier="phone", defaultPhoneRegion="NL")
        channel, stub = sidecar.stub()
        result = stub.Identify(identify(spelling, "Piet"))
        channel.close()
        assert result.contact_id == stored["id"] and result.action == pb.ACTION_NONE, spelling
    searches = control.requests(path_prefix=SEARCH, method="GET")
    assert [s["params"]["term"] for s in searches] == ["31612345678"] * 5  # E.164 digits, no "+"
    assert not control.requests(method="POST") and not control.requests(method="PUT")
    assert len(control.contacts()) == 1


def test_one_sidecar_knows_every_spelling_as_one_person(nl, control):
    stored = control.add_contact("Piet", "+31 6 12345678", SMS_CHANNEL)
    results = [nl.Identify(identify(spelling)) for spelling in FIVE_SPELLINGS]
    assert {r.contact_id for r in results} == {stored["id"]}
    assert [r.contact_cache_hit for r in results] == [False, True, True, True, True]
    assert len(control.requests(path_prefix=SEARCH, method="GET")) == 1


def test_a_new_person_is_created_once_with_the_e164_identifier(nl, control):
    first = nl.Identify(identify("06-87654321", "Nina"))
    assert first.action == pb.ACTION_CREATE_CONTACT
    [create] = control.requests(path_prefix=CREATE, method="POST")
    assert create["body"]["identifier"] == "+31687654321"
    [contact] = control.contacts()
    assert (contact["id"], contact["phone"], contact["identifier"]) == (
        first.contact_id, "+31687654321", "+31 6 87654321"
    )
    again = nl.Identify(identify("+31 6 8765 4321", "Nina"))
    assert again.contact_id == first.contact_id and again.action == pb.ACTION_NONE
    assert len(control.requests(path_prefix=CREATE, method="POST")) == 1


def test_a_name_or_email_holding_the_digits_is_not_the_person(nl, control):
    control.add_contact("Call 31612345678", "+31 6 99999999", SMS_CHANNEL)  # found by the fuzzy search
    result = nl.Identify(identify("06 12345678", "Piet"))
    assert result.action == pb.ACTION_CREATE_CONTACT
    assert len(control.requests(path_prefix=SEARCH, method="GET")) == 1
    assert sorted(c["phone"] for c in control.contacts()) == ["+31612345678", "+31699999999"]


def test_a_track_after_the_cache_expired_finds_the_contact_by_search(make_sidecar, control):
    sidecar = make_sidecar(channelId=SMS_CHANNEL, defaultPhoneRegion="NL", contactCacheTtlSeconds=0.2)
    channel, stub = sidecar.stub()
    person = stub.Identify(identify("06 12345678", "Piet"))
    warm = stub.Track(track("+31 6 12345678"))
    assert warm.contact_cache_hit and warm.contact_id == person.contact_id
    time.sleep(0.4)
    cold = stub.Track(track("0031612345678"))
    channel.close()
    assert not cold.contact_cache_hit and cold.contact_id == person.contact_id
    searches = control.requests(path_prefix=SEARCH, method="GET")
    assert [s["params"]["term"] for s in searches] == ["31612345678", "31612345678"]
    assert [t["contact_id"] for t in control.tickets()] == [person.contact_id] * 2


@pytest.mark.parametrize(
    ("request_", "field", "region"),
    [
        (identify("06 12", "X"), "traits.phone", "region NL"),
        (
            pb.IdentifyRequest(context=struct({"traits": {"phone": "06 1234 5678 9012"}})),
            "context.traits.phone",
            "NL",
        ),
        (track("+31 612"), "properties.phone", "+31 (NL)"),
    ],
)
def test_an_impossible_number_is_invalid_argument_and_nothing_is_written(nl, control, request_, field,
                                                                         region):
    call = nl.Track if isinstance(request_, pb.TrackRequest) else nl.Identify
    with pytest.raises(grpc.RpcError) as caught:
        call(request_)
    refused = failure(caught.value)
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT and refused.field == field
    assert field in refused.message and region in refused.message
    assert control.requests() == []  # refused before the channel list, even


def test_on_an_auto_channel_the_number_is_checked_once_the_channel_is_phone(make_sidecar, control):
    sidecar = make_sidecar(channelId=SMS_CHANNEL, defaultPhoneRegion="NL")  # channelIdentifier auto
    channel, stub = sidecar.stub()
    with pytest.raises(grpc.RpcError) as caught:
        stub.Identify(identify("06 12", "X"))
    channel.close()
    assert failure(caught.value).code == grpc.StatusCode.INVALID_ARGUMENT
    assert [(r["method"], r["path"]) for r in control.requests()] == [("GET", f"{API}/channels")]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_store_records_from_before_the_upgrade_are_misses_that_search_again(
    make_sidecar, control, tmp_path, request, backend
):
    """An old sidecar keyed a phone by the digits as given: "06 12345678" was p:0612345678. That record
    is never read under a region (keys are p:+<E.164>), so it cannot mislead; the search finds the
    contact and nothing is created. Proven with records, under both old spellings, that point at another
    person's contact under Piet's name: read, they would be trusted with no call at all."""
    piet = control.add_contact("Piet", "+31 6 12345678", SMS_CHANNEL)
    jan = control.add_contact("Jan", "+31 6 99999999", SMS_CHANNEL)
    url = f"sqlite:///{tmp_path / 'state.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    scope = scope_of(TOKEN)

    async def seed() -> None:
        state = open_state(url)
        for old_key in ("p:0612345678", "p:31612345678"):  # "06 12345678" and "+31 6 12345678" then
            await state.put_contact(f"{scope}:contact:{old_key}", ContactRecord(jan["id"], "Piet"), ttl=3600)
        await state.aclose()

    asyncio.run(seed())
    sidecar = make_sidecar(channelId=SMS_CHANNEL, defaultPhoneRegion="NL", store=url)
    channel, stub = sidecar.stub()
    results = [stub.Identify(identify(spelling, "Piet")) for spelling in ("06 12345678", "+31 6 12345678")]
    ticket = stub.Track(track("06-12345678"))
    channel.close()
    assert {r.contact_id for r in results} == {ticket.contact_id} == {piet["id"]}
    assert len(control.requests(path_prefix=SEARCH, method="GET")) == 1  # once, then its own record
    assert not control.requests(path_prefix=CREATE, method="POST")
    assert [t["contact_id"] for t in control.tickets()] == [piet["id"]]
    assert len(control.contacts()) == 2 and not control.requests(method="PUT")


def test_without_a_region_the_phone_is_sent_as_given(make_sidecar, control, caplog):
    sidecar = make_sidecar(channelId=SMS_CHANNEL)
    channel, stub = sidecar.stub()
    stub.Identify(identify("06 12345678", "Piet"))
    stub.Identify(identify("06 12345679", "Jan"))
    channel.close()
    [search, _] = control.requests(path_prefix=SEARCH, method="GET")
    assert search["params"]["term"] == "06 12345678"
    creates = control.requests(path_prefix=CREATE, method="POST")
    assert [c["body"]["identifier"] for c in creates] == ["06 12345678", "06 12345679"]
    warnings = [r for r in caplog.records if "defaultPhoneRegion" in r.getMessage()]
    assert len(warnings) == 1 and "TRENGO_DEFAULT_PHONE_REGION" in warnings[0].getMessage()


def test_the_queue_keys_every_spelling_as_one_person(make_sidecar, control, tmp_path):
    sidecar = make_sidecar(
        channelId=SMS_CHANNEL, defaultPhoneRegion="NL", store=f"sqlite:///{tmp_path / 'q.db'}",
        queueConcurrency=0,
    )
    channel, stub = sidecar.stub()
    for n, spelling in enumerate(FIVE_SPELLINGS):
        stub.Enqueue(pb.EnqueueRequest(identify=identify(spelling, message_id=f"m{n}")))
    channel.close()
    store = sidecar.sidecar.queue.store  # no worker (queueConcurrency 0): the jobs wait, readable
    people = {sidecar.call(store.get(f"m{n}")).person for n in range(5)}
    assert people == {"phone:+31612345678"}  # one person: its events keep one order


def test_a_deliver_stream_orders_every_spelling_as_one_person(nl, control):
    """The stream delivers one person's events in order; two spellings of a number are one person, so
    the track waits for the identify before it and finds the contact it made."""
    requests = [
        pb.DeliverRequest(id="a", identify=identify("06 12345678", "Piet")),
        pb.DeliverRequest(id="b", track=track("+31 6 1234 5678")),
        pb.DeliverRequest(id="c", track=track("(06) 1234-5678")),
    ]
    answers = {a.id: a for a in nl.Deliver(iter(requests))}
    assert all(not a.HasField("error") for a in answers.values()), answers
    contact = answers["a"].result.contact_id
    assert [answers[k].result.contact_id for k in "bc"] == [contact, contact]
    assert [c["id"] for c in control.contacts()] == [contact]
    assert len(control.tickets()) == 2


def test_a_phone_channel_without_a_region_warns_once_at_start(sim, control, tmp_path):
    """A real process: its start-up check lists the channels, sees the phone channel, and says once what
    defaultPhoneRegion does; events after it add no second warning. With a region: no warning."""
    fleet = Fleet(tmp_path, sim.base_url)
    try:
        plain, regional = fleet.spawn(1, channelId=SMS_CHANNEL) + fleet.spawn(1, channelId=SMS_CHANNEL,
                                                                             defaultPhoneRegion="NL")
        wait_for(lambda: "defaultPhoneRegion" in plain.output(), "the start-up warning")
        for n in range(3):
            plain.stub.Identify(identify(f"+31 6 1234 567{n}", "Piet"), timeout=10)
        regional.stub.Identify(identify("06 12345678", "Piet"), timeout=10)
        assert plain.output().count("defaultPhoneRegion") == 1
        assert "TRENGO_DEFAULT_PHONE_REGION" in plain.output()
        assert "defaultPhoneRegion" not in regional.output()
    finally:
        fleet.close()
