"""``make run`` without a Trengo token: the real sidecar with demo defaults, against the simulator.

The demo's config (below) is the base; a ``--config`` file, then ``SIDECAR_*``/``TRENGO_*`` environment
variables, then the sidecar's own flags apply on top of it, as they do for ``trengo-sidecar``, which
serves it the same way (logs, metrics, tracing, the start-up line). The simulator runs in this process
on its own thread; Ctrl-C (or SIGTERM) stops both. The queue's SQLite lives in a temporary folder that
is removed at stop, unless ``--keep-state`` (``make run KEEP_STATE=1``).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any

from ..api.serving import build_parser, load_config, run_serving
from ..config.load import Config
from . import SimulatorThread

DEMO_TOKEN = "demo-token"
DEMO_WRITE_KEY = "demo-write-key"  # the HTTP ingest's key for this demo only: printed at start
DEMO_CONFIG = {
    "apiToken": DEMO_TOKEN,
    "channelId": 405980,  # the simulator's e-mail channel
    "channelIdentifier": "auto",
    "eventTemplateMap": [
        {"from": "Product Purchased", "to": "{{ event }} from our store"},
        {"from": "Added to cart", "to": "Product was of value:{{ revenue }}"},
        {"from": "Checked Out", "to": "Cart was checked out"},
        {
            "from": "Order Placed",
            "to": "Order {{ order_id }}",
            "note": "Order {{ order_id }} of EUR {{ total }}: {{ url }}",
            "labels": ["VIP"],
        },
    ],
    "customFieldMap": [{"from": "plan", "to": "Plan"}],
}
DEMO_LABELS = ("VIP", "Orders")
DEMO_FIELDS = ("Plan",)

EXAMPLE = """
trengo-sidecar (demo) serves gRPC on {listen}, against the Trengo simulator at {sim}
  metrics: {metrics}
  tracing: {tracing}
  state:   {state}

Try it (grpcurl, or `buf curl --protocol grpc --http2-prior-knowledge http://{listen}/...`):

  grpcurl -plaintext {listen} list
  grpcurl -plaintext -d '{{"traits": {{"email": "ann@example.com", "name": "Ann Lee"}}}}' \\
    {listen} trengo.sidecar.v1.TrengoSidecar/Identify
  grpcurl -plaintext -d '{{"event": "Added to cart", "properties": {{"revenue": 2000}},
    "context": {{"traits": {{"email": "ann@example.com"}}}}}}' {listen} trengo.sidecar.v1.TrengoSidecar/Track
  grpcurl -plaintext -d '{{"event": "Order Placed", "properties": {{"order_id": "A-17", "total": 49.5,
    "url": "https://shop.example/o/A-17"}}, "context": {{"traits": {{"email": "ann@example.com"}}}}}}' \\
    {listen} trengo.sidecar.v1.TrengoSidecar/Track      # a ticket with an internal note and a label
  curl -s {sim_root}/_sim/tickets     # what the simulator stored

Enqueue accepts for later delivery (the queue is in the store above); GetDelivery follows it:

  grpcurl -plaintext -d '{{"track": {{"event": "Checked Out", "messageId": "order-1",
    "context": {{"traits": {{"email": "ann@example.com"}}}}}}}}' \\
    {listen} trengo.sidecar.v1.TrengoSidecar/Enqueue
  grpcurl -plaintext -d '{{"messageId": "order-1"}}' {listen} trengo.sidecar.v1.TrengoSidecar/GetDelivery
  trengo-sidecar deliveries --address {listen} list --state failed

A RudderStack or Segment SDK posts to http://{http} (its dataPlaneUrl or host), write key {write_key}:

  echo '{{"batch": [{{"type": "identify", "userId": "bo", "traits": {{"email": "bo@example.com"}}}},
    {{"type": "track", "userId": "bo", "event": "Checked Out",
      "context": {{"traits": {{"email": "bo@example.com"}}}}}}]}}' | gzip \\
    | curl -s -u {write_key}: -H 'Content-Encoding: gzip' --data-binary @- http://{http}/v1/batch

Ctrl-C to stop.
"""


METRICS_OFF = "off (SIDECAR_METRICS_LISTEN=127.0.0.1:9464 make run serves them)"
TRACING_OFF = "off (OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 make run exports spans)"


def parse_args(argv: list[str] | None) -> Any:
    parser = build_parser("make run", "The sidecar with demo defaults, against the Trengo simulator.")
    parser.add_argument(
        "--sim-port", type=int, default=int(os.environ.get("TRENGO_SIM_PORT", "8090")),
        help="the simulator's port (TRENGO_SIM_PORT; default 8090)",
    )  # fmt: skip
    parser.add_argument(
        "--keep-state", action="store_true",
        help="keep the demo's temporary SQLite folder at stop (make run KEEP_STATE=1)",
    )  # fmt: skip
    return parser.parse_args(argv)


def demo_config(base_url: str, state: str) -> dict[str, Any]:
    """The demo's defaults, as a config file would hold them."""
    return {
        **DEMO_CONFIG, "baseUrl": base_url, "store": f"sqlite:///{state}/state.db",
        "httpListen": "127.0.0.1:8088", "writeKeys": [DEMO_WRITE_KEY],
    }  # fmt: skip


def banner(config: Config, base_url: str, state: str, keep: bool) -> str:
    from ..observe.tracing import export_endpoint

    if not str(config.store.masked()).startswith(f"sqlite:///{state}/"):
        where = f"{config.store.masked()} (store, as configured)"
    elif keep:
        where = f"{state} (SQLite, kept at stop: --keep-state)"
    else:
        where = f"{state} (SQLite, removed at stop; make run KEEP_STATE=1 keeps it)"
    return EXAMPLE.format(
        listen=config.listen,
        sim=base_url,
        sim_root=base_url.removesuffix("/api/v2"),
        metrics=f"http://{config.metrics_listen}/metrics" if config.metrics_listen else METRICS_OFF,
        tracing=export_endpoint() or TRACING_OFF,
        state=where,
        http=config.http_listen,
        write_key=DEMO_WRITE_KEY,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    state = tempfile.mkdtemp(prefix="trengo-sidecar-demo-")
    try:
        with SimulatorThread(tokens=[DEMO_TOKEN], port=args.sim_port) as simulator:
            for label in DEMO_LABELS:  # what the demo config names, as a Trengo account would have them
                simulator.simulator.state.extras.add_label(label)
            for title in DEMO_FIELDS:
                simulator.simulator.state.extras.add_field(title)
            return serve_demo(args, simulator.base_url, state)
    finally:
        # The simulator forgets everything when it stops, so events queued for it must not outlive it.
        if not args.keep_state:
            shutil.rmtree(state, ignore_errors=True)


def serve_demo(args: Any, base_url: str, state: str) -> int:
    config = load_config(args, base=demo_config(base_url, state), base_origin="demo")
    if isinstance(config, int):
        return config
    return run_serving(config, lambda: print(banner(config, base_url, state, args.keep_state), flush=True))


if __name__ == "__main__":
    sys.exit(main())
