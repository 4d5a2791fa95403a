"""What a call returns: plain frozen dataclasses, no protobuf types."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import grpc


class Action(StrEnum):
    """What the sidecar did (or, for a dry run, would do) in Trengo."""

    UNSPECIFIED = "unspecified"
    CREATE_CONTACT = "create_contact"
    UPDATE_CONTACT = "update_contact"
    CREATE_TICKET = "create_ticket"
    NONE = "none"
    # Not delivered, as RudderStack would not have (consent denied, or integrations exclude Trengo);
    # DeliveryResult.filtered_reason says which rule. Trengo was not called.
    FILTERED = "filtered"


@dataclass(frozen=True)
class TrengoCall:
    """One HTTP call to Trengo (for a dry run, also a write it would send: attempts == 0)."""

    method: str
    url: str
    body_json: str = ""
    status_code: int = 0
    attempts: int = 0
    duration_ms: float = 0.0
    headers: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def body(self) -> Any:
        """The JSON body, parsed; None when there was none."""
        return json.loads(self.body_json) if self.body_json else None


@dataclass(frozen=True)
class FollowUpFailure:
    """A follow-up write (a ticket's note or label, a contact's custom field) that did not land.

    The primary write (the ticket, the contact) stands: the call succeeded.
    """

    kind: str  # "note", "label", "custom_field" or "assign"
    target: str  # the label or custom field as the sidecar's config names it; "" for the note
    reason: str  # the ErrorInfo reason of the failed write (TRENGO_REJECTED, TRENGO_UNAVAILABLE, ...)
    message: str


@dataclass(frozen=True)
class TicketAssignment:
    """Where a track's ticket was routed (the sidecar's assignTo / defaultAssignTo)."""

    type: str  # "team" or "user"
    target: str  # the team's name or the agent's e-mail (or id) as the sidecar's config names it
    id: int  # Trengo's id of the team or user
    assigned: bool  # the assign call landed (False in a dry run, or when it failed for good)


@dataclass(frozen=True)
class DeliveryResult:
    action: Action
    contact_id: int = 0  # 0 when unknown (a dry run's contact to be created)
    ticket_id: int = 0  # the ticket a track opened; 0 otherwise
    channel_id: int = 0
    requests: tuple[TrengoCall, ...] = ()
    dry_run: bool = False
    contact_cache_hit: bool = False
    replayed: bool = False  # the stored result of an earlier call with the same message_id
    message_id: str = ""
    request_id: str | None = None  # the sidecar's x-request-id for this call, for its logs
    filtered_reason: str = ""  # for Action.FILTERED: "consent denied: C0004", "integrations.Trengo is false"
    failed_followups: tuple[FollowUpFailure, ...] = ()  # follow-ups that did not land; () when all did
    assignment: TicketAssignment | None = None  # a track's ticket routed to a team or agent; else None


# --- the queue: Enqueue and GetDelivery ---------------------------------------------------------


@dataclass(frozen=True)
class Enqueued:
    """Enqueue's answer: the event is durably accepted (delivery follows; see get_delivery)."""

    message_id: str  # the event's own, or the one the sidecar generated for it
    duplicate: bool = False  # that message_id was accepted before: nothing new was queued
    filtered_reason: str = ""  # not queued, as RudderStack would not deliver it (consent, integrations)
    request_id: str | None = None  # x-request-id, when the sidecar sends one (its queue RPCs do not yet)


class DeliveryState(StrEnum):
    UNSPECIFIED = "unspecified"
    QUEUED = "queued"
    DELIVERING = "delivering"
    RETRYING = "retrying"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True)
class DeliveryError:
    """Why a queued event failed (or, while retrying, why its last attempt did)."""

    code: grpc.StatusCode
    reason: str  # e.g. "TRENGO_REJECTED", "TRENGO_OUTCOME_UNKNOWN"
    message: str
    field: str = ""
    retry_after_seconds: float = 0.0


@dataclass(frozen=True)
class DeliveryStatus:
    """GetDelivery's answer: where a queued event is."""

    message_id: str
    state: DeliveryState
    attempts: int
    accepted_at: datetime  # timezone-aware, UTC
    result: DeliveryResult | None = None  # once delivered
    error: DeliveryError | None = None  # once failed; while retrying, the last error
    next_attempt_at: datetime | None = None  # while queued or retrying
    request_id: str | None = None  # x-request-id, when the sidecar sends one (its queue RPCs do not yet)


# --- streams and the operator's queue RPCs: Deliver, WatchDeliveries, ListDeliveries ------------


@dataclass(frozen=True)
class Delivered:
    """One answer of a Deliver stream: the id its event was sent with, and its result or its error."""

    id: str
    result: DeliveryResult | None = None  # the event was delivered (or filtered, or dry-run)
    error: DeliveryError | None = None  # it was not: what a unary call would have raised, as data

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class DeliveryUpdate:
    """One change of a queued event's state, from WatchDeliveries."""

    cursor: int  # pass it back as watch_deliveries(cursor=...) to resume after this change
    status: DeliveryStatus  # the event as of this change


@dataclass(frozen=True)
class DeliveryPage:
    """A page of ListDeliveries: events in one state, oldest first."""

    deliveries: tuple[DeliveryStatus, ...]
    next_page_token: str = ""  # "" on the last page; else pass it as list_deliveries(page_token=...)
