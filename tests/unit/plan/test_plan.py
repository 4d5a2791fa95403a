"""Plan once, then deliver: the pure step from a validated event and the config to a Plan. No server."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.config import build_config
from sidecar.errors import FailedPrecondition, InvalidArgument
from sidecar.plan.events import Event
from sidecar.plan.plan import Plan, channel_of, plan_event
from tests.support.harness import EMAIL_CHANNEL, sidecar_config

ORDER = "Order Completed"
ENTRIES = [
    {"from": ORDER, "to": "Order {{ order_id }}", "note": "{{ event }}: {{ total }} EUR",
     "labels": ["VIP", 7]},
    {"from": "Silent", "to": ""},
]


def config(**overrides: Any) -> Any:
    # No simulator behind this URL: planning never calls Trengo.
    return build_config(sidecar_config("http://127.0.0.1:9", **{"eventTemplateMap": ENTRIES, **overrides}))


def track(**fields: Any) -> Event:
    values: dict[str, Any] = {"email": "ann@x.io", "phone": "+31 6 1234 5678", "event_name": ORDER,
                              "properties": {"order_id": "A-1", "total": 12.5}}
    return Event("track", **{**values, **fields})


def identify(traits: dict[str, Any], **fields: Any) -> Event:
    return Event("identify", email="ann@x.io", name="Ann", trait_sources=((traits, "traits"),), **fields)


def test_a_track_on_an_email_channel_is_planned_whole_before_any_call():
    plan = plan_event(track(), config(), "email")
    assert (plan.channel_id, plan.kind, plan.identifier) == (EMAIL_CHANNEL, "email", "ann@x.io")
    assert plan.template is not None and plan.template.source == "Order {{ order_id }}"
    assert plan.subject == "Order A-1"
    assert plan.note == "Order Completed: 12.5 EUR"  # rendered as the subject is, with ``event``
    assert plan.labels == ("VIP", 7)  # as configured: the ids of names come from Trengo when sent
    assert plan.custom_fields == () and plan.followups == ["note", "label"]


def test_on_a_phone_channel_the_ticket_has_no_subject_but_keeps_its_note():
    plan = plan_event(track(), config(), "phone")
    assert (plan.kind, plan.identifier, plan.subject) == ("phone", "+31 6 1234 5678", None)
    assert plan.note == "Order Completed: 12.5 EUR"


def test_the_event_channel_overrides_the_configured_one():
    assert channel_of(track(channel_id=99), config()) == 99
    assert plan_event(track(channel_id=99), config(), "email").channel_id == 99
    assert plan_event(track(), config(), "email").channel_id == EMAIL_CHANNEL


def test_an_empty_template_plans_no_subject_and_an_entry_without_extras_no_followups():
    plan = plan_event(track(event_name="Silent"), config(), "email")
    assert (plan.subject, plan.note, plan.labels, plan.followups) == (None, None, (), [])


def test_an_identify_plans_its_custom_field_values_as_text():
    mapping = [{"from": "plan", "to": "Plan"}, {"from": "seats", "to": 77}, {"from": "absent", "to": "X"}]
    plan = plan_event(identify({"plan": "pro", "seats": 12}), config(customFieldMap=mapping), "email")
    assert [(v.mapping.field, v.value) for v in plan.custom_fields] == [("Plan", "pro"), (77, "12")]
    assert (plan.identifier, plan.template, plan.subject, plan.followups) == ("ann@x.io", None, None,
                                                                             ["custom_field"])


def test_a_trengo_contact_id_needs_no_identifier():
    plan = plan_event(Event("identify", name="Ann", contact_id=5), config(), "phone")
    assert plan.identifier == ""  # none: the id is used as it is, nothing to search or cache by


def test_refusals_come_in_the_order_a_caller_hears_them():
    with pytest.raises(FailedPrecondition) as unmapped:
        plan_event(track(event_name="order completed", email=None, phone=None), config(), "email")
    assert unmapped.value.reason == "EVENT_NOT_MAPPED"
    mapping = [{"from": "address", "to": "City"}]
    with pytest.raises(InvalidArgument) as bad_trait:  # before the missing phone
        plan_event(identify({"address": {"city": "Delft"}}), config(customFieldMap=mapping), "phone")
    assert bad_trait.value.field == "traits.address"
    with pytest.raises(InvalidArgument) as no_phone:
        plan_event(identify({}), config(), "phone")
    assert no_phone.value.reason == "MISSING_IDENTIFIER" and no_phone.value.field == "traits.phone"


def test_planning_is_pure_the_same_inputs_give_the_same_plan():
    settings = config()
    first, again = plan_event(track(), settings, "email"), plan_event(track(), settings, "email")
    assert isinstance(first, Plan) and first == again
    with pytest.raises(AttributeError):
        first.subject = "changed"  # type: ignore[misc]  # frozen: delivery executes it, never edits it


def test_a_ticket_is_assigned_as_its_entry_says_else_as_the_default():
    entries = [*ENTRIES, {"from": "Refund", "to": "", "assignTo": {"team": "Support"}}]
    settings = config(eventTemplateMap=entries, defaultAssignTo={"user": "agent@example.com"})
    refund = plan_event(track(event_name="Refund"), settings, "email")
    assert (refund.assign_to.kind, refund.assign_to.target) == ("team", "Support")
    assert refund.followups == ["assign"]
    order = plan_event(track(), settings, "email")
    assert (order.assign_to.kind, order.assign_to.target) == ("user", "agent@example.com")
    assert order.followups == ["note", "label", "assign"]  # the assignee finds the ticket complete
    assert plan_event(track(), config(), "email").assign_to is None
