"""Real sidecar processes for the queue's crash and fleet tests: spawn, SIGKILL, restart."""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2

from tests.support.grpc_helpers import health_status
from tests.support.harness import EMAIL_CHANNEL, TOKEN, cli_env, free_port
from tests.support.queue_helpers import wait_for
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]
SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass
class SidecarProcess:
    """One sidecar CLI process on a fixed address and config; ``restart`` brings it back on the same."""

    config: Path
    address: str
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    kills: int = 0
    channels: list[grpc.Channel] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # more environment (OTEL_*...)

    def start(self) -> SidecarProcess:
        with self.log.open("ab") as err:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "sidecar", "--config", str(self.config)],
                cwd=ROOT, env=cli_env(**self.env), stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
        wait_for(lambda: self.popen is None or self.popen.poll() is not None or self.health() == SERVING,
                 "the sidecar to serve", 30)  # fmt: skip
        assert self.popen.poll() is None, f"the sidecar exited {self.popen.returncode}: {self.output()}"
        return self

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed or released."""
        assert self.popen is not None
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)
        self.kills += 1

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)
        for channel in self.channels:
            channel.close()

    def health(self) -> int:
        return health_status(self.address)

    def stub(self) -> pb_grpc.TrengoSidecarStub:
        channel = grpc.insecure_channel(self.address)
        self.channels.append(channel)
        return pb_grpc.TrengoSidecarStub(channel)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def sidecar_process(tmp_path: Path, base_url: str, name: str, **overrides: Any) -> SidecarProcess:
    address = f"127.0.0.1:{free_port()}"
    raw = {
        "apiToken": TOKEN, "baseUrl": base_url, "channelId": EMAIL_CHANNEL, "listen": address,
        "rateLimitPerMinute": 0, "shutdownGraceSeconds": 2, "backoffBaseSeconds": 0.01,
        "backoffMaxSeconds": 0.05, "requestTimeoutSeconds": 5, **overrides,
    }  # fmt: skip
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(raw))
    return SidecarProcess(config, address, tmp_path / f"{name}.log")
