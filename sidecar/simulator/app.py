"""The simulator's aiohttp application: Trengo API v2 routes plus the `/_sim` control routes.

Every `/api/v2` request goes through `Gate`: it is recorded, may be hit by a scripted fault, is
authenticated and rate limited, and only then reaches a handler. Answers copy Trengo's (Laravel's)
shapes and messages, because the sidecar's error handling is tested against them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web

from sidecar.simulator.control import CONTROL, ControlApi
from sidecar.simulator.extras import ExtrasApi, ExtrasControl
from sidecar.simulator.helpers import error, invalid
from sidecar.simulator.helpers import int_or_none as _int_or_none
from sidecar.simulator.helpers import page_number as _page
from sidecar.simulator.people import PeopleApi, PeopleControl
from sidecar.simulator.state import PHONE_TYPES, Channel, Fault, SimState, is_email, is_phone, paginate

API = "/api/v2"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _trimmed(value: Any) -> Any:
    # Laravel's TrimStrings + ConvertEmptyStringsToNull middlewares run before validation.
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return value


def _identifier_problem(identifier: Any, kind: str) -> str | None:
    if identifier is None:
        return "The identifier field is required."
    if not isinstance(identifier, str):
        return "The identifier must be a string."
    if kind == "EMAIL" and not is_email(identifier):
        return "The identifier must be a valid email address."
    if kind in PHONE_TYPES and not is_phone(identifier):
        return "The identifier format is invalid."
    return None


class TrengoApi:
    """Handlers of the Trengo API v2 calls the sidecar makes."""

    def __init__(self, state: SimState) -> None:
        self.state = state

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(f"{API}/contacts", self.search_contacts),
            web.get(f"{API}/contacts/{{contact_id}}", self.get_contact),
            web.put(f"{API}/contacts/{{contact_id}}", self.update_contact),
            web.post(f"{API}/channels/{{channel_id}}/contacts", self.create_contact),
            web.get(f"{API}/channels", self.list_channels),
            web.post(f"{API}/tickets", self.create_ticket),
        ]

    async def search_contacts(self, request: web.Request) -> web.Response:
        matches = self.state.search_contacts(request.query.get("term", ""))
        url = str(request.url.with_query(None))
        return web.json_response(paginate(matches, _page(request), url, lambda c: c.to_dict()))

    async def list_channels(self, request: web.Request) -> web.Response:
        channels = list(self.state.channels.values())
        url = str(request.url.with_query(None))
        return web.json_response(paginate(channels, _page(request), url, Channel.to_dict))

    async def get_contact(self, request: web.Request) -> web.Response:
        contact = self.state.contacts.get(_int_or_none(request.match_info["contact_id"]) or -1)
        if contact is None:
            return error(404, "No query results for model [App\\Models\\Contact].")
        return web.json_response(contact.to_dict())

    async def update_contact(self, request: web.Request) -> web.Response:
        contact = self.state.contacts.get(_int_or_none(request.match_info["contact_id"]) or -1)
        if contact is None:
            return error(404, "No query results for model [App\\Models\\Contact].")
        name = _trimmed((await _body(request)).get("name"))
        if name is None:
            return invalid({"name": "The name field is required."})
        if not isinstance(name, str):
            return invalid({"name": "The name must be a string."})
        self.state.rename_contact(contact, name)
        return web.json_response(contact.to_dict())

    async def create_contact(self, request: web.Request) -> web.Response:
        channel = self.state.channels.get(_int_or_none(request.match_info["channel_id"]) or -1)
        if channel is None:
            return error(404, "Not found.")
        body = await _body(request)
        identifier = _trimmed(body.get("identifier"))
        name = _trimmed(body.get("name"))
        problem = _identifier_problem(identifier, channel.type)
        if problem:
            return invalid({"identifier": problem})
        if name is not None and not isinstance(name, str):
            return invalid({"name": "The name must be a string."})
        if channel.type == "EMAIL":
            # Trengo keys email contacts by address: a second create hands back the first contact.
            existing = self.state.find_by_identifier(identifier)
            if existing is not None and self.state.existing_email_answer == "422":
                return invalid({"identifier": "A contact with this identifier already exists."})
            if existing is not None:
                if channel not in existing.channels:
                    existing.channels.append(channel)
                return web.json_response(existing.to_dict(), status=201)
        contact = self.state.add_contact(name or identifier, identifier, channel)
        return web.json_response(contact.to_dict(), status=201)

    async def create_ticket(self, request: web.Request) -> web.Response:
        body = await _body(request)
        errors: dict[str, str] = {}
        contact = self._existing(body, "contact_id", self.state.contacts, errors)
        channel = self._existing(body, "channel_id", self.state.channels, errors)
        subject = _trimmed(body.get("subject"))
        if subject is not None and not isinstance(subject, str):
            errors["subject"] = "The subject must be a string."
        if errors or contact is None or channel is None:
            return invalid(errors)
        ticket = self.state.add_ticket(contact, channel, subject)
        return web.json_response(ticket.to_dict(), status=201)

    @staticmethod
    def _existing(body: dict[str, Any], field: str, table: dict[int, Any], errors: dict[str, str]) -> Any:
        """Laravel's `required|exists:...` rule: the row, or None with the message recorded."""
        label = field.replace("_", " ")
        value = _trimmed(body.get(field))
        if value is None:
            errors[field] = f"The {label} field is required."
            return None
        row = table.get(_int_or_none(value) or -1)
        if row is None:
            errors[field] = f"The selected {label} is invalid."
        return row


def _parse_body(raw: str) -> tuple[Any, dict[str, Any]]:
    """(what gets recorded, what handlers validate): malformed JSON validates as an empty body."""
    if not raw.strip():
        return None, {}
    try:
        parsed = json.loads(raw)
    except ValueError:
        return None, {}
    return parsed, parsed if isinstance(parsed, dict) else {}


async def _body(request: web.Request) -> dict[str, Any]:
    # aiohttp caches the body read by the middleware, so this re-parse costs no I/O.
    return _parse_body(await request.text())[1]


def _fault_response(fault: Fault) -> web.Response | None:
    """The scripted answer; None means: close the connection without answering."""
    if fault.drop:
        return None
    status = fault.status if fault.status is not None else 503
    if isinstance(fault.body, str):
        text = fault.body  # sent as-is, so tests can script malformed JSON
    elif fault.body is None:
        text = json.dumps({"message": _reason(status)})
    else:
        text = json.dumps(fault.body)
    response = web.Response(status=status, text=text, content_type="application/json")
    response.headers.update(fault.headers)
    return response


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


async def _call(handler: Handler, request: web.Request) -> web.StreamResponse:
    """Run a handler, turning aiohttp's routing errors into Trengo-style JSON."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        message = "Not found." if exc.status == 404 else exc.reason
        return error(exc.status, message)


class Gate:
    """Middleware for /api/v2: record, faults, auth, rate limit, in that order."""

    def __init__(self, state: SimState) -> None:
        self.state = state

    async def handle(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path != API and not request.path.startswith(API + "/"):
            return await _call(handler, request)  # the control API: neither recorded nor faulted
        raw = await request.text()
        parsed, _ = _parse_body(raw)
        entry = self._record(request, raw, parsed)
        fault = self.state.take_fault(request.method, request.path)
        response = await self._answer(request, handler, fault)
        if response is None:
            entry["status"] = 0
            if request.transport is not None:
                request.transport.close()
            return web.Response()  # goes nowhere: the transport is already closed
        entry["status"] = response.status
        return response

    async def _answer(self, request: web.Request, handler: Handler, fault: Fault | None) -> Any:
        if fault is not None and not fault.after:
            await asyncio.sleep(fault.delay)
            if fault.answers:
                return _fault_response(fault)
        response = await self._serve(request, handler)
        if fault is None:
            return response
        if fault.after:
            # The write has happened; now lose or spoil the answer, as a flaky network would.
            await asyncio.sleep(fault.delay)
            if fault.answers:
                return _fault_response(fault)
        response.headers.update(fault.headers)
        return response

    async def _serve(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or token.strip() not in self.state.tokens:
            return error(401, "Unauthenticated.", [])
        decision = self.state.check_rate(token.strip(), time.time())
        if decision is not None and not decision.allowed:
            response: web.StreamResponse = error(429, "Too Many Attempts.")
            response.headers["Retry-After"] = str(decision.retry_after)
            response.headers["X-RateLimit-Reset"] = str(math.ceil(decision.reset_at))
        else:
            response = await _call(handler, request)
        if decision is not None:
            response.headers["X-RateLimit-Limit"] = str(decision.limit)
            response.headers["X-RateLimit-Remaining"] = str(decision.remaining)
        return response

    def _record(self, request: web.Request, raw: str, parsed: Any) -> dict[str, Any]:
        entry = {
            "method": request.method,
            "path": request.path,
            "query": request.rel_url.raw_query_string,  # still URL-encoded: tests check the encoding
            "params": dict(request.query),
            "body": parsed,
            "raw_body": raw,
            "status": None,  # filled in once answered; 0 when the connection is dropped
            "headers": _masked(request.headers),
            "token": token_fingerprint(request.headers.get("Authorization", "")),
            "at": time.time(),
        }
        self.state.requests.append(entry)
        return entry


def _masked(headers: Any) -> dict[str, str]:
    """The headers as /_sim/requests serves them: the credential masked, its scheme kept.

    Like the control API's token count, /_sim/requests may be reachable by more than tests.
    """
    recorded = dict(headers)
    for name in recorded:
        if name.lower() in ("authorization", "proxy-authorization"):
            scheme, _, credential = recorded[name].partition(" ")
            recorded[name] = f"{scheme} ****" if credential else "****"
    return recorded


def token_fingerprint(authorization: str) -> str | None:
    """Which token a request carried, without carrying it: a short SHA-256 of the bearer token.

    Tests compare it with ``token_fingerprint("Bearer " + expected)``.
    """
    _, _, token = authorization.partition(" ")
    if not token.strip():
        return None
    return "sha256:" + hashlib.sha256(token.strip().encode()).hexdigest()[:16]


def create_app(state: SimState) -> web.Application:
    gate = Gate(state)

    @web.middleware  # a bound method lacks the new-style marker, so aiohttp needs this wrapper
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await gate.handle(request, handler)

    app = web.Application(middlewares=[middleware])
    app.add_routes(TrengoApi(state).routes())
    app.add_routes(ExtrasApi(state).routes(API))
    app.add_routes(PeopleApi(state).routes(API))
    app.add_routes(ControlApi(state).routes())
    app.add_routes(ExtrasControl(state).routes(CONTROL))
    app.add_routes(PeopleControl(state).routes(CONTROL))
    return app
