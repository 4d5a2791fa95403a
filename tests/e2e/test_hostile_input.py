"""Hostile input over real gRPC: wrong types anywhere in a Struct, deep nesting, huge strings, control
characters, NaN/inf, multi-megabyte events, undecodable bytes.

The rule: INVALID_ARGUMENT (naming the field) or a sane answer; never UNKNOWN or INTERNAL, never a
crash, never a hang (every call has a deadline, and DEADLINE_EXCEEDED fails the test). Where the
answer is INVALID_ARGUMENT, the simulator proves nothing was written to Trengo. Property-based tests
(hypothesis) cover the request space; named cases pin the shapes the issue lists.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.simulator import SimulatorControl, SimulatorThread
from tests.support.grpc_helpers import Failure, failure
from tests.support.harness import EMAIL_CHANNEL, TOKEN, SidecarThread, sidecar_config
from trengo.sidecar.v1 import sidecar_pb2 as pb
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

SERVICE = "/trengo.sidecar.v1.TrengoSidecar"
FULLWIDTH_123 = "\uff11\uff12\uff13"  # digits to str.isdigit(), not to an id parser
# What a sane answer to any request is. UNAVAILABLE is not here: the simulator is healthy throughout.
SANE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
}
PROPERTY = settings(
    max_examples=75,
    deadline=None,  # the sidecar is on a real socket: timing is the call's timeout's business
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# --- building requests ----------------------------------------------------------------------------


def fill(out: struct_pb2.Value, item: Any) -> None:
    """Set a Struct Value from plain Python, NaN and infinity included (json_format refuses them).

    Built in place, never with CopyFrom: protobuf copies by decoding, which stops at its depth limit,
    and the deep-nesting tests must be able to send what it would not decode.
    """
    if item is None:
        out.null_value = struct_pb2.NULL_VALUE
    elif isinstance(item, bool):
        out.bool_value = item
    elif isinstance(item, int | float):
        out.number_value = float(item)
    elif isinstance(item, str):
        out.string_value = item
    elif isinstance(item, list):
        out.list_value.SetInParent()
        for element in item:
            fill(out.list_value.values.add(), element)
    else:
        fill_struct(out.struct_value, item)


def fill_struct(out: struct_pb2.Struct, data: dict[str, Any]) -> None:
    out.Clear()
    for key, item in data.items():
        fill(out.fields[key], item)


def struct(data: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    fill_struct(out, data)
    return out


def nested(depth: int, leaf: Any = "x") -> dict[str, Any]:
    data: dict[str, Any] = {"leaf": leaf}
    for _ in range(depth):
        data = {"a": data}
    return data


# --- fixtures: one sidecar for the module, the simulator emptied per example -------------------------


@pytest.fixture(scope="module")
def hostile(sim: SimulatorThread) -> Iterator[SidecarThread]:
    with SidecarThread(sidecar_config(sim.base_url)) as sidecar:
        yield sidecar


@pytest.fixture(scope="module")
def channel(hostile: SidecarThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(hostile.address) as channel:
        yield channel


@pytest.fixture
def stub(channel: grpc.Channel) -> pb_grpc.TrengoSidecarStub:
    return pb_grpc.TrengoSidecarStub(channel)


def fresh(control: SimulatorControl) -> None:
    control.reset()
    control.configure(rate_limit_per_minute=0, tokens=[TOKEN])
    control.add_contact(name="Ann", identifier="ann@example.com", channel_id=EMAIL_CHANNEL)


def answer(call: Callable[[], Any]) -> Failure:
    """The status of a call: a Failure, with code OK when it succeeded."""
    try:
        call()
    except grpc.RpcError as error:
        return failure(error)
    return Failure(grpc.StatusCode.OK, "")


def assert_sane(result: Failure, control: SimulatorControl) -> None:
    assert result.code in SANE, result
    if result.code == grpc.StatusCode.INVALID_ARGUMENT:
        assert result.reason in ("INVALID_EVENT", "MISSING_IDENTIFIER") and result.field, result
        writes = [r for r in control.requests() if r["method"] != "GET"]
        assert writes == [], "an invalid request reached Trengo"


def assert_still_serving(channel: grpc.Channel, stub: pb_grpc.TrengoSidecarStub) -> None:
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    request = pb.IdentifyRequest(traits=struct({"email": "ann@example.com"}))
    assert stub.Identify(request, timeout=5).contact_id > 0


# --- strategies --------------------------------------------------------------------------------------

# Keys the sidecar reads, so wrong types land where they matter, plus arbitrary ones.
KEYS = st.sampled_from(
    [
        "email", "phone", "name", "firstName", "lastName", "first_name", "traits", "context", "externalId",
        "type", "id", "event", "properties", "messageId", "userId", "anonymousId", "revenue",
    ]
) | st.text(max_size=12)  # fmt: skip
TEXT = st.text(max_size=40) | st.sampled_from(
    [
        "ann@example.com", "+31 6 1234 5678", "identify", "track", "Checked Out", "Added to cart",
        "trengoContactId", "trengoChannelId", "405980", "90002431001", "", " ", "a@b", "\x00", "\u202e",
        "x" * 300, "{{ revenue }}", "@", "+",
    ]
)  # fmt: skip
NUMBERS = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**70), 2**70)
SCALARS = st.none() | st.booleans() | NUMBERS | TEXT
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=25,
)
OBJECTS = st.dictionaries(KEYS, JSON, max_size=6)
EXTERNAL_IDS = st.lists(
    st.builds(pb.ExternalId, type=st.sampled_from(["trengoContactId", "trengoChannelId"]) | TEXT, id=TEXT),
    max_size=3,
)


def _finite(item: Any) -> bool:
    if isinstance(item, float):
        return math.isfinite(item)
    if isinstance(item, list):
        return all(_finite(v) for v in item)
    if isinstance(item, dict):
        return all(_finite(v) for v in item.values())
    return True


# --- property-based: the whole request space ------------------------------------------------------------


@PROPERTY
@given(traits=OBJECTS, context=OBJECTS, ids=EXTERNAL_IDS, message_id=TEXT, dry_run=st.booleans())
def test_any_identify_gets_a_sane_answer(sim, stub, traits, context, ids, message_id, dry_run):
    fresh(sim.control)
    request = pb.IdentifyRequest(
        traits=struct(traits),
        context=struct(context),
        external_ids=ids,
        message_id=message_id,
        dry_run=dry_run,
    )
    result = answer(lambda: stub.Identify(request, timeout=5))
    assert_sane(result, sim.control)
    if not _finite(traits) or not _finite(context):
        assert result.code == grpc.StatusCode.INVALID_ARGUMENT, result  # NaN/inf anywhere is refused


@PROPERTY
@given(event=TEXT, properties=OBJECTS, context=OBJECTS, ids=EXTERNAL_IDS)
def test_any_track_gets_a_sane_answer(sim, stub, event, properties, context, ids):
    fresh(sim.control)
    request = pb.TrackRequest(
        event=event, properties=struct(properties), context=struct(context), external_ids=ids
    )
    result = answer(lambda: stub.Track(request, timeout=5))
    assert_sane(result, sim.control)
    if not _finite(properties) or not _finite(context):
        assert result.code == grpc.StatusCode.INVALID_ARGUMENT, result


@PROPERTY
@given(kind=st.sampled_from(["identify", "track", "IDENTIFY", "page"]) | JSON, rest=OBJECTS)
def test_any_rudderstack_event_gets_a_sane_answer(sim, stub, kind, rest):
    fresh(sim.control)
    event = {**rest, "type": kind}
    result = answer(lambda: stub.SendEvent(pb.SendEventRequest(event=struct(event)), timeout=5))
    assert_sane(result, sim.control)


@PROPERTY
@given(
    method=st.sampled_from(["Identify", "Track", "SendEvent"]),
    payload=st.binary(max_size=200) | st.builds(lambda b: b"\x1a" + b, st.binary(max_size=60)),
)
def test_any_bytes_on_the_wire_get_a_sane_answer(sim, channel, stub, method, payload):
    fresh(sim.control)
    raw = channel.unary_unary(f"{SERVICE}/{method}")  # no serializers: the bytes go out as they are
    result = answer(lambda: raw(payload, timeout=5))
    assert_sane(result, sim.control)


@PROPERTY
@given(name=st.text(max_size=300))
def test_any_name_is_stored_as_sent_or_refused(sim, stub, name):
    fresh(sim.control)
    email = f"{uuid.uuid4().hex}@example.com"  # a new person each time: the sidecar's cache is shared
    request = pb.IdentifyRequest(traits=struct({"email": email, "name": name}))
    result = answer(lambda: stub.Identify(request, timeout=5))
    assert result.code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), result
    contacts = [c for c in sim.control.contacts() if c["identifier"] == email]
    if result.code == grpc.StatusCode.INVALID_ARGUMENT:
        assert result.field == "traits.name" and contacts == []
    else:
        [contact] = contacts
        assert contact["name"] == (" ".join(name.split()) or email)


def test_the_sidecar_survived_the_properties(channel, stub, sim):
    fresh(sim.control)
    assert_still_serving(channel, stub)


# --- named hostile cases ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("traits", "context", "field"),
    [
        ({"email": 42}, {}, "traits.email"),
        ({"email": True}, {}, "traits.email"),
        ({"email": ["ann@example.com"]}, {}, "traits.email"),
        ({"email": {"address": "ann@example.com"}}, {}, "traits.email"),
        ({"email": "ann@example.com", "name": {"first": "Ann"}}, {}, "traits.name"),
        ({"email": "ann@example.com", "firstName": ["Ann"]}, {}, "traits.firstName"),
        ({"email": "ann@example.com"}, {"traits": "x"}, "context.traits"),
        ({"email": "ann@example.com"}, {"traits": [1, 2]}, "context.traits"),
        ({"email": "ann@example.com"}, {"externalId": "trengoContactId"}, "context.externalId"),
        ({"email": "ann@example.com"}, {"externalId": [1]}, "context.externalId[0]"),
        ({"email": "ann@example.com"}, {"externalId": [{"type": "trengoContactId", "id": 1.5}]},
         "context.externalId[0].id"),
        ({"email": "ann@example.com"}, {"externalId": [{"type": "trengoContactId", "id": -4}]},
         "context.externalId[0].id"),
        ({"email": "ann@example.com"}, {"externalId": [{"type": "trengoContactId", "id": 2.0**70}]},
         "context.externalId[0].id"),
        ({"email": "ann@example.com"}, {"externalId": [{"type": "trengoChannelId", "id": FULLWIDTH_123}]},
         "context.externalId[0].id"),
    ],
)  # fmt: skip
def test_wrong_types_are_invalid_argument_naming_the_field(stub, control, traits, context, field):
    result = answer(lambda: stub.Identify(pb.IdentifyRequest(traits=struct(traits), context=struct(context))))
    assert result.code == grpc.StatusCode.INVALID_ARGUMENT and result.field == field, result
    assert control.requests() == []


@pytest.mark.parametrize(
    ("where", "data", "field"),
    [
        ("traits", {"email": "ann@example.com", "score": math.nan}, "traits.score"),
        ("traits", {"email": "ann@example.com", "deep": {"list": [1, 2, {"x": math.inf}]}},
         "traits.deep.list[2].x"),
        ("context", {"traits": {"email": "ann@example.com"}, "n": -math.inf}, "context.n"),
    ],
)  # fmt: skip
def test_nan_and_infinity_anywhere_are_invalid_argument(stub, control, where, data, field):
    request = (
        pb.IdentifyRequest(traits=struct(data))
        if where == "traits"
        else pb.IdentifyRequest(context=struct(data))
    )
    result = answer(lambda: stub.Identify(request, timeout=5))
    assert result.code == grpc.StatusCode.INVALID_ARGUMENT and result.field == field, result
    assert control.requests() == []


@pytest.mark.parametrize("depth", [25, 30, 32, 40, 120])
def test_deep_nesting_is_invalid_argument(stub, control, depth):
    # Past 24 Struct levels the sidecar refuses it; past ~32 protobuf itself cannot decode it.
    request = pb.TrackRequest(event="Checked Out")
    fill_struct(request.properties, nested(depth))
    result = answer(lambda: stub.Track(request, timeout=5))
    assert result.code == grpc.StatusCode.INVALID_ARGUMENT and result.field, result
    assert control.requests() == []


def test_deeply_nested_lists_are_invalid_argument(stub, control):
    deep: Any = "x"
    for _ in range(30):
        deep = [deep]
    request = pb.IdentifyRequest()
    fill_struct(request.traits, {"email": "ann@example.com", "deep": deep})
    result = answer(lambda: stub.Identify(request, timeout=5))
    assert result.code == grpc.StatusCode.INVALID_ARGUMENT and result.field.startswith("traits.deep"), result
    assert control.requests() == []


def test_nesting_just_inside_the_limit_is_delivered(stub, control):
    control.add_contact(name="Ann", identifier="ann@example.com", channel_id=EMAIL_CHANNEL)
    request = pb.TrackRequest(
        event="Checked Out",
        properties=struct(nested(20)),
        context=struct({"traits": {"email": "ann@example.com"}}),
    )
    result = stub.Track(request, timeout=5)
    assert [t["id"] for t in control.tickets()] == [result.ticket_id]


@pytest.mark.parametrize(
    ("traits", "field"),
    [
        ({"email": "ann@example.com", "name": "A" * 1_000_000}, "traits.name"),
        ({"email": "a" * 1_000_000 + "@example.com"}, "traits.email"),
        ({"email": "ann@example.com", "name": "Ann\x00Lee"}, "traits.name"),
        ({"email": "ann@example.com", "name": "Ann\x1b[31mLee"}, "traits.name"),
        ({"email": "ann\x00@example.com"}, "traits.email"),
        ({"email": "ann@example.com\r\nBcc: x@example.com"}, "traits.email"),
        ({"phone": "+31 6 1234\x005678"}, "traits.phone"),
    ],
)
def test_huge_strings_and_control_characters_are_invalid_argument(stub, control, traits, field):
    result = answer(lambda: stub.Identify(pb.IdentifyRequest(traits=struct(traits)), timeout=5))
    assert result.code == grpc.StatusCode.INVALID_ARGUMENT and result.field == field, result
    assert len(result.message) < 1000  # the message quotes, it does not echo a megabyte back
    assert not control.requests(method="POST") and control.contacts() == []


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.TrackRequest(event="Checked\nOut"), "event"),
        (pb.TrackRequest(event="E" * 10_000), "event"),
        (pb.IdentifyRequest(message_id="m\x1b1", traits=struct({"email": "a@b.io"})), "message_id"),
        (pb.IdentifyRequest(message_id="m" * 100_000, traits=struct({"email": "a@b.io"})), "message_id"),
        (pb.IdentifyRequest(user_id="\x07", traits=struct({"email": "a@b.io"})), "user_id"),
    ],
)
def test_bad_names_and_ids_are_invalid_argument(stub, control, request_, field):
    method = stub.Track if isinstance(request_, pb.TrackRequest) else stub.Identify
    result = answer(lambda: method(request_, timeout=5))
    assert result.code == grpc.StatusCode.INVALID_ARGUMENT and result.field == field, result
    assert control.requests() == []


def test_a_huge_property_in_the_subject_gets_a_sane_answer(stub, control):
    control.add_contact(name="Ann", identifier="ann@example.com", channel_id=EMAIL_CHANNEL)
    request = pb.TrackRequest(
        event="Added to cart",  # "Product was of value:{{ revenue }}"
        properties=struct({"revenue": "9" * 1_000_000}),
        context=struct({"traits": {"email": "ann@example.com"}}),
    )
    result = answer(lambda: stub.Track(request, timeout=10))
    assert result.code in SANE, result
    if result.code == grpc.StatusCode.OK:
        [ticket] = control.tickets()
        assert ticket["subject"].startswith("Product was of value:999")
    else:
        assert control.tickets() == []


def test_a_multi_megabyte_event_gets_a_sane_answer(stub, control):
    control.add_contact(name="Ann", identifier="ann@example.com", channel_id=EMAIL_CHANNEL)
    properties = {f"key{i}": "v" * 100 for i in range(30_000)}  # about 3.5 MB on the wire
    request = pb.TrackRequest(
        event="Checked Out",
        properties=struct(properties),
        context=struct({"traits": {"email": "ann@example.com"}}),
    )
    assert 3_000_000 < request.ByteSize() < 4 * 1024 * 1024
    result = answer(lambda: stub.Track(request, timeout=10))
    assert result.code in SANE, result
    assert len(control.tickets()) == (1 if result.code == grpc.StatusCode.OK else 0)


def test_an_event_over_max_message_bytes_is_refused_and_the_sidecar_carries_on(make_sidecar, control):
    sidecar = make_sidecar(maxMessageBytes=64 * 1024)
    channel, stub = sidecar.stub()
    with channel:
        big = pb.IdentifyRequest(traits=struct({"email": "ann@example.com", "blob": "x" * 100_000}))
        result = answer(lambda: stub.Identify(big, timeout=5))
        assert result.code == grpc.StatusCode.RESOURCE_EXHAUSTED, result  # grpc's own message size limit
        assert control.requests() == []
        small = pb.IdentifyRequest(traits=struct({"email": "ann@example.com", "blob": "x" * 30_000}))
        assert stub.Identify(small, timeout=5).action == pb.ACTION_CREATE_CONTACT
        assert_still_serving(channel, stub)
    assert len(control.contacts()) == 1


def test_an_event_over_the_default_4_mib_is_refused(stub, control):
    big = pb.IdentifyRequest(traits=struct({"email": "ann@example.com", "blob": "x" * (5 * 1024 * 1024)}))
    result = answer(lambda: stub.Identify(big, timeout=10))
    assert result.code == grpc.StatusCode.RESOURCE_EXHAUSTED, result
    assert control.requests() == []


@pytest.mark.parametrize("method", ["Identify", "Track", "SendEvent"])
@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xff\xff\xff",
        b"\x0a\x03\xff\xfe\xfd",  # field 1 (user_id, or the event Struct) holding invalid bytes
        b"\x1a\xff\xff\xff\xff\x0f",  # a length far past the end
        b"\x0a\x02\x08",  # truncated
    ],
)
def test_undecodable_bytes_are_invalid_argument(channel, control, method, payload):
    raw = channel.unary_unary(f"{SERVICE}/{method}")
    result = answer(lambda: raw(payload, timeout=5))
    assert result.code == grpc.StatusCode.INVALID_ARGUMENT and result.field == "request", result
    assert control.requests() == []
