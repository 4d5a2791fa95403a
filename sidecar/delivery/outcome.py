"""What one event did in Trengo (``Outcome``), the state of its delivery while it runs (``Run``), and
the contract's forms of an outcome and of an error.

Apart from delivery.py so that the modules delivery.py uses (contacts, follow-ups, idempotency) can
name them without importing delivery.py back. The contract's forms are here, not in the api, because
the queue's worker stores them too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trengo.sidecar.v1 import sidecar_pb2 as pb

from ..deadline import Deadline
from ..errors import SidecarError
from ..plan import transform as tf
from ..plan.events import Event
from ..plan.followup_plan import Assignment, FollowUpFailure
from ..plan.plan import Plan
from ..trengo_api.records import CallRecord

ACTIONS = {
    "create_contact": pb.ACTION_CREATE_CONTACT,
    "update_contact": pb.ACTION_UPDATE_CONTACT,
    "create_ticket": pb.ACTION_CREATE_TICKET,
    "none": pb.ACTION_NONE,
    "filtered": pb.ACTION_FILTERED,
}


@dataclass(slots=True)
class Outcome:
    """What one event did in Trengo; the server turns it into a DeliveryResult."""

    action: str  # create_contact, update_contact, create_ticket, none, filtered
    channel_id: int
    contact_id: int = 0
    ticket_id: int = 0
    calls: list[CallRecord] = field(default_factory=list)
    dry_run: bool = False
    contact_cache_hit: bool = False
    replayed: bool = False
    message_id: str = ""
    filtered_reason: str = ""  # for "filtered": the rule that kept the event from Trengo
    # follow-ups (note, labels, custom fields) that did not land; the primary write stands
    failed_followups: list[FollowUpFailure] = field(default_factory=list)
    assignment: Assignment | None = None  # a track's ticket, when assignTo/defaultAssignTo applies
    # what was planned (sidecar/plan/plan.py): a dry run's answer in process; never stored nor sent
    plan: Plan | None = None


@dataclass(slots=True)
class Run:
    """The state of one event's delivery."""

    event: Event
    deadline: Deadline
    channel_id: int
    calls: list[CallRecord] = field(default_factory=list)
    kind: tf.Kind = "email"
    cache_hit: bool = False
    plan: Plan | None = None  # made once the channel's kind is known

    def outcome(self, action: str, contact_id: int = 0, ticket_id: int = 0) -> Outcome:
        return Outcome(
            action,
            self.channel_id,
            contact_id,
            ticket_id,
            self.calls,
            self.event.dry_run,
            self.cache_hit,
            message_id=self.event.message_id,
            plan=self.plan,
        )


def to_result(outcome: Outcome) -> pb.DeliveryResult:
    return pb.DeliveryResult(
        action=ACTIONS[outcome.action],
        contact_id=outcome.contact_id,
        ticket_id=outcome.ticket_id,
        channel_id=outcome.channel_id,
        requests=[
            pb.TrengoRequest(
                method=c.method,
                url=c.url,
                body_json=c.body_json,
                status_code=c.status_code,
                attempts=c.attempts,
                duration_ms=c.duration_ms,
                headers=c.headers,
            )
            for c in outcome.calls
        ],
        dry_run=outcome.dry_run,
        contact_cache_hit=outcome.contact_cache_hit,
        replayed=outcome.replayed,
        message_id=outcome.message_id,
        filtered_reason=outcome.filtered_reason,
        failed_followups=[
            pb.FollowUpFailure(kind=f.kind, target=f.target, reason=f.reason, message=f.message)
            for f in outcome.failed_followups
        ],
        assignment=_assignment(outcome),
    )


def _assignment(outcome: Outcome) -> pb.TicketAssignment | None:
    a = outcome.assignment
    if a is None:
        return None
    return pb.TicketAssignment(type=a.kind, target=a.target, id=a.id, assigned=a.assigned)


def deliver_error(error: SidecarError) -> pb.DeliverError:
    return pb.DeliverError(
        code=error.code.value[0],
        message=error.message,
        reason=error.reason,
        field=error.field or "",
        retry_after_seconds=error.retry_after or 0.0,
    )
