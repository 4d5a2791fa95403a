"""The Trengo simulator's in-memory store: channels, contacts, tickets, recorded requests, faults.

Kept free of aiohttp so it can be unit-tested and reasoned about on its own. Every mutation runs on
the simulator's event loop; readers in other threads should go through the HTTP control API.
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import phonenumbers

from sidecar.simulator.extras import ExtrasStore
from sidecar.simulator.helpers import PER_PAGE as PER_PAGE  # re-exported: app.py and the tests
from sidecar.simulator.helpers import paginate as paginate
from sidecar.simulator.people import PeopleStore

T = TypeVar("T")
FIRST_CONTACT_ID = 90002431001  # above 2**31 on purpose: clients must not squeeze ids into int32
FIRST_TICKET_ID = 7000000001
RATE_WINDOW_SECONDS = 60.0
SEED_CHANNELS: tuple[tuple[int, str, str], ...] = (
    (405980, "Support email", "EMAIL"),
    (405981, "SMS", "SMS"),
    (405982, "WhatsApp", "WA_BUSINESS"),
    (405983, "Phone", "VOIP"),
    (405984, "Website chat", "CHAT"),
    (405985, "Custom", "CUSTOM"),
)
PHONE_TYPES = frozenset({"SMS", "WA_BUSINESS", "VOIP"})
# How a create on an e-mail channel answers for an address Trengo knows: with that contact (what
# Trengo does), or with a 422 (what some accounts are said to do).
EXISTING_EMAIL_ANSWERS = ("contact", "422")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
PHONE_RE = re.compile(r"^\+?[0-9][0-9 \-]*$")
PHONE_TERM_RE = re.compile(r"^[+(]?[0-9][0-9 ().\-]*$")


def is_email(value: str) -> bool:
    return bool(EMAIL_RE.match(value))


def is_phone(value: str) -> bool:
    return bool(PHONE_RE.match(value)) and sum(ch.isdigit() for ch in value) >= 6


@dataclass
class Channel:
    id: int
    title: str
    type: str
    status: str = "ACTIVE"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "type": self.type, "status": self.status}

    def brief(self) -> dict[str, Any]:
        """The short form Trengo nests inside a contact."""
        return {"id": self.id, "type": self.type, "title": self.title}


@dataclass
class Contact:
    id: int
    name: str
    identifier: str
    channels: list[Channel]
    email: str | None = None
    phone: str | None = None
    formatted_phone: str | None = None
    region: str | None = None  # the account's country: how a number written nationally is read
    # Lower-cased name/email/identifier, and the digits of phone/identifier, joined once, so a search is
    # one `in` per contact.
    haystack: str = ""
    digits: str = ""

    def refresh(self) -> None:
        kind = self.channels[0].type if self.channels else ""
        self.email, self.phone = _email_and_phone(self.identifier, kind)
        self.formatted_phone = None
        if self.phone is not None:
            self._format_phone()
        fields = (self.name, self.email or "", self.identifier)
        self.haystack = "\x00".join(f.lower() for f in fields)
        numbers = (self.phone, self.identifier) if self.phone is not None else ()
        self.digits = "\x00".join(_digits(f) for f in numbers)

    def _format_phone(self) -> None:
        """Trengo keeps ``phone`` in E.164 and shows ``identifier``/``formatted_phone`` internationally
        (a captured answer: "phone": "+972545614020", "identifier": "+972 54-561-4020"); a number it
        cannot read is kept as given."""
        number = parse_phone(self.identifier, self.region)
        if number is None:
            self.formatted_phone = self.identifier
            return
        self.phone = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        self.identifier = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
        self.formatted_phone = self.identifier

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "full_name": self.name,
            "identifier": self.identifier,
            "email": self.email,
            "phone": self.phone,
            "formatted_phone": self.formatted_phone,
            "is_phone": self.phone is not None,
            "channels": [c.brief() for c in self.channels],
        }


def parse_phone(value: str, region: str | None) -> Any:
    """The number, or None: ``+`` and ``00`` numbers are international, others need ``region``."""
    text = value.strip()
    if text.startswith("00"):
        text = "+" + text[2:]
    if not text.startswith("+") and region is None:
        return None
    try:
        number = phonenumbers.parse(text, None if text.startswith("+") else region)
    except phonenumbers.NumberParseException:
        return None
    return number if phonenumbers.is_possible_number(number) else None


def _digits(value: str) -> str:
    return "".join(ch for ch in value if ch.isdigit())


def _email_and_phone(identifier: str, kind: str) -> tuple[str | None, str | None]:
    """Trengo fills email or phone from the identifier depending on the channel kind."""
    if kind == "EMAIL":
        return identifier, None
    if kind in PHONE_TYPES:
        return None, identifier
    # Chat/custom channels (or a seeded contact on an unknown channel): guess from the value.
    if is_email(identifier):
        return identifier, None
    return (None, identifier) if is_phone(identifier) else (None, None)


@dataclass
class Ticket:
    id: int
    subject: str | None
    contact: Contact
    channel: Channel
    created_at: str
    # A ticket made through the API is assigned to the token's owner (a captured answer:
    # "status": "ASSIGNED", "user_id" and "assigned_by" the token's user, "team": null).
    status: str = "ASSIGNED"
    user_id: int | None = None
    team_id: int | None = None
    assigned_by: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "subject": self.subject,
            "contact_id": self.contact.id,
            "channel_id": self.channel.id,
            "user_id": self.user_id,
            "team_id": self.team_id,
            "assigned_by": self.assigned_by,
            "contact": self.contact.to_dict(),
            "channel": self.channel.to_dict(),
            "created_at": self.created_at,
        }


@dataclass
class Fault:
    """A scripted misbehaviour, consumed by matching /api/v2 requests (see the control API)."""

    method: str | None = None
    path: str | None = None
    count: int = 1
    status: int | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False
    after: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fault:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        fault = cls(**data)
        if fault.method is not None:
            fault.method = str(fault.method).upper()
        if not isinstance(fault.headers, dict):
            raise ValueError("headers must be an object")
        fault.headers = {str(k): str(v) for k, v in fault.headers.items()}
        fault.count, fault.delay = int(fault.count), float(fault.delay or 0)
        fault.status = None if fault.status is None else int(fault.status)
        return fault

    @property
    def answers(self) -> bool:
        """False for a delay-only (or headers-only) fault: the real answer still goes out."""
        return self.drop or self.status is not None or self.body is not None

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method.upper()) and (
            self.path is None or path.startswith(self.path)
        )

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_at: float  # unix time when the next call is allowed again
    retry_after: int


class SimState:
    """Everything the simulator knows; `reset()` returns it to the seeded start."""

    def __init__(
        self, tokens: Iterable[str] = ("test-token",), rate_limit_per_minute: int = 0, extra_channels: int = 0
    ) -> None:
        self.tokens: set[str] = set(tokens)
        self.rate_limit_per_minute = rate_limit_per_minute
        self.rate_window_seconds = RATE_WINDOW_SECONDS  # Trengo's minute; tests shrink it
        self.extra_channels = extra_channels
        self.existing_email_answer = "contact"  # one of EXISTING_EMAIL_ANSWERS
        self.phone_region: str | None = None  # the account's country, for numbers written nationally
        self.reset()

    def reset(self) -> None:
        self.channels: dict[int, Channel] = {}
        self.contacts: dict[int, Contact] = {}
        self.tickets: dict[int, Ticket] = {}
        self.requests: list[dict[str, Any]] = []
        self.faults: list[Fault] = []
        self.extras = ExtrasStore()  # labels, custom fields, notes: sidecar/simulator/extras.py
        self.people = PeopleStore()  # users, teams, the token's owner: sidecar/simulator/people.py
        self._by_identifier: dict[str, list[int]] = {}
        self._rate: dict[str, deque[float]] = {}
        self._next_contact_id = FIRST_CONTACT_ID
        self._next_ticket_id = FIRST_TICKET_ID
        for channel_id, title, kind in SEED_CHANNELS:
            self.add_channel(title, kind, channel_id)
        for n in range(self.extra_channels):
            self.add_channel(f"Extra email {n + 1}", "EMAIL")

    def add_channel(self, title: str, type: str, id: int | None = None) -> Channel:
        channel_id = id if id is not None else max(self.channels, default=405979) + 1
        channel = Channel(id=channel_id, title=title, type=type.upper())
        self.channels[channel_id] = channel
        return channel

    def add_contact(self, name: str, identifier: str, channel: Channel | None) -> Contact:
        contact = Contact(self._next_contact_id, name, identifier, [channel] if channel else [])
        contact.region = self.phone_region
        contact.refresh()
        self._next_contact_id += 1
        self.contacts[contact.id] = contact
        self._by_identifier.setdefault(contact.identifier.lower(), []).append(contact.id)
        return contact

    def find_by_identifier(self, identifier: str) -> Contact | None:
        """First stored contact with this identifier, case-insensitively (email de-duplication)."""
        ids = self._by_identifier.get(identifier.lower(), [])
        return self.contacts[ids[0]] if ids else None

    def rename_contact(self, contact: Contact, name: str) -> None:
        contact.name = name
        contact.refresh()

    def delete_contact(self, contact_id: int) -> bool:
        contact = self.contacts.pop(contact_id, None)
        if contact is None:
            return False
        self._by_identifier[contact.identifier.lower()].remove(contact_id)
        return True

    def add_ticket(self, contact: Contact, channel: Channel, subject: str | None) -> Ticket:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        owner = self.people.owner.id
        ticket = Ticket(
            self._next_ticket_id, subject, contact, channel, created, user_id=owner, assigned_by=owner
        )
        self._next_ticket_id += 1
        self.tickets[ticket.id] = ticket
        return ticket

    def search_contacts(self, term: str) -> list[Contact]:
        """Oldest first, like Trengo: the term as a case-insensitive substring of name, e-mail and
        identifier, and a term that looks like a number as digits within the phone or identifier
        (RudderStack's mocks: the term 9830311521 finds the identifier "+98 30311521")."""
        needle = term.strip().lower()
        if not needle:
            return list(self.contacts.values())
        digits = _digits(needle) if PHONE_TERM_RE.match(needle) else ""
        return [c for c in self.contacts.values() if needle in c.haystack or (digits and digits in c.digits)]

    def take_fault(self, method: str, path: str) -> Fault | None:
        """The first matching fault, with one use consumed (removed once used up; -1 never is)."""
        for index, fault in enumerate(self.faults):
            if fault.matches(method, path):
                if fault.count > 0:
                    fault.count -= 1
                    if fault.count == 0:
                        del self.faults[index]
                return fault
        return None

    def check_rate(self, token: str, now: float) -> RateDecision | None:
        """Sliding window (60 s, as Trengo's) per token; None when rate limiting is off."""
        limit = self.rate_limit_per_minute
        span = self.rate_window_seconds
        if limit <= 0:
            return None
        window = self._rate.setdefault(token, deque())
        while window and window[0] <= now - span:
            window.popleft()
        if len(window) >= limit:
            reset_at = window[0] + span
            return RateDecision(False, limit, 0, reset_at, max(1, math.ceil(reset_at - now)))
        window.append(now)
        return RateDecision(True, limit, limit - len(window), window[0] + span, 0)
