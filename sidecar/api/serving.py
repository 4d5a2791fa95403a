"""Serving the sidecar from the command line: its flags, and start, log, serve until a signal.

``trengo-sidecar`` (sidecar/__main__.py) and ``make run``'s demo (sidecar/simulator/demo.py) both serve
through here, so the demo is the real sidecar: the same flags on top of its config, the same logs,
metrics, tracing and start-up line.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable
from typing import Any

from ..config.load import LOG_FORMATS, LOG_LEVELS, Config, load
from ..config.report import check_config, env_help, version
from ..errors import ConfigError
from ..observe import logs

log = logging.getLogger("sidecar")


def build_parser(
    prog: str = "trengo-sidecar",
    description: str = "A gRPC sidecar that delivers Identify and Track events to Trengo.",
) -> argparse.ArgumentParser:
    """The sidecar's flags (make run's demo takes the same ones, and adds its own)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog="Config keys come from --config, then the environment variables below, then flags.\n\n"
        + env_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"trengo-sidecar {version()}")
    parser.add_argument(
        "--config", metavar="FILE", help="JSON or YAML config (RudderStack keys: apiToken, ...)"
    )
    parser.add_argument(
        "--listen", metavar="ADDR", help="host:port or unix:///path (default 127.0.0.1:50051)"
    )
    parser.add_argument("--metrics-listen", metavar="HOST:PORT", help="serve Prometheus /metrics there")
    parser.add_argument(
        "--health-listen", metavar="HOST:PORT", help="serve grpc.health.v1 alone there (kubelet's probes)"
    )
    parser.add_argument(
        "--http-listen", metavar="HOST:PORT",
        help="serve the HTTP ingest for RudderStack/Segment SDKs there (POST /v1/batch); needs writeKeys",
    )  # fmt: skip
    parser.add_argument(
        "--store", metavar="URL", help="memory: (default), sqlite:///abs/path.db or postgresql://... (shared)"
    )
    # Values are checked by the config, as the same key's env and file values are: in any case.
    parser.add_argument("--log-format", metavar="{" + ",".join(LOG_FORMATS) + "}")
    parser.add_argument("--log-level", metavar="{" + ",".join(LOG_LEVELS) + "}")
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the config, print it as a config file with where each value came from, and exit",
    )
    parser.add_argument(
        "--check-trengo",
        action="store_true",
        help="check the token and baseUrl against Trengo (one channel list) and exit: 0 if they work",
    )
    return parser


def flag_overrides(args: argparse.Namespace) -> dict[str, str | None]:
    """The config keys the flags set (None: not given)."""
    return {
        "listen": args.listen,
        "metricsListen": args.metrics_listen,
        "healthListen": args.health_listen,
        "httpListen": args.http_listen,
        "store": args.store,
        "logFormat": args.log_format,
        "logLevel": args.log_level,
    }


def config_problems(exc: ConfigError) -> str:
    """Every problem found, one per line, each naming its key (and env variable or flag)."""
    if len(exc.problems) == 1:
        return f"trengo-sidecar: bad config: {exc.line()}"
    lines = "".join(f"\n  {problem.line()}" for problem in exc.problems)
    return f"trengo-sidecar: bad config ({len(exc.problems)} problems):{lines}"


def load_config(args: argparse.Namespace, **load_options: Any) -> Config | int:
    """The config the file, env and flags give, with logging set up and its warnings logged; or the exit
    code instead: 2 for a bad config (every problem on stderr), 0 once --check-config has printed it.
    The CLI and `make run`'s demo (``load_options``: its defaults underneath) start the same way."""
    try:
        loaded = load(args.config, overrides=flag_overrides(args), **load_options)
    except ConfigError as exc:
        print(config_problems(exc), file=sys.stderr)
        return 2
    config = loaded.config
    logs.setup(config.log_format, config.log_level)
    if args.check_config:
        print(check_config(loaded))
        return 0
    for warning in loaded.warnings:
        log.warning(warning)
    return config


def run_serving(config: Config, started: Callable[[], None] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; 1 (said in the log) if the sidecar cannot start."""
    try:
        asyncio.run(serve(config, started))
    except (OSError, ConfigError) as exc:  # ConfigError: the OTEL_* environment (sidecar/observe/tracing.py)
        log.error("cannot start: %s", exc)
        return 1
    return 0


async def serve(config: Config, started: Callable[[], None] | None = None) -> None:
    """Start the sidecar (and its metrics), log where it serves, call ``started``, serve until a signal."""
    from ..observe.tracing import export_endpoint
    from .app import Sidecar  # grpc import deferred so --help and config errors are instant

    sidecar = Sidecar(config)
    try:
        port = await sidecar.start()
    except RuntimeError as exc:  # grpc's "Failed to bind"
        raise OSError(f"listen {config.listen}: cannot listen there: {exc}") from None
    if config.metrics_listen:
        from ..observe.metrics import start_metrics

        try:
            start_metrics(config.metrics_listen, sidecar)
        except OSError as exc:
            # Stop the server that did start, so the loop closes with nothing left running on it.
            await sidecar.stop(grace=0)
            problem = exc.strerror or str(exc)
            raise OSError(f"metricsListen {config.metrics_listen}: cannot serve metrics: {problem}") from None
    endpoint = export_endpoint() if sidecar.tracing else ""
    if endpoint:
        log.info("tracing on: spans go over OTLP/gRPC to %s", endpoint, extra={"fields": {"otlp": endpoint}})
    log.info(
        "trengo-sidecar listening",
        extra={
            "fields": {
                "listen": config.listen,
                "port": port,
                "health_listen": config.health_listen,
                "metrics": f"http://{config.metrics_listen}/metrics" if config.metrics_listen else "off",
                "tracing": endpoint or "off",
                "trengo": config.base_url,
                "channel_id": config.channel_id,
                "channel_identifier": config.channel_identifier,
                "dedup": config.enable_dedup,
                "events": len(config.event_templates),
                "store": config.store.masked(),
                "http_listen": config.http_listen or "off",
            }
        },
    )
    if started is not None:
        started()
    await sidecar.serve_until_signal()
