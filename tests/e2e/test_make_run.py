"""``make run`` is the real sidecar with demo defaults (issue 23, item 5), run as a developer runs it:
``make run`` in its own process group, environment and flags on top, stopped with Ctrl-C (SIGINT to
the group). Its temporary SQLite folder goes at stop unless KEEP_STATE=1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.support.harness import cli_env, free_port, struct
from tests.support.metrics import scrape
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
        ports = {"SIDECAR_LISTEN": self.address, "TRENGO_SIM_PORT": str(free_port()),
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


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[list[MakeRun]]:
    started: list[MakeRun] = []
    yield started
    for run in started:
        run.kill()
        shutil.rmtree(run.state, ignore_errors=True)


def test_make_run_logs_json_and_serves_metrics_from_the_environment(tmp_path: Path, runs: list[MakeRun]):
    metrics = f"127.0.0.1:{free_port()}"
    run = MakeRun(tmp_path, {"SIDECAR_LOG_FORMAT": "json", "SIDECAR_METRICS_LISTEN": metrics})
    runs.append(run)
    assert f"metrics: http://{metrics}/metrics" in run.banner
    assert run.identify().action == pb.ACTION_CREATE_CONTACT  # the demo's simulator answered
    text, _ = scrape(f"http://{metrics}/metrics")
    assert 'trengo_sidecar_rpcs_total{code="OK",method="Identify"} 1.0' in text, text[:2000]
    state = run.state
    assert (state / "state.db").is_file()
    run.interrupt()
    lines = [json.loads(line) for line in run.err.read_text().splitlines() if line.strip()]
    [started] = [line for line in lines if line["msg"] == "trengo-sidecar listening"]
    assert started["metrics"] == f"http://{metrics}/metrics" and started["tracing"] == "off"
    assert started["listen"] == run.address
    assert any(line["msg"] == "stopped" for line in lines)
    assert not state.exists()  # the temporary state went with the demo


def test_make_run_takes_flags_keeps_its_state_when_told_and_says_where_spans_go(
    tmp_path: Path, runs: list[MakeRun]
):
    metrics = f"127.0.0.1:{free_port()}"
    collector = f"http://127.0.0.1:{free_port()}"  # nobody listens: spans are dropped, the line still says
    run = MakeRun(
        tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": collector},
        f"ARGS=--metrics-listen {metrics} --log-level debug", "KEEP_STATE=1",
    )  # fmt: skip
    runs.append(run)
    scrape(f"http://{metrics}/metrics")
    assert f"tracing: {collector}" in run.banner and "kept at stop" in run.banner
    for line in run.banner.splitlines():  # each example on a line of its own, none glued to the next
        assert line.count("grpcurl ") <= 1 and line.count("curl -s") <= 1, line
    run.interrupt()
    log = run.err.read_text()
    assert f"tracing on: spans go over OTLP/gRPC to {collector}" in log, log
    listening = next(line for line in log.splitlines() if "trengo-sidecar listening" in line)
    assert f"metrics=http://{metrics}/metrics" in listening and f"tracing={collector}" in listening
    assert " DEBUG " in log  # --log-level debug, a flag on top of the demo's config
    assert (run.state / "state.db").is_file()  # KEEP_STATE=1


def test_make_run_check_config_shows_the_demo_defaults_under_the_environment(tmp_path: Path):
    done = subprocess.run(
        ["make", "-s", "-o", "install", "run", "ARGS=--check-config"],
        cwd=ROOT, env={**cli_env(), "TRENGO_CHANNEL_IDENTIFIER": "email"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done
    lines = done.stdout.splitlines()
    assert "channelId: 405980  # demo" in lines
    assert "channelIdentifier: email  # env TRENGO_CHANNEL_IDENTIFIER" in lines
    assert "demo-token" not in done.stdout
    leftovers = re.findall(r"sqlite:///(/tmp/trengo-sidecar-demo-[^/]+)/", done.stdout)
    assert leftovers and not Path(leftovers[0]).exists()  # removed, even after a run that only checked
