"""The simulator and the sidecar as separate processes, started and stopped by the benchmark."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from . import CHANNEL_ID, CUSTOM_FIELDS, PHONE_REGION, TEMPLATES, TOKEN

SERVICE = "trengo.sidecar.v1.TrengoSidecar"
LISTENING = re.compile(r"trengo-sim listening on (http://\S+/api/v2)")


def child_env() -> dict[str, str]:
    """The environment for the children: no proxy between them and localhost, and no OTEL_* from the
    shell (tracing is on only where the benchmark asks for it)."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env = {k: v for k, v in env.items() if not k.startswith("OTEL_")}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Process:
    """One child process, with its output in a log file; stopped with SIGTERM (then SIGKILL)."""

    def __init__(
        self,
        name: str,
        args: list[str],
        workdir: Path,
        stdout_pipe: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE if stdout_pipe else self._log,
            stderr=self._log,
            env={**child_env(), **(env or {})},
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")

    def rss_mb(self) -> float:
        """Resident memory (VmRSS) of the process, from /proc; 0 when unknown."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()
        return self.proc.returncode


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc; 0 when unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used by the benchmark client, the sidecar and the simulator, between two reads."""

    def __init__(self, sidecar_pid: int, simulator_pid: int) -> None:
        self._pids = (os.getpid(), sidecar_pid, simulator_pid)

    def read(self) -> tuple[float, float, float]:
        client, sidecar, simulator = (cpu_seconds(pid) for pid in self._pids)
        return client, sidecar, simulator

    def since(self, before: tuple[float, float, float]) -> tuple[float, float, float]:
        """CPU seconds used since ``before`` (an earlier read)."""
        client, sidecar, simulator = (b - a for a, b in zip(before, self.read(), strict=True))
        return client, sidecar, simulator


def start_simulator(workdir: Path, timeout: float = 15.0) -> tuple[Process, str]:
    """`python -m sidecar.simulator --port 0`; returns it and its base URL once it accepts calls."""
    args = [sys.executable, "-m", "sidecar.simulator", "--port", "0", "--token", TOKEN]
    sim = Process("simulator", args, workdir, stdout_pipe=True)
    assert sim.proc.stdout is not None
    deadline = time.monotonic() + timeout
    buffer = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sim.proc.stdout], [], [], 0.1)
        if ready:
            chunk = os.read(sim.proc.stdout.fileno(), 4096)
            buffer += chunk
            match = LISTENING.search(buffer.decode(errors="replace"))
            if match:
                return sim, match.group(1)
            if not chunk:
                break
        sim.check_alive()
    sim.stop()
    raise RuntimeError(f"the simulator did not say where it listens:\n{buffer.decode(errors='replace')}")


def sidecar_config(base_url: str, listen: str, **overrides: Any) -> dict[str, Any]:
    """The benchmark's sidecar config (RudderStack keys). rateLimitPerMinute 0: no client-side limiter."""
    config: dict[str, Any] = {
        "apiToken": TOKEN,
        "baseUrl": base_url,
        "channelId": CHANNEL_ID,
        "channelIdentifier": "auto",  # the e-mail channel, and the SMS channel the phone scenario names
        "enableDedup": True,
        "eventTemplateMap": TEMPLATES,
        "customFieldMap": CUSTOM_FIELDS,
        "defaultPhoneRegion": PHONE_REGION,
        "listen": listen,
        "rateLimitPerMinute": 0,
        "shutdownGraceSeconds": 1,
    }
    config.update(overrides)
    return config


def start_sidecar(
    base_url: str,
    workdir: Path,
    name: str = "sidecar",
    wrapper: list[str] | None = None,
    timeout: float = 20.0,
    env: dict[str, str] | None = None,
    **overrides: Any,
) -> tuple[Process, str]:
    """`python -m sidecar --config FILE --listen ...` (optionally under a wrapper such as pyinstrument)."""
    listen = f"127.0.0.1:{free_port()}"
    config_path = workdir / f"{name}.json"
    config_path.write_text(json.dumps(sidecar_config(base_url, listen, **overrides), indent=2))
    module = ["-m", "sidecar", "--config", str(config_path), "--listen", listen]
    args = [sys.executable, *(wrapper or []), *module]
    sidecar = Process(name, args, workdir, env=env)
    try:
        wait_healthy(sidecar, listen, timeout)
    except BaseException:
        sidecar.stop(signal.SIGKILL)
        raise
    return sidecar, listen


def wait_healthy(process: Process, target: str, timeout: float) -> None:
    """Poll grpc.health.v1 until the sidecar's service is SERVING."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            process.check_alive()
            try:
                answer = health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{process.name} not healthy after {timeout:.0f}s:\n{process.log_tail()}")
            time.sleep(0.1)


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="trengo-bench-"))
