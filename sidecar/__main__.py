"""The CLI: ``trengo-sidecar`` (or ``python -m sidecar``). Its flags and serving: sidecar/api/serving.py."""

from __future__ import annotations

import argparse
import sys

from .api.serving import build_parser, load_config, run_serving

COMMANDS = """
commands:
  trengo-sidecar deliveries {list,get,retry,watch}
                        see, follow and retry queued events on a running sidecar
                        (trengo-sidecar deliveries --help; --config FILE reads its address, token, TLS)"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    parser.description = f"{parser.description}\n{COMMANDS}"
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["deliveries"]:  # the operator's queue commands (sidecar/queue/cli.py)
        from .queue.cli import main as deliveries

        return deliveries(argv[1:])
    args = parse_args(argv)
    config = load_config(args)
    if isinstance(config, int):
        return config
    if args.check_trengo:
        from .api.app import Sidecar
        from .api.readiness import check_command

        return check_command(config, Sidecar)
    return run_serving(config)


if __name__ == "__main__":
    sys.exit(main())
