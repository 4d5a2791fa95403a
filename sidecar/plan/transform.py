"""Pure decisions: which Trengo calls an event needs, with which bodies. No I/O.

The delivery asks these functions what to do at each step (which identifier,
which search, what a search answer means, which write) and does the I/O
itself, so every rule of RudderStack's destination is testable without a
network.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import FailedPrecondition, InvalidArgument
from ..state.base import ContactRecord
from . import phones
from .events import Event
from .templates import Template, render_subject

Kind = Literal["email", "phone"]

# Trengo channel types whose contacts are identified by a phone number.
PHONE_CHANNEL_TYPES = frozenset(
    {"SMS", "WA_BUSINESS", "WHATSAPP", "VOIP", "VOICE", "WA", "WHATSAPP_BUSINESS"}
)
EMAIL_CHANNEL_TYPES = frozenset({"EMAIL"})


@dataclass(frozen=True, slots=True)
class Call:
    """One Trengo API call to make: a path below the base URL, query and JSON body."""

    method: str
    path: str
    params: tuple[tuple[str, str], ...] = ()
    body: Mapping[str, Any] | None = None
    # A POST that sets rather than adds (a ticket's label, a contact's custom field): sent twice, it
    # writes once, so it is retried like an update and any 2xx is success whatever its body.
    resendable: bool = False

    @property
    def is_write(self) -> bool:
        return self.method != "GET"

    @property
    def unsafe_to_resend(self) -> bool:
        """A create: sent twice, it may write twice (Trengo has no idempotency key). Updates may be resent."""
        return self.method == "POST" and not self.resendable


def channel_kind(channel_type: str) -> Kind | None:
    """What a channel identifies contacts by, from its Trengo type; None if neither."""
    upper = channel_type.upper()
    if upper in EMAIL_CHANNEL_TYPES:
        return "email"
    if upper in PHONE_CHANNEL_TYPES:
        return "phone"
    return None


def identifier_kind(configured: str, channel_id: int, channel_type: str | None) -> Kind:
    """The identifier kind for a channel: the configured one, checked against the channel's type."""
    learned = channel_kind(channel_type) if channel_type else None
    if configured in ("email", "phone"):
        if learned is not None and learned != configured:
            raise FailedPrecondition(
                f"channel {channel_id} is a {channel_type} channel, which identifies contacts by {learned}, "
                f"but channelIdentifier is {configured}",
                reason="CHANNEL_KIND_MISMATCH",
            )
        return configured  # type: ignore[return-value]
    if learned is None:
        raise FailedPrecondition(
            f"channel {channel_id} is a {channel_type or 'unknown'} channel: channelIdentifier auto cannot "
            "tell whether it identifies contacts by email or phone; set channelIdentifier",
            reason="CHANNEL_KIND_MISMATCH",
        )
    return learned


def identifier_or_none(event: Event, kind: Kind) -> str | None:
    """The event's email or phone, whichever the channel's kind needs, if it has one."""
    return event.email if kind == "email" else event.phone


def identifier(event: Event, kind: Kind, prefix: str = "") -> str:
    """The event's email or phone, whichever the channel's kind needs; INVALID_ARGUMENT without."""
    value = identifier_or_none(event, kind)
    if not value:
        raise InvalidArgument(
            f"the channel identifies contacts by {kind}: give {prefix}traits.{kind}, "
            f"{prefix}context.traits.{kind} or {prefix}properties.{kind}",
            reason="MISSING_IDENTIFIER",
            field=f"{prefix}traits.{kind}",
        )
    return value


def cache_key(value: str, kind: Kind) -> str:
    """How the contact cache names an identifier: case-folded e-mail, or the phone's digits."""
    if kind == "email":
        return "e:" + value.casefold()
    return "p:" + _digits(value)


def _digits(phone: str) -> str:
    return re.sub(r"\D", "", phone)


def template_for(event: Event, templates: Mapping[str, Template]) -> Template:
    """A track's template; the event must be a key of eventTemplateMap (exact, case-sensitive)."""
    template = templates.get(event.event_name)
    if template is None:
        near = _near_key(event.event_name, templates)
        hint = f"did you mean {near[:80]!r}? (keys are exact and case-sensitive)" if near else (
            "add it to deliver it to Trengo"
        )
        raise FailedPrecondition(
            f"event {event.event_name[:80]!r} is not in eventTemplateMap: {hint}",
            reason="EVENT_NOT_MAPPED",
        )
    return template


def _near_key(name: str, templates: Mapping[str, Template]) -> str | None:
    """A map key that differs from the event name only in case or surrounding blanks."""
    wanted = " ".join(name.split()).casefold()
    for key in templates:
        if " ".join(key.split()).casefold() == wanted:
            return key
    return None


def subject(event: Event, template: Template, kind: Kind) -> str | None:
    """The ticket subject: e-mail channels only, and only for a non-empty template."""
    if kind != "email" or not template.source:
        return None
    return render_subject(template, event.event_name, event.properties) or None


# --- identify decisions -------------------------------------------------------------


def creates_first(kind: Kind) -> bool:
    """Whether a new identifier is created without a search before it.

    On e-mail channels Trengo never duplicates a contact by address: a create with an address it
    knows gives back the existing contact, so a search first buys nothing the create does not
    answer. Phone channels duplicate numbers, so there the search comes first.
    """
    return kind == "email"


def writes_name(known: str | None, wanted: str | None, skip_unchanged: bool = True) -> bool:
    """Whether an identify must send its name: it has one, and (unless skipping is off) a new one."""
    return bool(wanted) and (not skip_unchanged or wanted != known)


def refused_as_existing(status: int, fields: frozenset[str]) -> bool:
    """A create refused over its identifier (some Trengo accounts answer 422 for a known address).

    Laravel names the field, not the reason, so an invalid address looks the same: the search that
    follows finds nobody then, and the refusal stands.
    """
    return status == 422 and "identifier" in fields


# --- the calls ------------------------------------------------------------------


def search_contacts(term: str) -> Call:
    return Call("GET", "/contacts", params=(("page", "1"), ("term", term)))


def list_channels(page: int) -> Call:
    return Call("GET", "/channels", params=(("page", str(page)),))


def create_contact(channel_id: int, ident: str, name: str | None) -> Call:
    body: dict[str, Any] = {"identifier": ident, "channel_id": channel_id}
    if name:
        body = {"name": name, **body}
    return Call("POST", f"/channels/{channel_id}/contacts", body=body)


def update_contact(contact_id: int, name: str) -> Call:
    return Call("PUT", f"/contacts/{contact_id}", body={"name": name})


def create_ticket(contact_id: int, channel_id: int, subject_line: str | None) -> Call:
    body: dict[str, Any] = {"contact_id": contact_id, "channel_id": channel_id}
    if subject_line:
        body["subject"] = subject_line
    return Call("POST", "/tickets", body=body)


# --- reading answers ---------------------------------------------------------------


def matching_contact(
    found: Sequence[Mapping[str, Any]], ident: str, kind: Kind, region: str = ""
) -> int | None:
    """The one contact a search found for the identifier, None if none; several is an error.

    Trengo's term search is fuzzy (a substring of name, e-mail or phone), so
    unlike the reference we keep only exact matches of the identifier: a
    search for ann@x.io must not call joann@x.io a duplicate. With a phone region
    (``ident`` then E.164), a contact matches when its phone or identifier parses to it.
    """
    if kind == "phone" and region:
        ids = sorted({c["id"] for c in found if phones.is_person(c, ident, region)})
    else:
        want = cache_key(ident, kind)
        ids = sorted({c["id"] for c in found if _contact_matches(c, want, kind)})
    if len(ids) > 1:
        raise FailedPrecondition(
            f"{len(ids)} Trengo contacts match this {kind} ({', '.join(map(str, ids[:5]))}): "
            "merge them in Trengo, or pass a trengoContactId",
            reason="DUPLICATE_CONTACTS",
        )
    return ids[0] if ids else None


def matching_record(
    found: Sequence[Mapping[str, Any]], ident: str, kind: Kind, region: str = ""
) -> ContactRecord | None:
    """Like matching_contact, with the name the search answered for that contact."""
    contact_id = matching_contact(found, ident, kind, region)
    if contact_id is None:
        return None
    name = next(c.get("name") for c in found if c["id"] == contact_id)
    return ContactRecord(contact_id, name if isinstance(name, str) else None)


def _contact_matches(contact: Mapping[str, Any], want: str, kind: Kind) -> bool:
    for key in ("identifier", kind):
        value = contact.get(key)
        if isinstance(value, str) and value and cache_key(value, kind) == want:
            return True
    return False
