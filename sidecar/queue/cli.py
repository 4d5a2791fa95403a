"""``trengo-sidecar deliveries ...``: the operator's view of the queue, over the sidecar's own RPCs.

    trengo-sidecar deliveries [--config FILE] list [--state failed] [--limit N] [--output json|text]
    trengo-sidecar deliveries get MESSAGE_ID
    trengo-sidecar deliveries retry MESSAGE_ID... | --all
    trengo-sidecar deliveries watch [--cursor N] [--count N]

It talks to a running sidecar, and needs nothing but what a caller needs: not the Trengo token, not
the store's URL or password. Where the sidecar listens, its caller token and its TLS come from the
sidecar's own config file (``--config``, read by sidecar/config/endpoint.py) and the same SIDECAR_*
variables the sidecar reads (SIDECAR_LISTEN, SIDECAR_AUTH_TOKEN, SIDECAR_AUTH_TOKEN_FILE,
SIDECAR_TLS_*); ``--address`` and the ``--tls-*`` flags go on top.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from trengo.sidecar.v1 import sidecar_pb2 as pb
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

from ..config.endpoint import Endpoint, load_endpoint
from ..errors import ConfigError

STATES = {name: getattr(pb, f"DELIVERY_STATE_{name.upper()}") for name in
          ("queued", "delivering", "retrying", "delivered", "failed")}  # fmt: skip
TIMEOUT_SECONDS = 10.0
PROG = "trengo-sidecar deliveries"


class Refused(Exception):
    """A setting the CLI cannot dial with: said on stderr, exit 2."""


def parser() -> argparse.ArgumentParser:
    common = _common_options()
    top = argparse.ArgumentParser(
        prog=PROG, description="See, follow and retry queued events.", parents=[common]
    )
    commands = top.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="events in one state, oldest first", parents=[common])
    listing.add_argument("--state", choices=sorted(STATES), default="failed")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    listing.add_argument("--json", action="store_true", help="the same as --output json")
    get = commands.add_parser("get", help="one event's delivery status", parents=[common])
    get.add_argument("message_id")
    retry = commands.add_parser("retry", help="queue failed events again", parents=[common])
    retry.add_argument("message_ids", nargs="*", metavar="MESSAGE_ID")
    retry.add_argument("--all", action="store_true", help="every failed event")
    watch = commands.add_parser("watch", help="follow state changes as they happen", parents=[common])
    watch.add_argument(
        "--cursor", type=int, default=0, help="start after this cursor (default 0: the oldest kept)"
    )
    watch.add_argument("--count", type=int, default=0, help="stop after this many changes (default: never)")
    return top


def _common_options() -> argparse.ArgumentParser:
    """Options taken before or after the subcommand (SUPPRESS: a subcommand's default must not undo
    a value given before it)."""
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument(
        "--config", metavar="FILE",
        help="the sidecar's config file: its listen address, authToken/authTokenFile and TLS are used",
    )  # fmt: skip
    common.add_argument(
        "--address", metavar="ADDR",
        help="the sidecar's gRPC address (default: the config's listen, SIDECAR_LISTEN or 127.0.0.1:50051)",
    )  # fmt: skip
    common.add_argument(
        "--tls-ca-file", metavar="FILE",
        help="speak TLS, trusting the sidecar's certificate if this CA signed it "
        "(default with tlsCertFile in the config: trust exactly the sidecar's own certificate)",
    )  # fmt: skip
    common.add_argument(
        "--tls-cert-file",
        metavar="FILE",
        help="this caller's certificate, for a sidecar with tlsClientCaFile (mTLS)",
    )
    common.add_argument("--tls-key-file", metavar="FILE", help="the private key of --tls-cert-file")
    common.add_argument(
        "--tls-server-name",
        metavar="NAME",
        help="the name the sidecar's certificate must carry (default: the host dialled)",
    )
    common.add_argument(
        "--output", choices=("text", "json"), help="text (default) or json: one JSON object a line"
    )
    return common


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    if args.command == "retry" and args.all == bool(args.message_ids):
        print(f"{PROG} retry: give MESSAGE_IDs or --all", file=sys.stderr)
        return 2
    try:
        endpoint = load_endpoint(getattr(args, "config", None))
        target, credentials = _dial(endpoint, args)
    except ConfigError as exc:
        print(f"{PROG}: bad config: " + "; ".join(p.line() for p in exc.problems), file=sys.stderr)
        return 2
    except Refused as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    token = endpoint.auth_token.reveal()
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    json_output = getattr(args, "output", None) == "json" or getattr(args, "json", False)
    options = [("grpc.ssl_target_name_override", args.tls_server_name)] if "tls_server_name" in args else []
    try:
        channel = (
            grpc.secure_channel(target, credentials, options)
            if credentials
            else grpc.insecure_channel(target)
        )
        with channel:
            _run(pb_grpc.TrengoSidecarStub(channel), args, metadata, json_output)
    except grpc.RpcError as exc:
        call: Any = exc
        print(f"{PROG}: {call.code().name}: {call.details()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # watch until Ctrl-C
        return 130
    return 0


def _dial(endpoint: Endpoint, args: argparse.Namespace) -> tuple[str, grpc.ChannelCredentials | None]:
    """The address to dial and the TLS credentials (None: plaintext), flags over the config."""
    target = getattr(args, "address", None) or endpoint.target
    ca_file = getattr(args, "tls_ca_file", None) or endpoint.tls_cert_file
    cert_file, key_file = getattr(args, "tls_cert_file", None), getattr(args, "tls_key_file", None)
    if bool(cert_file) != bool(key_file):
        raise Refused("--tls-cert-file and --tls-key-file go together")
    if endpoint.tls_client_ca_file and not cert_file:
        raise Refused(
            "the sidecar asks callers for a certificate (tlsClientCaFile): "
            "give --tls-cert-file and --tls-key-file"
        )
    if not (ca_file or cert_file):
        return target, None
    return target, grpc.ssl_channel_credentials(
        root_certificates=_read(ca_file, "--tls-ca-file") if ca_file else None,
        private_key=_read(key_file, "--tls-key-file") if key_file else None,
        certificate_chain=_read(cert_file, "--tls-cert-file") if cert_file else None,
    )


def _read(path: str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise Refused(f"{flag}: cannot read {path}: {exc.strerror}") from None


def _run(stub: pb_grpc.TrengoSidecarStub, args: argparse.Namespace, metadata: Any, as_json: bool) -> None:
    call = {"timeout": TIMEOUT_SECONDS, "metadata": metadata}
    if args.command == "list":
        answer = stub.ListDeliveries(
            pb.ListDeliveriesRequest(state=STATES[args.state], limit=args.limit), **call
        )
        for status in answer.deliveries:
            print(_as_json(status) if as_json else _line(status))
        if not as_json:
            more = " (more: raise --limit)" if answer.next_page_token else ""
            print(f"{len(answer.deliveries)} {args.state}{more}")
    elif args.command == "get":
        status = stub.GetDelivery(pb.GetDeliveryRequest(message_id=args.message_id), **call)
        print(_as_json(status) if as_json else _line(status))
    elif args.command == "retry":
        request = pb.RetryDeliveriesRequest(message_ids=args.message_ids, all_failed=args.all)
        retried = stub.RetryDeliveries(request, **call).retried
        print(json.dumps({"retried": retried}) if as_json else f"queued again: {retried}")
    else:
        for update in _watch(stub, args, metadata):
            print(_as_json(update) if as_json else f"{update.cursor}  {_line(update.status)}", flush=True)


def _watch(
    stub: pb_grpc.TrengoSidecarStub, args: argparse.Namespace, metadata: Any
) -> Iterator[pb.DeliveryUpdate]:
    """The changes after ``--cursor``, as they come (no deadline: a watch waits for them)."""
    stream = stub.WatchDeliveries(pb.WatchDeliveriesRequest(cursor=args.cursor), metadata=metadata)
    try:
        for seen, update in enumerate(stream, start=1):
            yield update
            if seen == args.count:
                return
    finally:
        stream.cancel()


def _line(status: pb.DeliveryStatus) -> str:
    state = pb.DeliveryState.Name(status.state).removeprefix("DELIVERY_STATE_").lower()
    accepted = status.accepted_at.ToDatetime().strftime("%Y-%m-%dT%H:%M:%SZ")
    line = f"{status.message_id}  {state}  attempts={status.attempts}  accepted={accepted}"
    if status.HasField("next_attempt_at"):  # queued or retrying: when it goes next
        line += "  next=" + status.next_attempt_at.ToDatetime().strftime("%Y-%m-%dT%H:%M:%SZ")
    if status.HasField("result"):
        result = status.result
        line += f"  contact={result.contact_id}" + (
            f"  ticket={result.ticket_id}" if result.ticket_id else ""
        )
    if status.HasField("error"):
        line += f"  {status.error.reason}: {status.error.message}"
    return line


def _as_json(message: Message) -> str:
    return json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True), sort_keys=True)
