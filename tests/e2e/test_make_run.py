"""``make run`` is the real sidecar with demo defaults (issue 23, item 5), run as a developer runs it:
``make run`` in its own process group, environment and flags on top, stopped with Ctrl-C (SIGINT to
the group). Its temporary SQLite folder goes at stop unless KEEP_STATE=1.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.harness import cli_env, free_port
from tests.support.make_run import MakeRun
from tests.support.metrics import scrape
from tests.support.processes import ROOT
from trengo.sidecar.v1 import sidecar_pb2 as pb


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
