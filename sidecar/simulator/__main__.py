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


def _default_tokens() -> list[str]:
    from_env = [t.strip() for t in os.environ.get("TRENGO_SIM_TOKENS", "").split(",") if t.strip()]
    return from_env or [DEFAULT_TOKEN]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="trengo-sim", description="Local simulator of Trengo's REST API v2."
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
