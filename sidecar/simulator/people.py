"""Users, teams and ticket assignment in the simulator: the calls behind ``assignTo``.

Shapes follow docs/trengo-api.md: ``GET /users`` and ``GET /teams`` are Laravel paginated lists
(PyTrengo ``get_users``/``get_teams``, WouterVeen/TrengoSDK ``listAllUsers``/``getAllTeams``); a user
has ``id``, ``email``, ``name``/``full_name``, a team ``id`` and ``name``. ``POST /tickets/{id}/assign``
takes ``{"type": "user", "user_id"}`` or ``{"type": "team", "team_id"}`` (Pipedream's assign-ticket
action, TrengoSDK ``assignATicket``) and answers with the ticket. Every token belongs to one user, the
owner, to whom API-created tickets are assigned (the captured ticket answer). Tests seed users and teams
through ``/_sim/users`` and ``/_sim/teams``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from sidecar.simulator.extras import _body, _optional_id, page_answer
from sidecar.simulator.helpers import bad_request as _bad_request
from sidecar.simulator.helpers import error, int_or_none, invalid

OWNER_ID = 709618  # the captured answer's user id: any id works, this one reads as Trengo's
FIRST_USER_ID = OWNER_ID + 1
FIRST_TEAM_ID = 301


@dataclass
class User:
    id: int
    email: str
    name: str

    def to_dict(self) -> dict[str, Any]:
        first, _, last = self.name.partition(" ")
        return {
            "id": self.id,
            "first_name": first,
            "last_name": last,
            "name": self.name,
            "full_name": self.name,
            "email": self.email,
            "status": "ACTIVE",
            "authorization": "OWNER" if self.id == OWNER_ID else "AGENT",
        }


@dataclass
class Team:
    id: int
    name: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name}


@dataclass
class PeopleStore:
    users: dict[int, User] = field(default_factory=dict)
    teams: dict[int, Team] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.users[OWNER_ID] = User(OWNER_ID, "api-owner@example.com", "API Owner")

    @property
    def owner(self) -> User:
        return self.users[OWNER_ID]

    def add_user(self, email: str, name: str, id: int | None = None) -> User:
        user = User(id if id is not None else max(self.users) + 1, email, name)
        self.users[user.id] = user
        return user

    def add_team(self, name: str, id: int | None = None) -> Team:
        team = Team(id if id is not None else max(self.teams, default=FIRST_TEAM_ID - 1) + 1, name)
        self.teams[team.id] = team
        return team


class PeopleApi:
    """Trengo's user, team and assign routes."""

    def __init__(self, state: Any) -> None:
        self.state = state

    @property
    def store(self) -> PeopleStore:
        people: PeopleStore = self.state.people
        return people

    def routes(self, api: str) -> list[web.RouteDef]:
        return [
            web.get(f"{api}/users", self.list_users),
            web.get(f"{api}/teams", self.list_teams),
            web.post(f"{api}/tickets/{{ticket_id}}/assign", self.assign),
        ]

    async def list_users(self, request: web.Request) -> web.Response:
        return page_answer(request, list(self.store.users.values()), User.to_dict)

    async def list_teams(self, request: web.Request) -> web.Response:
        return page_answer(request, list(self.store.teams.values()), Team.to_dict)

    async def assign(self, request: web.Request) -> web.Response:
        ticket = self.state.tickets.get(int_or_none(request.match_info["ticket_id"]) or -1)
        if ticket is None:
            return error(404, "No query results for model [App\\Models\\Ticket].")
        body = await _body(request)
        kind = body.get("type")
        if kind not in ("user", "team"):
            return invalid({"type": "The selected type is invalid."})
        key = f"{kind}_id"
        table = self.store.users if kind == "user" else self.store.teams
        target = int_or_none(body.get(key))
        if body.get(key) in (None, ""):
            return invalid({key: f"The {kind} id field is required."})
        if target is None or target not in table:
            return invalid({key: f"The selected {kind} id is invalid."})
        if kind == "user":
            ticket.user_id, ticket.status = target, "ASSIGNED"
        else:  # to a team's inbox: nobody in it has the ticket yet
            ticket.team_id, ticket.user_id, ticket.status = target, None, "OPEN"
        ticket.assigned_by = self.store.owner.id
        return web.json_response(ticket.to_dict())


class PeopleControl:
    """``/_sim/users`` and ``/_sim/teams``: seed and list."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def routes(self, control: str) -> list[web.RouteDef]:
        return [
            web.get(f"{control}/users", self.users),
            web.post(f"{control}/users", self.add_user),
            web.get(f"{control}/teams", self.teams),
            web.post(f"{control}/teams", self.add_team),
        ]

    async def users(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [u.to_dict() for u in self.state.people.users.values()]})

    async def teams(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [t.to_dict() for t in self.state.people.teams.values()]})

    async def add_user(self, request: web.Request) -> web.Response:
        try:
            data = await _body(request)
            email, name = str(data["email"]), str(data.get("name") or data["email"])
            user_id = _optional_id(data.get("id"), self.state.people.users)
        except (ValueError, KeyError, TypeError) as exc:
            return _bad_request(f"need email (name, a new id): {exc}")
        return web.json_response(self.state.people.add_user(email, name, user_id).to_dict(), status=201)

    async def add_team(self, request: web.Request) -> web.Response:
        try:
            data = await _body(request)
            name, team_id = str(data["name"]), _optional_id(data.get("id"), self.state.people.teams)
        except (ValueError, KeyError, TypeError) as exc:
            return _bad_request(f"need name (and a new id): {exc}")
        return web.json_response(self.state.people.add_team(name, team_id).to_dict(), status=201)
