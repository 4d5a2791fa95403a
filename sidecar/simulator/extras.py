"""Labels, custom fields and ticket messages in the simulator: the calls of the sidecar's follow-ups.

Shapes and checks follow Trengo's REST API v2 as its public clients use it (see
/work/shared/reference/trengo-api.md): ``GET /labels`` and ``GET /custom_fields`` are paginated
lists; ``POST /tickets/{id}/labels`` takes ``{label_id}``; ``POST /tickets/{id}/messages`` takes
``{message, internal_note}``; ``POST /contacts/{id}/custom_fields`` takes ``{custom_field_id, value}``.
Unknown ids are Laravel's 422 (``The selected label id is invalid.``), unknown tickets and contacts
a 404. Tests seed labels and custom fields through the control API (``/_sim/labels``,
``/_sim/custom_fields``) and read what was written from ``/_sim/tickets`` and ``/_sim/contacts``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from sidecar.simulator.helpers import bad_request as _bad_request
from sidecar.simulator.helpers import error, int_or_none, invalid, page_number, paginate

FIRST_LABEL_ID = 1001
FIRST_FIELD_ID = 2001
FIRST_MESSAGE_ID = 5000000001
FIELD_TYPES = ("CONTACT", "TICKET", "PROFILE")


@dataclass
class Label:
    id: int
    name: str
    color: str = "#4d7cfe"
    archived: str | None = None  # when it was archived; a captured label carries "archived": null

    def to_dict(self) -> dict[str, Any]:
        slug = "-".join(self.name.lower().split())
        return {
            "id": self.id, "name": self.name, "slug": slug, "color": self.color, "sort_order": self.id,
            "archived": self.archived,
        }


@dataclass
class CustomField:
    id: int
    title: str
    type: str = "CONTACT"  # which records it belongs to
    field_type: str = "TEXT"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "type": self.type, "field_type": self.field_type}


@dataclass
class Message:
    id: int
    ticket_id: int
    message: str
    internal_note: bool
    created_at: str

    def to_dict(self) -> dict[str, Any]:
        kind = "NOTE" if self.internal_note else "OUTBOUND"
        return {
            "id": self.id,
            "ticket_id": self.ticket_id,
            "message": self.message,
            "type": kind,
            "created_at": self.created_at,
        }


@dataclass
class ExtrasStore:
    """The simulator's labels and custom fields, and what was attached to tickets and contacts."""

    labels: dict[int, Label] = field(default_factory=dict)
    fields: dict[int, CustomField] = field(default_factory=dict)
    ticket_labels: dict[int, list[int]] = field(default_factory=dict)
    messages: dict[int, list[Message]] = field(default_factory=dict)
    values: dict[int, dict[int, str]] = field(default_factory=dict)  # contact -> field -> value
    _next_message_id: int = FIRST_MESSAGE_ID

    def add_label(self, name: str, id: int | None = None, archived: bool = False) -> Label:
        label = Label(id if id is not None else max(self.labels, default=FIRST_LABEL_ID - 1) + 1, name)
        if archived:
            label.archived = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        self.labels[label.id] = label
        return label

    def add_field(self, title: str, type: str = "CONTACT", id: int | None = None) -> CustomField:
        field_id = id if id is not None else max(self.fields, default=FIRST_FIELD_ID - 1) + 1
        custom = CustomField(field_id, title, type.upper())
        self.fields[custom.id] = custom
        return custom

    def add_message(self, ticket_id: int, text: str, internal_note: bool) -> Message:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        message = Message(self._next_message_id, ticket_id, text, internal_note, created)
        self._next_message_id += 1
        self.messages.setdefault(ticket_id, []).append(message)
        return message

    def ticket_view(self, ticket_id: int) -> dict[str, Any]:
        """What a ticket carries besides its own fields: its labels and its messages."""
        labels = [self.labels[i].to_dict() for i in self.ticket_labels.get(ticket_id, []) if i in self.labels]
        return {"labels": labels, "messages": [m.to_dict() for m in self.messages.get(ticket_id, [])]}

    def contact_view(self, contact_id: int) -> dict[str, Any]:
        values = self.values.get(contact_id, {})
        return {"custom_field_data": {str(k): v for k, v in values.items()}}


class ExtrasApi:
    """Trengo's label, custom field and message routes, over the main store's tickets and contacts."""

    def __init__(self, state: Any) -> None:
        self.state = state

    @property
    def store(self) -> ExtrasStore:
        extras: ExtrasStore = self.state.extras
        return extras

    def routes(self, api: str) -> list[web.RouteDef]:
        return [
            web.get(f"{api}/labels", self.list_labels),
            web.get(f"{api}/custom_fields", self.list_fields),
            web.post(f"{api}/tickets/{{ticket_id}}/labels", self.attach_label),
            web.post(f"{api}/tickets/{{ticket_id}}/messages", self.add_message),
            web.post(f"{api}/contacts/{{contact_id}}/custom_fields", self.set_field),
        ]

    async def list_labels(self, request: web.Request) -> web.Response:
        return self._page(request, list(self.store.labels.values()), Label.to_dict)

    async def list_fields(self, request: web.Request) -> web.Response:
        return self._page(request, list(self.store.fields.values()), CustomField.to_dict)

    def _page(self, request: web.Request, items: list[Any], render: Callable[[Any], Any]) -> web.Response:
        return page_answer(request, items, render)

    async def attach_label(self, request: web.Request) -> web.Response:
        ticket = self._ticket(request)
        if ticket is None:
            return error(404, "No query results for model [App\\Models\\Ticket].")
        body = await _body(request)
        label_id = int_or_none(body.get("label_id"))
        if body.get("label_id") in (None, ""):
            return invalid({"label_id": "The label id field is required."})
        if label_id is None or label_id not in self.store.labels or self.store.labels[label_id].archived:
            # An archived label cannot be put on a ticket (assumed Laravel's exists rule on live labels).
            return invalid({"label_id": "The selected label id is invalid."})
        attached = self.store.ticket_labels.setdefault(ticket.id, [])
        if label_id not in attached:  # attaching twice changes nothing
            attached.append(label_id)
        return web.json_response(self.store.labels[label_id].to_dict())

    async def add_message(self, request: web.Request) -> web.Response:
        ticket = self._ticket(request)
        if ticket is None:
            return error(404, "No query results for model [App\\Models\\Ticket].")
        body = await _body(request)
        text, internal = body.get("message"), body.get("internal_note", False)
        if text is None or (isinstance(text, str) and not text.strip()):
            return invalid({"message": "The message field is required."})
        if not isinstance(text, str):
            return invalid({"message": "The message must be a string."})
        if not isinstance(internal, bool):
            return invalid({"internal_note": "The internal note field must be true or false."})
        message = self.store.add_message(ticket.id, text.strip(), internal)
        # Trengo wraps the new message (a captured answer: {"message": {"id", "type": "NOTE", ...}}).
        return web.json_response({"message": message.to_dict()}, status=201)

    async def set_field(self, request: web.Request) -> web.Response:
        contact = self.state.contacts.get(int_or_none(request.match_info["contact_id"]) or -1)
        if contact is None:
            return error(404, "No query results for model [App\\Models\\Contact].")
        body = await _body(request)
        field_id, value = int_or_none(body.get("custom_field_id")), body.get("value")
        known = self.store.fields.get(field_id or -1)
        if body.get("custom_field_id") in (None, ""):
            return invalid({"custom_field_id": "The custom field id field is required."})
        if known is None or known.type != "CONTACT":
            return invalid({"custom_field_id": "The selected custom field id is invalid."})
        if value is not None and not isinstance(value, str):
            return invalid({"value": "The value must be a string."})
        self.store.values.setdefault(contact.id, {})[known.id] = value or ""
        return web.json_response({**contact.to_dict(), **self.store.contact_view(contact.id)})

    def _ticket(self, request: web.Request) -> Any:
        return self.state.tickets.get(int_or_none(request.match_info["ticket_id"]) or -1)


class ExtrasControl:
    """The control routes that seed labels and custom fields and list them."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def routes(self, control: str) -> list[web.RouteDef]:
        return [
            web.get(f"{control}/labels", self.labels),
            web.post(f"{control}/labels", self.add_label),
            web.get(f"{control}/custom_fields", self.fields),
            web.post(f"{control}/custom_fields", self.add_field),
        ]

    async def labels(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [x.to_dict() for x in self.state.extras.labels.values()]})

    async def fields(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [x.to_dict() for x in self.state.extras.fields.values()]})

    async def add_label(self, request: web.Request) -> web.Response:
        try:
            data = await _body(request)
            name, label_id = str(data["name"]), _optional_id(data.get("id"), self.state.extras.labels)
            archived = data.get("archived", False)
            if not isinstance(archived, bool):
                raise ValueError("archived must be true or false")
        except (ValueError, KeyError, TypeError) as exc:
            return _bad_request(f"need name (a new id, archived): {exc}")
        label = self.state.extras.add_label(name, label_id, archived)
        return web.json_response(label.to_dict(), status=201)

    async def add_field(self, request: web.Request) -> web.Response:
        try:
            data = await _body(request)
            title, kind = str(data["title"]), str(data.get("type") or "CONTACT").upper()
            field_id = _optional_id(data.get("id"), self.state.extras.fields)
            if kind not in FIELD_TYPES:
                raise ValueError(f"type must be one of {', '.join(FIELD_TYPES)}")
        except (ValueError, KeyError, TypeError) as exc:
            return _bad_request(f"need title (type, a new id): {exc}")
        return web.json_response(self.state.extras.add_field(title, kind, field_id).to_dict(), status=201)


def page_answer(request: web.Request, items: list[Any], render: Callable[[Any], Any]) -> web.Response:
    """A Laravel paginated list of ``items`` for the request's page (users and teams use it too)."""
    url = str(request.url.with_query(None))
    return web.json_response(paginate(items, page_number(request), url, render))


def _optional_id(value: Any, taken: Iterable[int]) -> int | None:
    if value is None:
        return None
    if int_or_none(value) is None or int(value) in taken:
        raise ValueError(f"id {value!r} is not a new positive integer")
    return int(value)


async def _body(request: web.Request) -> dict[str, Any]:
    """The JSON body as an object; malformed JSON validates as an empty body, as in app.py."""
    try:
        data = json.loads(await request.text() or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
