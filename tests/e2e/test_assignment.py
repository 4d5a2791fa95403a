"""End to end: a track's ticket routed to a team or an agent (eventTemplateMap assignTo, defaultAssignTo).

The real sidecar over gRPC against the simulator, which opens API tickets assigned to the token's
owner as Trengo does; every test asserts on what the simulator stored and recorded.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from trengo_sidecar_client import TicketAssignment, TrengoSidecarClient

from sidecar.simulator.people import OWNER_ID
from tests.support.grpc_helpers import failure
from tests.support.harness import TEMPLATES, struct
from trengo.sidecar.v1 import sidecar_pb2 as pb
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

FIRST_TICKET = 7000000001
ASSIGN = f"/api/v2/tickets/{FIRST_TICKET}/assign"
SUPPORT = {"from": "Refund Requested", "to": "Refund {{ order_id }}", "assignTo": {"team": "Support"}}


def refund(message_id: str = "", email: str = "ann@example.com") -> pb.TrackRequest:
    return pb.TrackRequest(
        event="Refund Requested",
        properties=struct({"order_id": "A-17"}),
        context=struct({"traits": {"email": email}}),
        message_id=message_id,
    )


def api_calls(control: Any, since: int = 0) -> list[tuple[str, str]]:
    return [(r["method"], r["path"].removeprefix("/api/v2")) for r in control.requests()[since:]]


@pytest.fixture
def teams(control):
    """Thirty teams, Support among those on the second page of GET /teams."""
    made = {f"Team {n}": control.add_team(f"Team {n}")["id"] for n in range(27)}
    made["Support"] = control.add_team("Support")["id"]
    made["Sales"] = control.add_team("Sales")["id"]
    return made


@pytest.fixture
def agent(control):
    return control.add_user("Agent.Smith@Example.com", "Agent Smith")


def start(make_sidecar, **config):
    sidecar = make_sidecar(**{"eventTemplateMap": [*TEMPLATES, SUPPORT], "maxAttempts": 3, **config})
    channel = grpc.insecure_channel(sidecar.address)
    return channel, pb_grpc.TrengoSidecarStub(channel)


def checked_out() -> pb.TrackRequest:
    return pb.TrackRequest(event="Checked Out", context=struct({"traits": {"email": "ann@example.com"}}))


def test_a_track_mapped_to_a_team_makes_one_ticket_and_one_assign_with_the_teams_id(
    make_sidecar, control, ann, teams
):
    channel, stub = start(make_sidecar)
    result = stub.Track(refund())
    channel.close()
    assert result.action == pb.ACTION_CREATE_TICKET and result.ticket_id == FIRST_TICKET
    assert (result.assignment.type, result.assignment.target) == ("team", "Support")
    assert result.assignment.id == teams["Support"] and result.assignment.assigned
    assert not result.failed_followups
    [ticket] = control.tickets()
    assert (ticket["team_id"], ticket["user_id"]) == (teams["Support"], None)  # no longer the owner's
    [assign] = control.requests(path_prefix=ASSIGN)
    assert assign["body"] == {"type": "team", "team_id": teams["Support"]}
    assert api_calls(control) == [
        ("GET", "/channels"),
        ("GET", "/teams"),
        ("GET", "/teams"),  # Support is on the second page
        ("GET", "/contacts"),
        ("POST", "/tickets"),
        ("POST", f"/tickets/{FIRST_TICKET}/assign"),
    ]


def test_a_warm_track_with_an_assignment_is_two_calls(make_sidecar, control, ann, teams):
    channel, stub = start(make_sidecar)
    stub.Track(refund())
    before = len(control.requests())
    second = stub.Track(refund())
    channel.close()
    assert second.contact_cache_hit and second.assignment.assigned
    second_assign = f"/tickets/{FIRST_TICKET + 1}/assign"
    assert api_calls(control, before) == [("POST", "/tickets"), ("POST", second_assign)]
    assert len(second.requests) == 2  # the calls-per-event the result reports, as make bench counts them


@pytest.mark.parametrize(
    ("assign_to", "reason", "named"),
    [
        ({"team": "Suport"}, "TEAM_NOT_FOUND", "Suport"),
        ({"user": "nobody@example.com"}, "USER_NOT_FOUND", "nobody"),
    ],
)
def test_an_unknown_team_or_agent_writes_nothing(make_sidecar, control, ann, teams, assign_to, reason, named):
    channel, stub = start(make_sidecar, eventTemplateMap=[{**SUPPORT, "assignTo": assign_to}])
    with pytest.raises(grpc.RpcError) as caught:
        stub.Track(refund())
    channel.close()
    refused = failure(caught.value)
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION and refused.reason == reason
    assert named in refused.message
    assert not control.requests(method="POST") and control.tickets() == []
    assert not control.requests(path_prefix="/api/v2/contacts")  # refused before the contact, even


def test_an_assign_failing_for_good_leaves_the_ticket_and_reports_it(make_sidecar, control, ann, teams):
    control.add_fault(method="POST", path=ASSIGN, status=503, count=-1)
    channel, stub = start(make_sidecar)
    result = stub.Track(refund())
    channel.close()
    assert result.action == pb.ACTION_CREATE_TICKET and result.ticket_id == FIRST_TICKET
    [failed] = result.failed_followups
    assert (failed.kind, failed.target, failed.reason) == ("assign", "Support", "TRENGO_UNAVAILABLE")
    assert not result.assignment.assigned and result.assignment.id == teams["Support"]
    assert [r["status"] for r in control.requests(path_prefix=ASSIGN)] == [503, 503, 503]  # retried
    [ticket] = control.tickets()
    assert (ticket["status"], ticket["user_id"], ticket["team_id"]) == ("ASSIGNED", OWNER_ID, None)


def test_an_assign_whose_answer_was_lost_is_sent_again(make_sidecar, control, ann, teams):
    control.add_fault(method="POST", path=ASSIGN, drop=True, after=True, count=1)
    channel, stub = start(make_sidecar)
    result = stub.Track(refund())
    channel.close()
    assert result.assignment.assigned and not result.failed_followups
    assert [r["status"] for r in control.requests(path_prefix=ASSIGN)] == [0, 200]
    [ticket] = control.tickets()
    assert ticket["team_id"] == teams["Support"]


def test_a_replay_redoes_nothing_and_shows_the_assignment(make_sidecar, control, ann, teams):
    channel, stub = start(make_sidecar)
    first = stub.Track(refund(message_id="m-refund-1"))
    before = len(control.requests())
    again = stub.Track(refund(message_id="m-refund-1"))
    channel.close()
    assert again.replayed and again.ticket_id == first.ticket_id and not again.requests
    assert again.assignment == first.assignment and again.assignment.assigned
    assert len(control.requests()) == before
    assert len(control.requests(path_prefix=ASSIGN)) == 1


def test_default_assign_to_applies_where_an_entry_has_none(make_sidecar, control, ann, teams, agent):
    channel, stub = start(
        make_sidecar, defaultAssignTo={"user": "agent.smith@example.com"}  # e-mails match case-insensitively
    )
    default = stub.Track(checked_out())
    own = stub.Track(refund())
    channel.close()
    assert (default.assignment.type, default.assignment.id) == ("user", agent["id"])
    assert (own.assignment.type, own.assignment.id) == ("team", teams["Support"])
    bodies = [r["body"] for r in control.requests(path_prefix="/api/v2/tickets/", method="POST")]
    assert bodies == [{"type": "user", "user_id": agent["id"]}, {"type": "team", "team_id": teams["Support"]}]
    first, second = control.tickets()
    assert (first["user_id"], first["status"]) == (agent["id"], "ASSIGNED")
    assert second["team_id"] == teams["Support"]
    assert len(control.requests(path_prefix="/api/v2/users")) == 1


def test_the_python_client_shows_the_assignment(make_sidecar, control, ann, teams):
    sidecar = make_sidecar(eventTemplateMap=[*TEMPLATES, SUPPORT])
    with TrengoSidecarClient(sidecar.address) as client:
        routed = client.track("Refund Requested", email="ann@example.com", properties={"order_id": "A-1"})
        plain = client.track("Checked Out", email="ann@example.com")
    assert routed.assignment == TicketAssignment("team", "Support", teams["Support"], True)
    assert plain.assignment is None


def test_no_assignment_configured_leaves_the_result_without_one(make_sidecar, control, ann):
    channel, stub = start(make_sidecar, eventTemplateMap=TEMPLATES)
    result = stub.Track(checked_out())
    channel.close()
    assert not result.HasField("assignment")
    assert not control.requests(path_prefix="/api/v2/teams")
    assert not control.requests(path_prefix="/api/v2/users")


def test_a_dry_run_lists_the_assign_it_would_send(make_sidecar, control, ann, teams):
    channel, stub = start(make_sidecar)
    request = refund()
    request.dry_run = True
    result = stub.Track(request)
    channel.close()
    assert result.dry_run and not result.assignment.assigned and result.assignment.id == teams["Support"]
    last = result.requests[-1]
    assert (last.method, last.attempts) == ("POST", 0) and last.url.endswith("/tickets/0/assign")
    assert json.loads(last.body_json) == {"type": "team", "team_id": teams["Support"]}
    assert not control.requests(method="POST")
