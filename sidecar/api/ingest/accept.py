"""Each event of a batch, one by one: queued, filtered or refused, then the batch in one transaction.

The same steps as Enqueue (sidecar/api/queue_service.py): the RudderStack JSON parsed as SendEvent parses
it, a missing messageId generated, the filters (consent, integrations) first, then what delivery would
refuse before any Trengo call. An event that fails is stored failed with its error (INVALID_EVENT and
the field, or EVENT_NOT_MAPPED...), so GetDelivery and ``deliveries list`` show it; it never stops the
batch's other events. page, screen, group and alias are filtered, as RudderStack's Trengo destination
supports only identify and track.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field, fields, replace
from typing import Any

from google.protobuf import json_format

from ...config.load import Config
from ...delivery.delivery import Delivery
from ...delivery.outcome import deliver_error
from ...errors import InvalidArgument, SidecarError
from ...observe.http_metrics import OUTCOMES
from ...plan import events, filters
from ...queue.store import NewJob
from ..queue_service import person

SENT_TYPES = ("identify", "track")
FILTERED_TYPES = ("page", "screen", "group", "alias")
ACCEPTED, DUPLICATE, FILTERED, REJECTED = OUTCOMES  # what became of an event (a metric's label too)
EVENT_FIELDS = tuple(f.name for f in fields(events.Event))
MAX_DETAILS = 100  # the answer lists at most this many events that were not accepted


@dataclass(slots=True)
class Decision:
    """What became of one event: a job to store (queued, or failed), or filtered (nothing stored)."""

    index: int
    message_id: str
    job: NewJob | None = None
    outcome: str = ACCEPTED
    reason: str = ""  # the error's reason, or why it was filtered
    field: str = ""
    message: str = ""


@dataclass(slots=True)
class Answer:
    counts: Counter[str] = field(default_factory=Counter)
    details: list[dict[str, Any]] = field(default_factory=list)

    def body(self) -> dict[str, Any]:
        return {**{outcome: self.counts[outcome] for outcome in OUTCOMES}, "events": self.details}


def decide(
    raw: Any, index: int, config: Config, delivery: Delivery, trace: dict[str, str] | None
) -> Decision:
    """One event of a batch, checked as Enqueue checks it; never raises for the caller's mistakes."""
    message_id = _message_id(raw)
    try:
        kind = _kind(raw)
        if kind in FILTERED_TYPES:
            reason = f"type {kind} is not sent to Trengo"
            return Decision(index, message_id, outcome=FILTERED, reason=reason, message=reason)
        event = _parse(raw, config.max_event_fields)
        if event.message_id != message_id:  # none was given: the one generated
            event = replace(event, message_id=message_id)
        dropped = filters.check(event, config)
        if dropped is not None:
            reason = dropped.reason
            return Decision(index, message_id, outcome=FILTERED, reason=reason, message=reason)
        event = delivery.check(event)  # the phone in E.164 with a region: the person key below
    except SidecarError as exc:
        error = json_format.MessageToDict(deliver_error(exc), preserving_proto_field_name=True)
        job = NewJob(message_id, f"message:{message_id}", {"refused": raw}, trace, error=error)
        return Decision(index, message_id, job, REJECTED, exc.reason, exc.field or "", exc.message)
    return Decision(index, message_id, NewJob(message_id, person(event), _stored(event), trace))


def _message_id(raw: Any) -> str:
    """The event's messageId when it is a usable one, else a new one (as Enqueue gives)."""
    value = raw.get("messageId") if isinstance(raw, dict) else None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and value and len(value) <= events.MAX_ID and value.isprintable():
        return value
    return uuid.uuid4().hex


def _kind(raw: Any) -> str:
    if not isinstance(raw, dict):
        raise InvalidArgument("each event of the batch must be a JSON object", field="event")
    kind = raw.get("type")
    if not isinstance(kind, str) or not kind.strip():
        raise InvalidArgument("event.type is required (identify or track)", field="event.type")
    kind = kind.strip().lower()
    if kind not in SENT_TYPES + FILTERED_TYPES:
        raise InvalidArgument(f"event.type {kind[:40]!r} is not an event type", field="event.type")
    return kind


def _parse(raw: dict[str, Any], max_fields: int) -> events.Event:
    """As SendEvent parses its event, numbers and depth under a Struct's rules (events.plain_json),
    and no more values than a SendEvent may carry (maxEventFields)."""
    if events.too_many_fields(raw, max_fields):
        raise InvalidArgument(
            f"event makes the event more than {max_fields} fields (JSON values), over maxEventFields",
            field="event",
        )
    return events.from_rudder_json(events.plain_json(raw, "event"))


def _stored(event: events.Event) -> dict[str, Any]:
    """The event as the queue stores it, as Enqueue's ``asdict`` gives it once serialised.

    A shallow copy: its values were built fresh from the request, so asdict's deep copy (half the
    time of a batch) buys nothing.
    """
    return {name: getattr(event, name) for name in EVENT_FIELDS}


def answer(decisions: list[Decision], stored: list[bool]) -> Answer:
    """The counts and the events worth a look (all but the accepted), for the 200's body."""
    result = Answer()
    jobs = iter(stored)
    for decision in decisions:
        outcome = decision.outcome
        if decision.job is not None and not next(jobs):
            outcome = DUPLICATE  # already accepted once (an SDK's retry): acknowledged, not queued twice
        result.counts[outcome] += 1
        if outcome != ACCEPTED and len(result.details) < MAX_DETAILS:
            result.details.append(_detail(decision, outcome))
    return result


def _detail(decision: Decision, outcome: str) -> dict[str, Any]:
    detail: dict[str, Any] = {"index": decision.index, "messageId": decision.message_id, "outcome": outcome}
    if outcome == FILTERED:
        detail["reason"] = decision.reason
    elif outcome == REJECTED:
        detail |= {"reason": decision.reason, "field": decision.field, "message": decision.message}
    return detail
