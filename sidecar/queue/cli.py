"""``trengo-sidecar deliveries ...``: the operator's view of the queue, over the sidecar's own RPCs.

    trengo-sidecar deliveries list [--state failed] [--limit N] [--json]
    trengo-sidecar deliveries get MESSAGE_ID
    trengo-sidecar deliveries retry MESSAGE_ID... | --all

It talks to a running sidecar (``--address``, else SIDECAR_LISTEN, else 127.0.0.1:50051), sending
``authorization: Bearer`` from SIDECAR_AUTH_TOKEN when that is set, so it needs nothing but the
sidecar's address: not the store's URL, not its password.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import json_format

from trengo.sidecar.v1 import sidecar_pb2 as pb
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

STATES = {name: getattr(pb, f"DELIVERY_STATE_{name.upper()}") for name in
          ("queued", "delivering", "retrying", "delivered", "failed")}  # fmt: skip
TIMEOUT_SECONDS = 10.0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="trengo-sidecar deliveries", description="See and retry queued events."
    )
    top.add_argument(
        "--address",
        default=os.environ.get("SIDECAR_LISTEN", "127.0.0.1:50051"),
        help="the sidecar's gRPC address (default: SIDECAR_LISTEN or 127.0.0.1:50051)",
    )
    commands = top.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="events in one state, oldest first")
    listing.add_argument("--state", choices=sorted(STATES), default="failed")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    get = commands.add_parser("get", help="one event's delivery status")
    get.add_argument("message_id")
    retry = commands.add_parser("retry", help="queue failed events again")
    retry.add_argument("message_ids", nargs="*", metavar="MESSAGE_ID")
    retry.add_argument("--all", action="store_true", help="every failed event")
    return top


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    if args.command == "retry" and args.all == bool(args.message_ids):
        print("trengo-sidecar deliveries retry: give MESSAGE_IDs or --all", file=sys.stderr)
        return 2
    token = os.environ.get("SIDECAR_AUTH_TOKEN", "")
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    try:
        with grpc.insecure_channel(args.address) as channel:
            stub = pb_grpc.TrengoSidecarStub(channel)
            return _run(stub, args, metadata)
    except grpc.RpcError as exc:
        call: Any = exc
        print(f"trengo-sidecar deliveries: {call.code().name}: {call.details()}", file=sys.stderr)
        return 1


def _run(stub: pb_grpc.TrengoSidecarStub, args: argparse.Namespace, metadata: Any) -> int:
    if args.command == "list":
        answer = stub.ListDeliveries(
            pb.ListDeliveriesRequest(state=STATES[args.state], limit=args.limit),
            timeout=TIMEOUT_SECONDS, metadata=metadata,
        )  # fmt: skip
        for status in answer.deliveries:
            print(_as_json(status) if args.json else _line(status))
        if not args.json:
            more = " (more: raise --limit)" if answer.next_page_token else ""
            print(f"{len(answer.deliveries)} {args.state}{more}")
        return 0
    if args.command == "get":
        status = stub.GetDelivery(
            pb.GetDeliveryRequest(message_id=args.message_id), timeout=TIMEOUT_SECONDS, metadata=metadata
        )
        print(_as_json(status))
        return 0
    request = pb.RetryDeliveriesRequest(message_ids=args.message_ids, all_failed=args.all)
    answer = stub.RetryDeliveries(request, timeout=TIMEOUT_SECONDS, metadata=metadata)
    print(f"queued again: {answer.retried}")
    return 0


def _line(status: pb.DeliveryStatus) -> str:
    state = pb.DeliveryState.Name(status.state).removeprefix("DELIVERY_STATE_").lower()
    accepted = status.accepted_at.ToDatetime().strftime("%Y-%m-%dT%H:%M:%SZ")
    why = f"  {status.error.reason}: {status.error.message}" if status.HasField("error") else ""
    return f"{status.message_id}  {state}  attempts={status.attempts}  accepted={accepted}{why}"


def _as_json(status: pb.DeliveryStatus) -> str:
    return json.dumps(json_format.MessageToDict(status, preserving_proto_field_name=True), sort_keys=True)
