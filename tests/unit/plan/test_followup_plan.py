"""The follow-ups' planning: what is written and in what order, names resolved and cached,
unchanged custom field values skipped; and their config."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sidecar.config.load import build_config, load_config
from sidecar.deadline import Deadline
from sidecar.delivery import followups
from sidecar.delivery.followups import FollowUps
from sidecar.errors import ConfigError, FailedPrecondition, InvalidArgument
from sidecar.plan import followup_plan as fp
from sidecar.plan.events import Event
from sidecar.plan.plan import Plan, plan_event
from sidecar.plan.templates import compile_template
from sidecar.trengo_api.client import CallRecord, TrengoClient
from tests.support.harness import sidecar_config

ORDER = "Order Placed"


def track(**properties: Any) -> Event:
    return Event("track", email="ann@x.io", event_name=ORDER, properties=properties)


def identify(traits: dict[str, Any], context_traits: dict[str, Any] | None = None) -> Event:
    sources = ((traits, "traits"), (context_traits or {}, "context.traits"))
    return Event("identify", email="ann@x.io", trait_sources=sources)


# --- what is written, in what order --------------------------------------------------


def test_the_note_goes_first_then_each_label_once_in_config_order():
    planned = fp.ticket_followups(7, "Order A-1", [("VIP", 12), ("Orders", 13), ("12", 12)])
    assert [(p.kind, p.target, p.call.method, p.call.path) for p in planned] == [
        ("note", "", "POST", "/tickets/7/messages"),
        ("label", "VIP", "POST", "/tickets/7/labels"),
        ("label", "Orders", "POST", "/tickets/7/labels"),
    ]
    assert planned[0].call.body == {"message": "Order A-1", "internal_note": True}
    assert [p.call.body for p in planned[1:]] == [{"label_id": 12}, {"label_id": 13}]


def test_a_note_is_never_resent_but_labels_and_custom_fields_may_be():
    assert fp.add_note(1, "x").unsafe_to_resend
    assert not fp.add_label(1, 2).unsafe_to_resend and fp.add_label(1, 2).is_write
    assert not fp.set_contact_field(1, 2, "v").unsafe_to_resend


def test_no_note_no_note_call():
    assert [p.kind for p in fp.ticket_followups(7, None, [("VIP", 12)])] == ["label"]
    assert fp.ticket_followups(7, None, []) == []


def test_the_note_renders_like_the_subject_on_any_channel_and_escapes_html():
    extras = fp.TicketExtras(compile_template("{{ event }}: {{ total }} {{ item }} {{{ link }}}"))
    event = track(total=2000, item="<b>Mug</b>", link="<a href='/o/1'>o/1</a>")
    assert fp.note_text(event, extras) == "Order Placed: 2000 &lt;b&gt;Mug&lt;/b&gt; <a href='/o/1'>o/1</a>"
    assert fp.note_text(track(), fp.TicketExtras(compile_template("  {{ missing }} "))) is None
    assert fp.note_text(track(), fp.TicketExtras(None, ("VIP",))) is None


def test_custom_fields_are_written_in_config_order_skipping_unchanged_values():
    mappings = [fp.FieldMapping("plan", "Plan"), fp.FieldMapping("city", 31), fp.FieldMapping("seats", 32)]
    values = fp.field_values(identify({"plan": "pro", "city": "Utrecht", "seats": 5}), mappings)
    written = {(9, 30): "pro", (9, 31): "Amsterdam"}
    planned = fp.field_followups(
        9, list(zip(values, (30, 31, 32), strict=True)), lambda c, f: written.get((c, f))
    )
    assert [(p.target, p.call.path, p.call.body) for p in planned] == [
        ("31", "/contacts/9/custom_fields", {"custom_field_id": 31, "value": "Utrecht"}),
        ("32", "/contacts/9/custom_fields", {"custom_field_id": 32, "value": "5"}),
    ]
    assert fp.field_followups(
        10, list(zip(values, (30, 31, 32), strict=True)), lambda c, f: written.get((c, f))
    )


def test_trait_values_come_from_traits_then_context_traits_by_path():
    event = identify(
        {"plan": "pro", "address": {"city": "Utrecht"}, "empty": "", "trial": False, "ltv": 12.5},
        {"plan": "free", "region": "EU", "address.zip": "3511"},
    )
    mappings = [
        fp.FieldMapping(path, path)
        for path in ("plan", "address.city", "region", "address.zip", "empty", "nothing", "trial", "ltv")
    ]
    assert [(v.mapping.trait, v.value) for v in fp.field_values(event, mappings)] == [
        ("plan", "pro"),
        ("address.city", "Utrecht"),
        ("region", "EU"),
        ("address.zip", "3511"),
        ("trial", "false"),
        ("ltv", "12.5"),
    ]


def test_a_trait_that_cannot_fill_a_field_names_the_trait():
    event = identify({}, {"address": {"city": ["Utrecht"]}})
    with pytest.raises(InvalidArgument) as caught:
        fp.field_values(event, [fp.FieldMapping("address.city", "City")])
    assert caught.value.field == "context.traits.address.city"


# --- names -------------------------------------------------------------------------


def test_names_resolve_through_the_listing_and_ids_are_taken_as_they_are():
    index = fp.label_index(
        [{"id": 5, "name": "VIP"}, {"id": 6, "name": " Orders "}, {"id": 7, "name": "VIP"}]
    )
    assert index == {"VIP": 5, "Orders": 6}
    assert fp.resolve(["Orders", 99, "VIP"], index, "label") == [("Orders", 6), ("99", 99), ("VIP", 5)]
    with pytest.raises(FailedPrecondition) as caught:
        fp.resolve(["VIP", "Vip"], index, "label")
    assert caught.value.reason == "LABEL_NOT_FOUND" and "'Vip'" in caught.value.message
    with pytest.raises(FailedPrecondition) as caught:
        fp.resolve(["Plan"], {}, "custom_field")
    assert caught.value.reason == "CUSTOM_FIELD_NOT_FOUND"


def test_only_contact_custom_fields_are_found_by_name():
    records = [
        {"id": 1, "title": "Plan", "type": "TICKET"},
        {"id": 2, "title": "Plan", "type": "CONTACT"},
        {"id": 3, "name": "City"},
        {"id": 4, "title": "Notes", "type": "PROFILE"},
    ]
    assert fp.field_index(records) == {"Plan": 2, "City": 3}


def plan_of(resolver: FollowUps, event: Event) -> Plan:
    """The event's plan (sidecar/plan/plan.py) on an e-mail channel, as Delivery makes it."""
    return plan_event(event, resolver.config, "email")


def _resolver(sim: Any, **overrides: Any) -> tuple[FollowUps, TrengoClient]:
    config = build_config(sidecar_config(sim.base_url, **overrides))
    client = TrengoClient(config.base_url, config.api_token, timeout=2)
    return FollowUps(config, client), client


def test_label_names_are_listed_across_pages_once_and_then_cached(sim, control, monkeypatch):
    ids = [control.add_label(f"Label {n}")["id"] for n in range(30)]  # two pages of 25
    vip = control.add_label("VIP")["id"]
    entries = [
        {"from": ORDER, "to": "", "labels": ["VIP", "Label 3"]},
        {"from": "Refund", "to": "", "labels": ["New"]},
    ]

    async def test() -> None:
        resolver, client = _resolver(sim, eventTemplateMap=entries)
        calls: list[CallRecord] = []
        plan = await resolver.plan_ticket(plan_of(resolver, track()), Deadline.after(5), calls)
        assert plan is not None and [label_id for _, label_id in plan.labels] == [vip, ids[3]]
        assert [c.url.rsplit("/", 1)[1] for c in calls] == ["labels?page=1", "labels?page=2"]
        again: list[CallRecord] = []
        await resolver.plan_ticket(plan_of(resolver, track()), Deadline.after(5), again)
        assert again == []  # from the cache
        new = control.add_label("New")["id"]
        refund = Event("track", email="ann@x.io", event_name="Refund")
        with pytest.raises(FailedPrecondition):  # listed too recently to list again
            await resolver.plan_ticket(plan_of(resolver, refund), Deadline.after(5), again)
        monkeypatch.setattr(followups, "RELIST_SECONDS", 0.0)
        plan = await resolver.plan_ticket(plan_of(resolver, refund), Deadline.after(5), again)
        assert plan is not None and plan.labels == [("New", new)]
        assert len(again) == 2  # listed again, for the name it lacked
        await client.aclose()

    asyncio.run(test())
    assert len(control.requests(path_prefix="/api/v2/labels")) == 4


def test_custom_field_names_are_looked_up_only_for_traits_the_event_carries(sim, control):
    plan_field = control.add_custom_field("Plan")["id"]

    async def test() -> None:
        resolver, client = _resolver(
            sim, customFieldMap=[{"from": "plan", "to": "Plan"}, {"from": "x", "to": 77}]
        )
        calls: list[CallRecord] = []
        nothing = plan_of(resolver, identify({"other": 1}))
        assert await resolver.plan_contact(nothing, Deadline.after(5), calls) == []
        assert calls == []
        pro = plan_of(resolver, identify({"plan": "pro", "x": "y"}))
        planned = await resolver.plan_contact(pro, Deadline.after(5), calls)
        assert [(v.value, field_id) for v, field_id in planned] == [("pro", plan_field), ("y", 77)]
        assert len(calls) == 1
        await client.aclose()

    asyncio.run(test())


# --- config ------------------------------------------------------------------------


def _config(**raw: Any) -> Any:
    return build_config({"apiToken": "t", "channelId": 1, **raw})


def test_note_and_labels_are_read_from_event_template_map_entries():
    config = _config(
        eventTemplateMap=[
            {"from": "A", "to": "x", "note": "Order {{ id }}", "labels": ["VIP", 12]},
            {"from": "B", "to": "y"},
        ]
    )
    assert list(config.event_extras) == ["A"]
    assert config.event_extras["A"].labels == ("VIP", 12)
    assert (
        config.event_extras["A"].note is not None and config.event_extras["A"].note.source == "Order {{ id }}"
    )
    assert set(config.event_templates) == {"A", "B"}


def test_note_and_labels_from_the_environment():
    env = {
        "TRENGO_API_TOKEN": "t",
        "TRENGO_CHANNEL_ID": "1",
        "TRENGO_EVENT_TEMPLATE_MAP": '[{"from": "A", "to": "", "note": "n {{ x }}", "labels": [3, "VIP"]}]',
        "TRENGO_CUSTOM_FIELD_MAP": '{"plan": "Plan"}',
    }
    config = load_config(None, env)
    assert config.event_extras["A"].labels == (3, "VIP")
    assert config.custom_field_map == (fp.FieldMapping("plan", "Plan"),)


def test_custom_field_map_from_a_file_or_the_environment():
    assert _config(
        customFieldMap=[{"from": "address.city", "to": "City"}, {"from": "plan", "to": 5}]
    ).custom_field_map == (fp.FieldMapping("address.city", "City"), fp.FieldMapping("plan", 5))
    assert _config(customFieldMap='[{"from": "plan", "to": "Plan"}]').custom_field_map == (
        fp.FieldMapping("plan", "Plan"),
    )


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"eventTemplateMap": [{"from": "A", "labels": "VIP"}]}, "eventTemplateMap[0].labels"),
        ({"eventTemplateMap": [{"from": "A", "labels": ["VIP", True]}]}, "eventTemplateMap[0].labels[1]"),
        ({"eventTemplateMap": [{"from": "A", "labels": [0]}]}, "eventTemplateMap[0].labels[0]"),
        ({"eventTemplateMap": [{"from": "A", "note": "{{#if}}"}]}, "eventTemplateMap[0].note"),
        ({"eventTemplateMap": [{"from": "A", "note": 5}]}, "eventTemplateMap[0].note"),
        ({"customFieldMap": [{"from": "plan"}]}, "customFieldMap[0].to"),
        ({"customFieldMap": [{"from": "", "to": "Plan"}]}, "customFieldMap[0].from"),
        ({"customFieldMap": [{"from": "a.", "to": "Plan"}]}, "customFieldMap[0].from"),
        ({"customFieldMap": [{"from": "a", "to": "P", "as": "x"}]}, "customFieldMap[0].as"),
        ({"customFieldMap": [{"from": "a", "to": "P"}, {"from": "b", "to": "P"}]}, "customFieldMap[1].to"),
        ({"customFieldMap": "not json"}, "customFieldMap"),
        ({"customFieldMap": 5}, "customFieldMap"),
    ],
)
def test_bad_follow_up_config_names_the_key(raw, key):
    with pytest.raises(ConfigError) as caught:
        _config(**raw)
    assert caught.value.key == key


def test_every_bad_label_and_note_is_reported_at_once():
    entries = [{"from": "A", "labels": [0, "VIP", True]},
               {"from": "B", "note": 5, "labels": [""], "assignTo": {"user": "ann"}}]  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        _config(eventTemplateMap=entries)
    assert [p.key for p in caught.value.problems] == [
        "eventTemplateMap[0].labels[0]", "eventTemplateMap[0].labels[2]",
        "eventTemplateMap[1].note", "eventTemplateMap[1].labels[0]", "eventTemplateMap[1].assignTo.user",
    ]  # fmt: skip
