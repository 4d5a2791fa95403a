"""`python -m sidecar.simulator` / `trengo-sim`: run the Trengo simulator until SIGTERM or SIGINT.

Prints exactly one line, `trengo-sim listening on http://HOST:PORT/api/v2`, once it accepts calls
(scripts and tests parse it, notably with `--port 0`). Tokens are never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from sidecar.simulator import Simulator

DEFAULT_TOKEN = "demo-token"

CONTROL_HELP = """\
The control API, beside /api/v2 on the same port (no auth; never recorded, never faulted; JSON):
  POST   /_sim/reset          forget contacts, tickets, recorded requests and faults; reseed the
                              channels (405980 EMAIL, 405981 SMS, 405982 WhatsApp, 405983 voice, ...)
  GET    /_sim/requests       every /api/v2 request in arrival order: method, path, query, params,
                              headers (Authorization masked), token (a fingerprint of the bearer
                              token), body, raw_body, at, status (null until answered, 0 if dropped)
  GET    /_sim/contacts       what the simulator holds; likewise /_sim/tickets and /_sim/channels
  POST   /_sim/contacts       {"name", "identifier", "channel_id"}: seed a contact, unchecked
                              (duplicates allowed, to stage them)
  DELETE /_sim/contacts/ID    delete a contact
  POST   /_sim/channels       {"id" (optional), "title", "type"}: add a channel
  GET    /_sim/labels         labels; POST {"name", "id"?, "archived"?} seeds one (archived: listed,
                              never attachable); likewise /_sim/custom_fields {"title", "type"?}
  GET    /_sim/users          users (the token's owner first); POST {"email", "name"?} adds an agent
  GET    /_sim/teams          teams; POST {"name", "id"?} adds one (for assignTo)
  GET    /_sim/faults         the faults still waiting
  POST   /_sim/faults         script a fault; the first one matching a request is used:
           method, path         which requests it hits (path is a prefix; default: any)
           count                how many it hits (default 1; -1: every one, until cleared)
           status, body         answer this instead (a body alone goes with 503; a string body
                                is sent as is, so broken JSON can be scripted)
           headers              headers added to the answer (e.g. Retry-After)
           delay                seconds to wait first
           drop                 close the connection without an answer
           after                run the real handler first (the write happens), then delay,
                                drop or answer: a lost or spoiled answer
  DELETE /_sim/faults         clear every fault
  PUT    /_sim/config         {"rate_limit_per_minute": N (0 = off), "tokens": [...],
                              "phone_region": "NL" or null}: change the per-token rate limit, the
                              accepted tokens (never echoed back) and how national numbers are read

Example: curl -X POST localhost:8090/_sim/faults -d '{"method": "POST", "path": "/api/v2/tickets",
"status": 429, "headers": {"Retry-After": "2"}}'
"""


def _default_tokens() -> list[str]:
    from_env = [t.strip() for t in os.environ.get("TRENGO_SIM_TOKENS", "").split(",") if t.strip()]
    return from_env or [DEFAULT_TOKEN]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="trengo-sim",
        description="Local simulator of Trengo's REST API v2.",
        epilog=CONTROL_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8090, help="port to listen on; 0 picks a free one")
    parser.add_argument(
        "--token",
        action="append",
        dest="tokens",
        help="accepted bearer token, repeatable (default: $TRENGO_SIM_TOKENS, else demo-token)",
    )
    parser.add_argument("--rate-limit-per-minute", type=int, default=0, help="per-token limit; 0 = off")
    parser.add_argument(
        "--rate-window-seconds", type=float, default=60.0, help="the limit's rolling window (default 60)"
    )
    parser.add_argument("--extra-channels", type=int, default=0, help="extra EMAIL channels, for pagination")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    simulator = Simulator(args.tokens or _default_tokens(), args.rate_limit_per_minute, args.extra_channels)
    simulator.state.rate_window_seconds = args.rate_window_seconds
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    url = await simulator.start(args.host, args.port)
    print(f"trengo-sim listening on {url}", flush=True)
    try:
        await stop.wait()
    finally:
        await simulator.stop()


def main(argv: list[str] | None = None) -> int:
    asyncio.run(serve(parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
