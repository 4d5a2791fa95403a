"""Pure decisions for the writes that follow an event's primary write. No I/O.

A track's ticket can carry an internal note and labels (``note`` and ``labels`` in an
``eventTemplateMap`` entry); an identify's contact can get custom fields filled from traits
(``customFieldMap``). This module decides which of those writes an event needs, in which order,
with which bodies: names are resolved against look-up answers the caller hands in, and custom
field values the sidecar already wrote for the contact are skipped. ``sidecar/delivery/followups.py``
does the I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import FailedPrecondition, InvalidArgument
from .events import Event
from .templates import Template, js_string, render_subject
from .transform import Call

FollowUpKind = Literal["note", "label", "custom_field", "assign"]
Target = int | str  # what the config names: an id (int) or a name (str)
# Custom field types of other records: a field of one of these is never taken for a contact field.
NOT_CONTACT_FIELD_TYPES = frozenset({"TICKET", "PROFILE"})


@dataclass(frozen=True, slots=True)
class AssignTo:
    """``assignTo`` / ``defaultAssignTo``: a team (by name or id) or an agent (by e-mail or id)."""

    kind: Literal["team", "user"]
    target: Target


@dataclass(frozen=True, slots=True)
class Assignment:
    """Whom a track's ticket was assigned to (DeliveryResult.assignment)."""

    kind: str  # team, user
    target: str  # as the config named it
    id: int  # Trengo's id of the team or user
    assigned: bool  # the /assign call landed (false: it failed for good, or a dry run)


@dataclass(frozen=True, slots=True)
class TicketExtras:
    """What an eventTemplateMap entry adds to its tickets."""

    note: Template | None = None
    labels: tuple[Target, ...] = ()
    assign_to: AssignTo | None = None


@dataclass(frozen=True, slots=True)
class FieldMapping:
    """One customFieldMap entry: a trait path, and the contact custom field (id or name) it fills."""

    trait: str
    field: Target


@dataclass(frozen=True, slots=True)
class FollowUp:
    """One follow-up write: what kind, what the config named, and the call."""

    kind: FollowUpKind
    target: str  # the label or custom field as the config named it; "" for the note
    call: Call
    value: str | None = None  # a custom field's value, remembered once written


@dataclass(frozen=True, slots=True)
class FollowUpFailure:
    """A follow-up that did not land after its retries (DeliveryResult.failed_followups)."""

    kind: str
    target: str
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class FieldValue:
    """A mapped trait the event carries, as the text Trengo is sent."""

    mapping: FieldMapping
    value: str


# --- names ----------------------------------------------------------------------

_NOT_FOUND = {
    "label": "LABEL_NOT_FOUND",
    "custom_field": "CUSTOM_FIELD_NOT_FOUND",
    "team": "TEAM_NOT_FOUND",
    "user": "USER_NOT_FOUND",
}


def names_in(targets: Iterable[Target]) -> list[str]:
    """The targets given by name (they need a look-up); ids are used as they are."""
    return [t for t in targets if isinstance(t, str)]


def label_index(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """GET /labels records -> name -> id (the first of a name wins, as Trengo lists oldest first).

    An archived label (``archived`` set: a captured label carries ``"archived": null`` when it is not)
    cannot be put on a ticket, so it is left out: naming one is LABEL_NOT_FOUND before any write.
    """
    index: dict[str, int] = {}
    for record in records:
        if record.get("archived"):
            continue
        name = record.get("name")
        if isinstance(name, str) and name.strip():
            index.setdefault(name.strip(), int(record["id"]))
    return index


def field_index(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """GET /custom_fields records -> title -> id, contact fields only.

    Trengo names a custom field ``title`` (its API reference's CustomField); ``name`` is read too,
    for answers that use it. A field typed TICKET or PROFILE belongs to other records.
    """
    index: dict[str, int] = {}
    for record in records:
        if str(record.get("type") or "").upper() in NOT_CONTACT_FIELD_TYPES:
            continue
        title = record.get("title") or record.get("name")
        if isinstance(title, str) and title.strip():
            index.setdefault(title.strip(), int(record["id"]))
    return index


def team_index(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """GET /teams records -> name -> id (trimmed; the first of a name wins)."""
    return label_index({"id": r.get("id"), "name": r.get("name")} for r in records)


def user_index(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """GET /users records -> e-mail (case-folded: addresses are matched case-insensitively) -> id."""
    index: dict[str, int] = {}
    for record in records:
        email = record.get("email")
        if isinstance(email, str) and email.strip():
            index.setdefault(email.strip().casefold(), int(record["id"]))
    return index


def lookup_name(target: str, what: str) -> str:
    """How a configured name is looked up in its index: an agent's e-mail case-folded."""
    return target.casefold() if what == "user" else target


def missing(names: Iterable[str], index: Mapping[str, int]) -> list[str]:
    return [n for n in names if n not in index]


def resolve(targets: Sequence[Target], index: Mapping[str, int], what: str) -> list[tuple[str, int]]:
    """(target as configured, id) for each target, in config order; ids are taken as they are.

    A name Trengo does not have is the config's mistake, found before anything is written:
    FAILED_PRECONDITION LABEL_NOT_FOUND, CUSTOM_FIELD_NOT_FOUND, TEAM_NOT_FOUND or USER_NOT_FOUND.
    """
    resolved: list[tuple[str, int]] = []
    for target in targets:
        target_id = target if isinstance(target, int) else index.get(lookup_name(target, what))
        if target_id is None:
            known = ", ".join(sorted(index)[:10]) or "none"
            named = "with the e-mail" if what == "user" else "named"
            raise FailedPrecondition(
                f"Trengo has no {what.replace('_', ' ')} {named} {str(target)[:80]!r} (known: {known}): "
                "fix the config, or create it in Trengo",
                reason=_NOT_FOUND[what],
            )
        resolved.append((str(target), target_id))
    return resolved


# --- a ticket's note and labels --------------------------------------------------


def note_text(event: Event, extras: TicketExtras) -> str | None:
    """The note: rendered as the subject is (over the properties plus ``event``), on every channel
    kind; None when there is no note or it renders empty."""
    if extras.note is None or not extras.note.source:
        return None
    return render_subject(extras.note, event.event_name, event.properties) or None


def ticket_followups(
    ticket_id: int,
    note: str | None,
    labels: Sequence[tuple[str, int]],
    assign: tuple[str, str, int] | None = None,
) -> list[FollowUp]:
    """The note first (what happened, for the agent who opens the ticket), then the labels in config
    order, then the assignment (kind, target, id): whoever it routes the ticket to finds it complete."""
    planned = [FollowUp("note", "", add_note(ticket_id, note))] if note else []
    seen: set[int] = set()
    for name, label_id in labels:
        if label_id not in seen:  # a label named twice (by name and by id) is added once
            seen.add(label_id)
            planned.append(FollowUp("label", name, add_label(ticket_id, label_id)))
    if assign is not None:
        kind, target, target_id = assign
        planned.append(FollowUp("assign", target, assign_ticket(ticket_id, kind, target_id)))
    return planned


# --- a contact's custom fields -----------------------------------------------------


def field_values(event: Event, mappings: Sequence[FieldMapping]) -> list[FieldValue]:
    """The mapped traits the event carries (traits, then context.traits), as text.

    Absent, null and empty traits are skipped: an identify that does not mention a trait leaves the
    field alone. Objects and lists cannot fill a field: INVALID_ARGUMENT naming the trait.
    """
    values: list[FieldValue] = []
    for mapping in mappings:
        raw, where = trait(event, mapping.trait)
        if raw is None:
            continue
        text = _field_text(raw, where, mapping)
        if text.strip():
            values.append(FieldValue(mapping, text))
    return values


def trait(event: Event, path: str) -> tuple[Any, str]:
    """A trait by path (``plan``, ``address.city``), and where it was found; (None, "") if nowhere.

    A key that contains the dots itself (``{"address.city": ...}``) is taken first.
    """
    for values, where in event.trait_sources:
        found = _lookup(values, path)
        if found is not None and found != "":
            return found, f"{where}.{path}"
    return None, ""


def _lookup(values: Mapping[str, Any], path: str) -> Any:
    if path in values:
        return values[path]
    node: Any = values
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _field_text(value: Any, where: str, mapping: FieldMapping) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and math.isfinite(value):
        return js_string(value)  # 2000, not 2000.0, as the subject renders it
    raise InvalidArgument(
        f"{where} must be a string, number or boolean to fill the Trengo custom field "
        f"{str(mapping.field)[:80]!r} (customFieldMap)",
        field=where,
    )


def field_followups(
    contact_id: int,
    values: Sequence[tuple[FieldValue, int]],
    written: Callable[[int, int], str | None],
) -> list[FollowUp]:
    """One write per custom field id, in config order, skipping values already written.

    ``written(contact_id, field_id)`` is the value the sidecar last wrote there (None: unknown).
    """
    planned: list[FollowUp] = []
    seen: set[int] = set()
    for value, field_id in values:
        if field_id in seen or written(contact_id, field_id) == value.value:
            continue
        seen.add(field_id)
        call = set_contact_field(contact_id, field_id, value.value)
        planned.append(FollowUp("custom_field", str(value.mapping.field), call, value.value))
    return planned


# --- the calls ---------------------------------------------------------------------


def add_note(ticket_id: int, text: str) -> Call:
    # Trengo's key is "message", with "internal_note": true (Pipedream's send-a-ticket-message,
    # PyTrengo's send_ticket_message). A note is a message added: never resent on a lost answer.
    return Call("POST", f"/tickets/{ticket_id}/messages", body={"message": text, "internal_note": True})


def add_label(ticket_id: int, label_id: int) -> Call:
    return Call("POST", f"/tickets/{ticket_id}/labels", body={"label_id": label_id}, resendable=True)


def set_contact_field(contact_id: int, field_id: int, value: str) -> Call:
    body = {"custom_field_id": field_id, "value": value}
    return Call("POST", f"/contacts/{contact_id}/custom_fields", body=body, resendable=True)


def assign_ticket(ticket_id: int, kind: str, target_id: int) -> Call:
    # Pipedream's assign-ticket and TrengoSDK's assignATicket: POST {type, user_id | team_id}. It sets
    # rather than adds: resent after a lost answer, it assigns to the same team or agent once more.
    body = {"type": kind, f"{kind}_id": target_id}
    return Call("POST", f"/tickets/{ticket_id}/assign", body=body, resendable=True)


def list_teams(page: int) -> Call:
    return Call("GET", "/teams", params=(("page", str(page)),))


def list_users(page: int) -> Call:
    return Call("GET", "/users", params=(("page", str(page)),))


def list_labels(page: int) -> Call:
    return Call("GET", "/labels", params=(("page", str(page)),))


def list_custom_fields(page: int) -> Call:
    return Call("GET", "/custom_fields", params=(("page", str(page)),))
