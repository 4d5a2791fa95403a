"""A sidecar as a real process: spawning it, waiting for it, the health answers it gives."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from grpc_health.v1 import health_pb2

from sidecar.simulator import SimulatorControl, SimulatorThread
from tests.support.grpc_helpers import health_status
from tests.support.harness import EMAIL_CHANNEL, TEMPLATES, TOKEN, cli_env, free_port, struct
from trengo.sidecar.v1 import sidecar_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def track(message_id: str = "") -> pb.TrackRequest:
    return pb.TrackRequest(
        event="Checked Out", context=struct({"traits": {"email": "ann@example.com"}}), message_id=message_id
    )


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    ends = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < ends, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture
def spawn(
    sim: SimulatorThread, control: SimulatorControl, tmp_path: Path
) -> Iterator[Callable[..., Process]]:
    """spawn(env, serving, **config): the sidecar CLI on a free port against the session simulator.

    ``serving``: wait for SERVING (else only for health to answer). Ready to call.
    """
    started: list[Process] = []

    def spawn(env: dict[str, str] | None = None, serving: bool = True, **overrides: Any) -> Process:
        address = f"127.0.0.1:{free_port()}"
        config = tmp_path / f"sidecar-{len(started)}.yaml"
        raw = {
            "apiToken": TOKEN, "baseUrl": sim.base_url, "channelId": EMAIL_CHANNEL, "listen": address,
            "eventTemplateMap": TEMPLATES, "rateLimitPerMinute": 0, "shutdownGraceSeconds": 5, **overrides,
        }  # fmt: skip
        raw = {key: value for key, value in raw.items() if value is not None}
        config.write_text(yaml.safe_dump(raw))
        log = tmp_path / f"sidecar-{len(started)}.log"
        with log.open("wb") as err:
            popen = subprocess.Popen(
                [sys.executable, "-m", "sidecar", "--config", str(config)],
                cwd=ROOT, env=cli_env(**(env or {})), stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
        process = Process(popen, address, log)
        started.append(process)
        # serving=False: wait until health answers at all, whatever it says (the readiness tests).
        def up() -> bool:
            status = process.health()
            return status == SERVING if serving else status in (SERVING, NOT_SERVING)

        wait_for(lambda: popen.poll() is not None or up(), "the sidecar to serve", 20)
        assert popen.poll() is None, f"the sidecar exited {popen.returncode}: {process.output()}"
        return process

    yield spawn
    for process in started:
        if process.popen.poll() is None:
            process.popen.kill()
            process.popen.wait()


def check_trengo(tmp_path: Path, base_url: str, **overrides: Any) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "sidecar.yaml"
    raw = {"apiToken": TOKEN, "baseUrl": base_url, "channelId": EMAIL_CHANNEL, "eventTemplateMap": TEMPLATES,
           "maxAttempts": 2, "backoffBaseSeconds": 0.01, **overrides}  # fmt: skip
    config.write_text(yaml.safe_dump(raw))
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "--config", str(config), "--check-trengo"],
        cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@dataclass
class Process:
    popen: subprocess.Popen[bytes]
    address: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def health(self, service: str = "") -> int:
        return health_status(self.address, service)
