"""The pure decisions: identifier kind, calls and bodies, search answers, subjects."""

from __future__ import annotations

import pytest

from sidecar.errors import FailedPrecondition, InvalidArgument
from sidecar.plan import transform as tf
from sidecar.plan.events import Event
from sidecar.plan.templates import compile_template


@pytest.mark.parametrize(
    ("channel_type", "kind"),
    [
        ("EMAIL", "email"),
        ("SMS", "phone"),
        ("WA_BUSINESS", "phone"),
        ("VOIP", "phone"),
        ("CHAT", None),
        ("FACEBOOK", None),
        ("CUSTOM", None),
    ],
)
def test_channel_kind(channel_type, kind):
    assert tf.channel_kind(channel_type) == kind


def test_auto_learns_the_kind_and_explicit_kinds_are_checked():
    assert tf.identifier_kind("auto", 1, "EMAIL") == "email"
    assert tf.identifier_kind("auto", 1, "WA_BUSINESS") == "phone"
    assert tf.identifier_kind("email", 1, "CHAT") == "email"  # the user's choice on a channel of no kind
    for configured, channel_type in (("phone", "EMAIL"), ("email", "SMS")):
        with pytest.raises(FailedPrecondition) as caught:
            tf.identifier_kind(configured, 1, channel_type)
        assert caught.value.reason == "CHANNEL_KIND_MISMATCH"
    with pytest.raises(FailedPrecondition):
        tf.identifier_kind("auto", 1, "CHAT")


def test_missing_identifier_names_the_field():
    with pytest.raises(InvalidArgument) as caught:
        tf.identifier(Event("identify", email="a@x.io"), "phone")
    assert caught.value.reason == "MISSING_IDENTIFIER" and caught.value.field == "traits.phone"


def test_cache_keys_fold_case_and_phone_punctuation():
    assert tf.cache_key("Ann@X.io", "email") == tf.cache_key("ann@x.io", "email")
    assert tf.cache_key("+31 6-1234 5678", "phone") == tf.cache_key("+31612345678", "phone")


def test_bodies_match_the_reference():
    assert tf.create_contact(5, "a@x.io", "Ann") == tf.Call(
        "POST", "/channels/5/contacts", body={"name": "Ann", "identifier": "a@x.io", "channel_id": 5}
    )
    assert tf.create_contact(5, "a@x.io", None).body == {"identifier": "a@x.io", "channel_id": 5}
    assert tf.update_contact(9, "Ann") == tf.Call("PUT", "/contacts/9", body={"name": "Ann"})
    assert tf.create_ticket(9, 5, None).body == {"contact_id": 9, "channel_id": 5}
    assert tf.create_ticket(9, 5, "Hi").body == {"contact_id": 9, "channel_id": 5, "subject": "Hi"}
    assert tf.search_contacts("+31 6").params == (("page", "1"), ("term", "+31 6"))


def contact(id_: int, identifier: str, **more: str) -> dict:
    return {"id": id_, "identifier": identifier, **more}


def test_matching_contact_one_none_several():
    assert tf.matching_contact([], "a@x.io", "email") is None
    assert tf.matching_contact([contact(1, "A@x.io")], "a@x.io", "email") == 1
    assert tf.matching_contact([contact(1, "joa@x.io")], "a@x.io", "email") is None  # fuzzy hit
    assert tf.matching_contact([contact(1, "x", phone="+31 612")], "+31612", "phone") == 1
    with pytest.raises(FailedPrecondition) as caught:
        tf.matching_contact([contact(1, "a@x.io"), contact(2, "a@x.io")], "a@x.io", "email")
    assert caught.value.reason == "DUPLICATE_CONTACTS"


def test_template_must_be_mapped_exactly():
    templates = {"Product Purchased": compile_template("{{ event }} from our store")}
    assert tf.template_for(Event("track", event_name="Product Purchased"), templates) is not None
    with pytest.raises(FailedPrecondition) as caught:
        tf.template_for(Event("track", event_name="product purchased"), templates)
    assert caught.value.reason == "EVENT_NOT_MAPPED"


@pytest.mark.parametrize(
    ("event", "template", "properties", "subject"),
    [
        ("Product Purchased", "{{ event }} from our store", {}, "Product Purchased from our store"),
        (
            "Added to cart",
            "Product was of value:{{ revenue }}",
            {"revenue": 2000},
            "Product was of value:2000",
        ),
        ("Checked Out", "Cart was checked out", {}, "Cart was checked out"),
        ("E", "{{properties}}", {"a": 1, "b": "x"}, "a: 1 b: x"),
        ("E", "", {}, None),
    ],
)
def test_subject_on_email_channels(event, template, properties, subject):
    ev = Event("track", event_name=event, properties=properties)
    assert tf.subject(ev, compile_template(template), "email") == subject


def test_no_subject_on_phone_channels():
    ev = Event("track", event_name="E")
    assert tf.subject(ev, compile_template("{{event}}"), "phone") is None
