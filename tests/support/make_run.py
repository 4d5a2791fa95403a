"""``make run`` as a developer runs it, for the tests: its own process group, environment and make
variables on top, its listen address and simulator port free ones, stopped with Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import grpc

from tests.support.harness import cli_env, free_port, struct
from tests.support.processes import ROOT
from trengo.sidecar.v1 import sidecar_pb2 as pb
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

STATE = re.compile(r"^  state:\s+(/\S+) \(SQLite", re.MULTILINE)


class MakeRun:
    """``make run`` with ``env`` and make variables, its output in files, its listen address known."""

    def __init__(self, tmp_path: Path, env: dict[str, str], *variables: str) -> None:
        self.address = f"127.0.0.1:{free_port()}"
        self.out, self.err = tmp_path / "run.out", tmp_path / "run.err"
        base = {k: v for k, v in cli_env().items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
        self.sim_port = free_port()
        ports = {"SIDECAR_LISTEN": self.address, "TRENGO_SIM_PORT": str(self.sim_port),
                 "SIDECAR_HTTP_LISTEN": f"127.0.0.1:{free_port()}"}  # fmt: skip
        full = {**base, **ports, **env}
        with self.out.open("wb") as out, self.err.open("wb") as err:
            # -o install: the venv is the test's own; make run must not rebuild it under the test.
            self.popen = subprocess.Popen(
                ["make", "-s", "-o", "install", "run", *variables],
                cwd=ROOT, env=full, stdout=out, stderr=err, start_new_session=True,
            )  # fmt: skip
        self.banner = self._wait_for_banner()

    def _wait_for_banner(self) -> str:
        ends = time.monotonic() + 30
        while "Ctrl-C to stop." not in self.out.read_text():
            exited = self.popen.poll()
            assert exited is None, f"make run exited {exited}: {self.err.read_text()}"
            assert time.monotonic() < ends, f"no banner: {self.out.read_text()} {self.err.read_text()}"
            time.sleep(0.1)
        return self.out.read_text()

    @property
    def state(self) -> Path:
        found = STATE.search(self.banner)
        assert found, self.banner
        return Path(found.group(1))

    def identify(self) -> pb.IdentifyResponse:
        with grpc.insecure_channel(self.address) as channel:
            request = pb.IdentifyRequest(traits=struct({"email": "ann@example.com", "name": "Ann Lee"}))
            return pb_grpc.TrengoSidecarStub(channel).Identify(request, timeout=10)

    def interrupt(self) -> None:
        """Ctrl-C, as a terminal sends it: SIGINT to the whole group; back when every process is gone."""
        os.killpg(self.popen.pid, signal.SIGINT)
        self.popen.wait(timeout=30)
        ends = time.monotonic() + 30
        while _group_alive(self.popen.pid):
            assert time.monotonic() < ends, "make run's processes outlived Ctrl-C by 30 s"
            time.sleep(0.1)

    def kill(self) -> None:
        if _group_alive(self.popen.pid):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
