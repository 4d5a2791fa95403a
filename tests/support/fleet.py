"""A fleet of real sidecar processes (the ``trengo-sidecar`` CLI) on one token and one store."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2

from tests.support.grpc_helpers import health_status
from tests.support.harness import EMAIL_CHANNEL, TEMPLATES, TOKEN, cli_env, free_port
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]
CLI = Path(sys.executable).parent / "trengo-sidecar"
SERVICE = "trengo.sidecar.v1.TrengoSidecar"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    ends = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < ends, f"timed out waiting for {what}"
        time.sleep(0.02)


@dataclass
class Sidecar:
    """One sidecar process; ``stub`` and ``health`` talk to it over a real port."""

    config: Path
    log: Path
    address: str
    popen: subprocess.Popen[bytes] | None = None
    _channel: grpc.Channel | None = field(default=None, repr=False)

    def start(self) -> Sidecar:
        with self.log.open("ab") as err:
            self.popen = subprocess.Popen(
                [str(CLI), "--config", str(self.config)],
                cwd=ROOT, env=cli_env(), stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
        return self

    def wait_serving(self, service: str = "", timeout: float = 30.0) -> Sidecar:
        def ready() -> bool:
            assert self.popen is not None and self.popen.poll() is None, f"it exited: {self.output()}"
            return self.health(service) == SERVING

        wait_for(ready, f"sidecar {self.address} to serve {service or 'overall'}", timeout)
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def health(self, service: str = "") -> int:
        return health_status(self.address, service)

    @property
    def stub(self) -> pb_grpc.TrengoSidecarStub:
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.address)
        return pb_grpc.TrengoSidecarStub(self._channel)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(sig)
            self.popen.wait(20)
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def stop(self) -> None:
        """SIGTERM: a clean stop, as Kubernetes does."""
        self.kill(signal.SIGTERM)


class Fleet:
    """Sidecars sharing one config (store, token, limit), each on a port of its own."""

    def __init__(self, tmp: Path, base_url: str) -> None:
        self.tmp = tmp
        self.base_url = base_url
        self.sidecars: list[Sidecar] = []

    def spawn(self, count: int = 1, wait: bool = True, **overrides: Any) -> list[Sidecar]:
        made = [self._make(overrides).start() for _ in range(count)]
        if wait:
            for sidecar in made:
                sidecar.wait_serving(SERVICE)
        return made

    def _make(self, overrides: dict[str, Any]) -> Sidecar:
        n = len(self.sidecars)
        address = f"127.0.0.1:{free_port()}"
        raw = {
            "apiToken": TOKEN, "baseUrl": self.base_url, "channelId": EMAIL_CHANNEL, "listen": address,
            "eventTemplateMap": TEMPLATES, "rateLimitPerMinute": 0, "shutdownGraceSeconds": 2,
            "backoffBaseSeconds": 0.05, "backoffMaxSeconds": 0.2, "requestTimeoutSeconds": 5,
            "logFormat": "json", **overrides,
        }  # fmt: skip
        config = self.tmp / f"sidecar-{n}.yaml"
        config.write_text(yaml.safe_dump(raw))
        sidecar = Sidecar(config, self.tmp / f"sidecar-{n}.log", address)
        self.sidecars.append(sidecar)
        return sidecar

    def restart(self, sidecar: Sidecar) -> Sidecar:
        sidecar.stop()
        return sidecar.start().wait_serving(SERVICE)

    def close(self) -> None:
        for sidecar in self.sidecars:
            sidecar.kill()

    def logs(self) -> str:
        return "\n".join(s.output() for s in self.sidecars if s.log.exists())

