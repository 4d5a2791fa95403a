"""``make run`` without a Trengo token: the simulator and a sidecar against it, with a demo config.

Both run in this one process on one event loop; Ctrl-C (or SIGTERM) stops both.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import tempfile

from ..api.app import Sidecar
from ..config.load import build_config
from ..observe import logs
from . import Simulator

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
trengo-sidecar (demo) listening on {listen}, against the Trengo simulator at {sim}
Try it (grpcurl, or `buf curl --protocol grpc --http2-prior-knowledge http://{listen}/...`):

  grpcurl -plaintext {listen} list
  grpcurl -plaintext -d '{{"traits": {{"email": "ann@example.com", "name": "Ann Lee"}}}}' \\
    {listen} trengo.sidecar.v1.TrengoSidecar/Identify
  grpcurl -plaintext -d '{{"event": "Added to cart", "properties": {{"revenue": 2000}},
    "context": {{"traits": {{"email": "ann@example.com"}}}}}}' {listen} trengo.sidecar.v1.TrengoSidecar/Track
  grpcurl -plaintext -d '{{"event": "Order Placed", "properties": {{"order_id": "A-17", "total": 49.5,
    "url": "https://shop.example/o/A-17"}}, "context": {{"traits": {{"email": "ann@example.com"}}}}}}' \
    {listen} trengo.sidecar.v1.TrengoSidecar/Track      # a ticket with an internal note and a label
  curl -s {sim_root}/_sim/tickets     # what the simulator stored

Enqueue accepts for later delivery (the queue is SQLite in {state}); GetDelivery follows it:

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


async def run(listen: str, sim_port: int, http: str) -> None:
    simulator = Simulator(tokens=[DEMO_TOKEN])
    for label in DEMO_LABELS:  # what the demo config names, as a Trengo account would have them
        simulator.state.extras.add_label(label)
    for title in DEMO_FIELDS:
        simulator.state.extras.add_field(title)
    base_url = await simulator.start("127.0.0.1", sim_port)
    # The queue's SQLite in a folder of this run's own: the simulator forgets everything when it stops,
    # so events queued for it must not outlive it either.
    state = tempfile.mkdtemp(prefix="trengo-sidecar-demo-")
    raw = {**DEMO_CONFIG, "baseUrl": base_url, "listen": listen, "store": f"sqlite:///{state}/state.db",
           "httpListen": http, "writeKeys": [DEMO_WRITE_KEY]}  # fmt: skip
    sidecar = Sidecar(build_config(raw))
    await sidecar.start()
    sim_root = base_url.removesuffix("/api/v2")
    text = EXAMPLE.format(listen=listen, sim=base_url, sim_root=sim_root, state=state, http=http,
                          write_key=DEMO_WRITE_KEY)  # fmt: skip
    print(text, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await sidecar.stop(grace=2)
    await simulator.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default=os.environ.get("SIDECAR_LISTEN", "127.0.0.1:50051"))
    parser.add_argument("--sim-port", type=int, default=int(os.environ.get("TRENGO_SIM_PORT", "8090")))
    parser.add_argument("--http-listen", default=os.environ.get("SIDECAR_HTTP_LISTEN", "127.0.0.1:8088"))
    args = parser.parse_args()
    logs.setup("text", "INFO")
    asyncio.run(run(args.listen, args.sim_port, args.http_listen))


if __name__ == "__main__":
    main()
