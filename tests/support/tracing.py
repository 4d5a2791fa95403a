"""Traces: a local OTLP receiver and a sidecar process tracing to it (fixtures), the spans it got by
trace, a span's parent."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from sidecar.simulator import SimulatorControl, SimulatorThread
from sidecar.simulator.otlp import Receiver, serve
from tests.support.harness import EMAIL_CHANNEL, TEMPLATES, TOKEN, cli_env
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "trengo.sidecar.v1.TrengoSidecar"


def parent(trace_id: str, span_id: str) -> tuple[tuple[str, str], ...]:
    return (("traceparent", f"00-{trace_id}-{span_id}-01"),)


def spans_of(receiving: Receiver, trace_id: str, count: int) -> list[Any]:
    def found() -> list[Any]:
        mine = [s for s in receiving.spans() if s.trace_id.hex() == trace_id]
        return mine if len(mine) >= count else []

    return wait_for(found, f"{count} spans of trace {trace_id}")


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    ends = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < ends, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, int]]:
    server, receiver, port = serve()
    yield receiver, port
    server.stop(0)


def _listening_port(popen: subprocess.Popen[bytes], log: Path) -> int:
    """The port the sidecar process bound, from its "trengo-sidecar listening" line (JSON logs)."""

    def port() -> int | None:
        lines = log.read_text(errors="replace").split("\n")[:-1]  # whole lines only
        listening = [json.loads(line) for line in lines if "trengo-sidecar listening" in line]
        assert listening or popen.poll() is None, f"the sidecar exited {popen.returncode}: {log.read_text()}"
        return int(listening[0]["port"]) if listening else None

    return int(wait_for(port, "the sidecar to listen", 20))


@pytest.fixture
def start_traced(sim: SimulatorThread, control: SimulatorControl, receiver, tmp_path: Path):
    """start_traced(**config): the sidecar CLI, tracing to the receiver: (stub, receiver, log file)."""
    receiving, port = receiver
    started: list[tuple[subprocess.Popen[bytes], grpc.Channel]] = []

    def start(env: dict[str, str] | None = None, **overrides: Any) -> Any:
        """(stub, receiver, log); with ``env``, extra environment, and the process as a fourth."""
        config = tmp_path / f"sidecar-{len(started)}.yaml"
        # Port 0, the port read from the process's own log: a port picked by free_port() beforehand could
        # be taken by another test's (or another run's) sidecar before this process bound it; this one
        # then exited and the channel reached the other, whose answers the test took for its own (seen
        # once under load: "DID NOT RAISE" from a sidecar without this test's authToken).
        config.write_text(yaml.safe_dump({
            "apiToken": TOKEN, "baseUrl": sim.base_url, "channelId": EMAIL_CHANNEL, "listen": "127.0.0.1:0",
            "eventTemplateMap": TEMPLATES, "rateLimitPerMinute": 0, "logFormat": "json",
            "backoffBaseSeconds": 0.01, "backoffMaxSeconds": 0.05, **overrides,
        }))  # fmt: skip
        environment = cli_env(**{
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_SERVICE_NAME": "sidecar-under-test",
            "OTEL_BSP_SCHEDULE_DELAY": "50",  # export within 50 ms, not the default 5 s
            **(env or {}),
        })
        log = tmp_path / f"sidecar-{len(started)}.log"
        with log.open("wb") as err:
            popen = subprocess.Popen([sys.executable, "-m", "sidecar", "--config", str(config)],
                                     cwd=ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=err)
        try:
            listening = _listening_port(popen, log)
        except AssertionError:
            popen.kill()
            popen.wait(10)
            raise
        channel = grpc.insecure_channel(f"127.0.0.1:{listening}")
        started.append((popen, channel))
        grpc.channel_ready_future(channel).result(timeout=20)
        stub = pb_grpc.TrengoSidecarStub(channel)
        return (stub, receiving, log, popen) if env else (stub, receiving, log)

    yield start
    for popen, channel in started:
        channel.close()
        popen.terminate()
        popen.wait(10)
