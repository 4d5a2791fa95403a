"""Plan once, then deliver: what an event will do in Trengo, decided in one pure step before any call.

``plan_event(event, settings, kind)`` turns a validated event, the config and the channel's kind (email
or phone: the one fact that needs Trengo, from the cached channel list) into a ``Plan``: the channel,
the identifier, the template, the rendered subject and note, the labels, the assignee and the custom
field values.
Delivery (sidecar/delivery/) only executes a plan against the caches, the store and Trengo; it
decides nothing the plan holds. A dry run hands the plan back (``Outcome.plan``).

What the plan cannot know without Trengo stays for delivery: whether the contact exists (a search,
or the contact cache), and the ids of labels and custom fields named in the config (Trengo's lists).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from . import followup_plan as fp
from . import transform as tf
from .events import Event
from .templates import Template


class PlanSettings(Protocol):
    """What planning reads of the config (the Config has it): named here so plan/ never imports config/."""

    @property
    def channel_id(self) -> int: ...
    @property
    def event_templates(self) -> Mapping[str, Template]: ...
    @property
    def event_extras(self) -> Mapping[str, fp.TicketExtras]: ...
    @property
    def custom_field_map(self) -> tuple[fp.FieldMapping, ...]: ...
    @property
    def default_assign_to(self) -> fp.AssignTo | None: ...


@dataclass(frozen=True, slots=True)
class Plan:
    """One event's delivery, decided: every value delivery sends, before it sends any."""

    event: Event
    channel_id: int  # the event's trengoChannelId, else the configured channelId
    kind: tf.Kind  # how that channel identifies contacts
    identifier: str  # the event's email or phone, as the kind needs; "" only beside a trengoContactId
    template: Template | None = None  # a track's eventTemplateMap entry
    subject: str | None = None  # the ticket's subject, rendered (e-mail channels, non-empty templates)
    note: str | None = None  # the ticket's internal note, rendered; None: no note
    labels: tuple[fp.Target, ...] = ()  # the ticket's labels as configured (names resolved when sent)
    custom_fields: tuple[fp.FieldValue, ...] = ()  # an identify's mapped traits, as the text sent
    assign_to: fp.AssignTo | None = None  # the ticket's team or agent (assignTo, else defaultAssignTo)

    @property
    def followups(self) -> Sequence[str]:
        """The kinds of write that follow the primary one, in the order they go."""
        kinds = []
        if self.note:
            kinds.append("note")
        if self.labels:
            kinds.append("label")
        if self.custom_fields:
            kinds.append("custom_field")
        if self.assign_to is not None:
            kinds.append("assign")
        return kinds


def channel_of(event: Event, settings: PlanSettings) -> int:
    """The channel an event goes to: its trengoChannelId external id overrides channelId."""
    return event.channel_id or settings.channel_id


def plan_event(event: Event, settings: PlanSettings, kind: tf.Kind) -> Plan:
    """The plan of one validated event on a channel of ``kind``. Pure: reads only its arguments.

    Refuses what the event cannot do, in the order a caller hears it: a track that is not in
    eventTemplateMap (FAILED_PRECONDITION EVENT_NOT_MAPPED), a mapped trait that cannot fill a
    custom field (INVALID_ARGUMENT naming it), no identifier for the kind (INVALID_ARGUMENT).
    """
    channel_id = channel_of(event, settings)
    if event.kind == "track":
        return _track(event, settings, kind, channel_id)
    custom_fields = tuple(fp.field_values(event, settings.custom_field_map))
    return Plan(event, channel_id, kind, _identifier(event, kind), custom_fields=custom_fields)


def _track(event: Event, settings: PlanSettings, kind: tf.Kind, channel_id: int) -> Plan:
    template = tf.template_for(event, settings.event_templates)
    extras = settings.event_extras.get(event.event_name)
    return Plan(
        event,
        channel_id,
        kind,
        _identifier(event, kind),
        template=template,
        subject=tf.subject(event, template, kind),
        note=fp.note_text(event, extras) if extras else None,
        labels=extras.labels if extras else (),
        assign_to=extras.assign_to if extras and extras.assign_to else settings.default_assign_to,
    )


def _identifier(event: Event, kind: tf.Kind) -> str:
    """With a trengoContactId the identifier is optional (it only names the cache entry)."""
    if event.contact_id is not None:
        return tf.identifier_or_none(event, kind) or ""
    return tf.identifier(event, kind)
