"""Both ends of the simulator's `/_sim` control API.

`ControlApi` serves it (no auth, never recorded); `SimulatorControl` is the small synchronous client
tests use. The client speaks HTTP only, so it works from another thread or another process.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from aiohttp import web

from sidecar.simulator.helpers import bad_request as _bad_request
from sidecar.simulator.state import EXISTING_EMAIL_ANSWERS, Fault, SimState

CONTROL = "/_sim"


async def _json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object; raises ValueError otherwise."""
    raw = await request.text()
    data = json.loads(raw) if raw.strip() else {}
    if not isinstance(data, dict):
        raise ValueError("body must be a JSON object")
    return data


class ControlApi:
    """Handlers of the `/_sim` routes, which set the stage for a test and read what happened."""

    def __init__(self, state: SimState) -> None:
        self.state = state

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(f"{CONTROL}/reset", self.reset),
            web.get(f"{CONTROL}/requests", self.requests),
            web.get(f"{CONTROL}/contacts", self.contacts),
            web.post(f"{CONTROL}/contacts", self.add_contact),
            web.delete(f"{CONTROL}/contacts/{{contact_id}}", self.delete_contact),
            web.get(f"{CONTROL}/tickets", self.tickets),
            web.get(f"{CONTROL}/channels", self.channels),
            web.post(f"{CONTROL}/channels", self.add_channel),
            web.get(f"{CONTROL}/faults", self.faults),
            web.post(f"{CONTROL}/faults", self.add_fault),
            web.delete(f"{CONTROL}/faults", self.clear_faults),
            web.put(f"{CONTROL}/config", self.configure),
        ]

    async def reset(self, request: web.Request) -> web.Response:
        self.state.reset()
        return web.json_response({"ok": True})

    async def requests(self, request: web.Request) -> web.Response:
        return web.json_response({"requests": self.state.requests})

    async def contacts(self, request: web.Request) -> web.Response:
        extras = self.state.extras
        return web.json_response(
            {"data": [{**c.to_dict(), **extras.contact_view(c.id)} for c in self.state.contacts.values()]}
        )

    async def tickets(self, request: web.Request) -> web.Response:
        extras = self.state.extras
        return web.json_response(
            {"data": [{**t.to_dict(), **extras.ticket_view(t.id)} for t in self.state.tickets.values()]}
        )

    async def channels(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [c.to_dict() for c in self.state.channels.values()]})

    async def faults(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [f.to_dict() for f in self.state.faults]})

    async def add_contact(self, request: web.Request) -> web.Response:
        """Seed a contact with no validation at all: tests use it to stage duplicates."""
        try:
            data = await _json_object(request)
            identifier = str(data["identifier"])
            channel_id = int(data.get("channel_id") or 0)
        except (ValueError, KeyError, TypeError) as exc:
            return _bad_request(f"need identifier (and channel_id): {exc}")
        channel = self.state.channels.get(channel_id)
        contact = self.state.add_contact(str(data.get("name") or identifier), identifier, channel)
        return web.json_response(contact.to_dict(), status=201)

    async def delete_contact(self, request: web.Request) -> web.Response:
        try:
            contact_id = int(request.match_info["contact_id"])
        except ValueError:
            return _bad_request("contact id must be an integer")
        if not self.state.delete_contact(contact_id):
            return web.json_response({"message": "no such contact"}, status=404)
        return web.json_response({"deleted": contact_id})

    async def add_channel(self, request: web.Request) -> web.Response:
        try:
            data = await _json_object(request)
            channel_id = None if data.get("id") is None else int(data["id"])
            title, kind = str(data["title"]), str(data["type"])
        except (ValueError, KeyError, TypeError) as exc:
            return _bad_request(f"need title and type: {exc}")
        if channel_id is not None and channel_id in self.state.channels:
            return web.json_response({"message": "channel id already used"}, status=409)
        return web.json_response(self.state.add_channel(title, kind, channel_id).to_dict(), status=201)

    async def add_fault(self, request: web.Request) -> web.Response:
        try:
            fault = Fault.from_dict(await _json_object(request))
        except (ValueError, TypeError) as exc:
            return _bad_request(f"bad fault: {exc}")
        self.state.faults.append(fault)
        return web.json_response(fault.to_dict(), status=201)

    async def clear_faults(self, request: web.Request) -> web.Response:
        self.state.faults.clear()
        return web.json_response({"ok": True})

    async def configure(self, request: web.Request) -> web.Response:
        try:
            data = await _json_object(request)
            limit = int(data.get("rate_limit_per_minute", self.state.rate_limit_per_minute))
            window = float(data.get("rate_window_seconds", self.state.rate_window_seconds))
            if not window > 0:
                raise ValueError("rate_window_seconds must be greater than 0")
            tokens = data.get("tokens")
            if tokens is not None and not (
                isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)
            ):
                raise ValueError("tokens must be a list of strings")
            region = data.get("phone_region", self.state.phone_region)
            if region is not None and (not isinstance(region, str) or not region.strip()):
                raise ValueError("phone_region must be a region code such as NL, or null")
            existing = data.get("existing_email_answer", self.state.existing_email_answer)
            if existing not in EXISTING_EMAIL_ANSWERS:
                raise ValueError(f"existing_email_answer must be one of {', '.join(EXISTING_EMAIL_ANSWERS)}")
        except (ValueError, TypeError) as exc:
            return _bad_request(f"bad config: {exc}")
        self.state.rate_limit_per_minute = limit
        self.state.existing_email_answer = existing
        self.state.phone_region = region.strip().upper() if region else None
        self.state.rate_window_seconds = window
        if tokens is not None:
            self.state.tokens = set(tokens)
        # Token values are never echoed back: the control API may be reachable by more than tests.
        return web.json_response(
            {
                "rate_limit_per_minute": limit,
                "rate_window_seconds": window,
                "tokens": len(self.state.tokens),
                "existing_email_answer": existing,
                "phone_region": self.state.phone_region,
            }
        )


class HeaderDict(dict[str, str]):
    """Recorded headers, keyed as received, looked up case-insensitively (HTTP names are)."""

    def _find(self, key: object) -> str | None:
        if isinstance(key, str):
            for existing in self:
                if existing.lower() == key.lower():
                    return existing
        return None

    def __missing__(self, key: str) -> str:
        found = self._find(key)
        if found is None:
            raise KeyError(key)
        return dict.__getitem__(self, found)

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key) or self._find(key) is not None

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default


class SimulatorControl:
    """Synchronous client of the control API; accepts the `/api/v2` base url or the server root."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        root = base_url.rstrip("/")
        if root.endswith("/api/v2"):
            root = root[: -len("/api/v2")]
        self.root = root
        # trust_env=False: a proxy from the environment must never sit between tests and localhost.
        self._client = httpx.Client(base_url=root, timeout=timeout, trust_env=False)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> SimulatorControl:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        response = self._client.request(method, f"{CONTROL}{path}", json=body)
        response.raise_for_status()
        return response.json() if response.content else None

    def reset(self) -> None:
        self._call("POST", "/reset")

    def requests(self, path_prefix: str | None = None, method: str | None = None) -> list[dict[str, Any]]:
        """Recorded /api/v2 requests in arrival order, optionally filtered by path prefix and method."""
        found = []
        for entry in self._call("GET", "/requests")["requests"]:
            if path_prefix is not None and not entry["path"].startswith(path_prefix):
                continue
            if method is not None and entry["method"] != method.upper():
                continue
            entry["headers"] = HeaderDict(entry["headers"])
            found.append(entry)
        return found

    def contacts(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/contacts")["data"])

    def tickets(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/tickets")["data"])

    def channels(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/channels")["data"])

    def add_contact(self, name: str, identifier: str, channel_id: int) -> dict[str, Any]:
        body = {"name": name, "identifier": identifier, "channel_id": channel_id}
        return dict(self._call("POST", "/contacts", body))

    def delete_contact(self, id: int) -> None:
        self._call("DELETE", f"/contacts/{id}")

    def add_channel(self, title: str, type: str, id: int | None = None) -> dict[str, Any]:
        return dict(self._call("POST", "/channels", {"id": id, "title": title, "type": type}))

    def add_fault(self, **fields: Any) -> None:
        self._call("POST", "/faults", fields)

    def add_label(self, name: str, id: int | None = None, archived: bool = False) -> dict[str, Any]:
        return dict(self._call("POST", "/labels", {"name": name, "id": id, "archived": archived}))

    def add_user(self, email: str, name: str | None = None, id: int | None = None) -> dict[str, Any]:
        return dict(self._call("POST", "/users", {"email": email, "name": name, "id": id}))

    def add_team(self, name: str, id: int | None = None) -> dict[str, Any]:
        return dict(self._call("POST", "/teams", {"name": name, "id": id}))

    def users(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/users")["data"])

    def teams(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/teams")["data"])

    def add_custom_field(self, title: str, type: str = "CONTACT", id: int | None = None) -> dict[str, Any]:
        return dict(self._call("POST", "/custom_fields", {"title": title, "type": type, "id": id}))

    def labels(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/labels")["data"])

    def custom_fields(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/custom_fields")["data"])

    def clear_faults(self) -> None:
        self._call("DELETE", "/faults")

    def configure(self, **fields: Any) -> None:
        self._call("PUT", "/config", fields)
