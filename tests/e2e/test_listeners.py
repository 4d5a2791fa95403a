"""No open listener by accident (issue 22): the API stays on loopback unless caller auth guards it,
grpc.health.v1 alone on ``healthListen`` for kubelet, /metrics that a flood of idle connections
cannot exhaust, and a Trengo token that never crosses the network in clear without a word.

Real processes (the CLI) on real ports; kubelet is played by a health Check dialled at the pod
address, here a local address other than 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import yaml

from sidecar.config.load import build_config, load
from sidecar.errors import ConfigError
from tests.support.fleet import ROOT, SERVICE, SERVING, wait_for
from tests.support.grpc_helpers import health_status
from tests.support.harness import EMAIL_CHANNEL, TOKEN, cli_env, free_port
from trengo.sidecar.v1 import sidecar_pb2 as pb
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

BASE = {"apiToken": TOKEN, "channelId": EMAIL_CHANNEL}


def pod_address() -> str:
    """An address of this host that is not 127.0.0.1: its own IP if it has one, else 127.0.0.2."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))  # UDP: no packet is sent, the kernel picks the source
            address = str(probe.getsockname()[0])
        except OSError:
            address = "127.0.0.2"
    return address if address != "127.0.0.1" else "127.0.0.2"


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args], cwd=ROOT, env=cli_env(**env), capture_output=True,
        text=True, timeout=30,
    )  # fmt: skip


# --- refused at start -------------------------------------------------------------------------------


@pytest.mark.parametrize("listen", ["0.0.0.0:50051", "[::]:50051", "10.1.2.3:50051", "sidecar.internal:1"])
def test_an_api_off_loopback_without_caller_auth_is_refused(listen):
    with pytest.raises(ConfigError) as caught:
        build_config({**BASE, "listen": listen})
    assert caught.value.key == "listen" and "authToken" in str(caught.value)
    assert build_config({**BASE, "listen": listen, "authToken": "s3cret"}).listen == listen
    assert build_config({**BASE, "listen": listen, "allowUnauthenticated": True}).allow_unauthenticated


@pytest.mark.parametrize("listen", ["127.0.0.1:1", "127.3.2.1:1", "localhost:1", "[::1]:1", "unix:///tmp/s"])
def test_loopback_and_unix_sockets_need_no_caller_auth(listen):
    assert build_config({**BASE, "listen": listen}).listen == listen


def test_an_open_api_on_purpose_is_warned_about_loudly(tmp_path: Path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**BASE, "listen": "0.0.0.0:50051", "allowUnauthenticated": True}))
    assert any("UNAUTHENTICATED API on 0.0.0.0:50051" in w for w in load(config, env={}).warnings)
    shown = run("--config", str(config), "--check-config")
    assert shown.returncode == 0 and "# warning: UNAUTHENTICATED API" in shown.stdout, shown.stderr


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--listen", "0.0.0.0:50051"], {}, "listen (flag --listen): 0.0.0.0:50051 is reachable"),
        ([], {"SIDECAR_AUTH_TOKEN": "   "}, "authToken (env SIDECAR_AUTH_TOKEN): is blank"),
        ([], {"TRENGO_BASE_URL": "http://trengo.example.com/x"}, "baseUrl (env TRENGO_BASE_URL): is http://"),
    ],
)
def test_careless_setups_refuse_to_start_saying_why(args, env, says):
    done = run(*args, TRENGO_API_TOKEN=TOKEN, TRENGO_CHANNEL_ID=str(EMAIL_CHANNEL), **env)
    assert done.returncode == 2 and says in done.stderr, done.stderr
    assert TOKEN not in done.stderr


def test_a_blank_auth_token_in_a_file_is_refused_too():
    with pytest.raises(ConfigError) as caught:
        build_config({**BASE, "authToken": ""})
    assert caught.value.key == "authToken" and "blank" in str(caught.value)


def test_plain_http_to_trengo_only_on_loopback_or_on_purpose():
    assert build_config({**BASE, "baseUrl": "http://127.0.0.1:8080/api/v2"})
    assert build_config({**BASE, "baseUrl": "http://localhost:8080/api/v2"})
    with pytest.raises(ConfigError) as caught:
        build_config({**BASE, "baseUrl": "http://10.0.0.5/api/v2"})
    assert caught.value.key == "baseUrl" and "allowInsecureTrengo" in str(caught.value)
    assert build_config({**BASE, "baseUrl": "http://10.0.0.5/api/v2", "allowInsecureTrengo": True})


# --- healthListen: kubelet's probes on the pod address ------------------------------------------------


@pytest.fixture
def pod_sidecar(sim, tmp_path: Path) -> Iterator[tuple[str, int, int, int, int]]:
    """A sidecar as the manifests run it: API on loopback, health and metrics on every address."""
    api, health, metrics = free_port(), free_port(), free_port()
    log = tmp_path / "sidecar.log"
    with log.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "--listen", f"127.0.0.1:{api}", "--health-listen",
             f"0.0.0.0:{health}", "--metrics-listen", f"0.0.0.0:{metrics}"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err,
            env=cli_env(TRENGO_API_TOKEN=TOKEN, TRENGO_CHANNEL_ID=str(EMAIL_CHANNEL),
                        TRENGO_BASE_URL=sim.base_url),
        )  # fmt: skip
    try:
        wait_for(lambda: health_status(f"127.0.0.1:{api}", SERVICE) == SERVING, "the sidecar to serve")
        yield pod_address(), api, health, metrics, process.pid
    finally:
        process.terminate()
        process.wait(20)
    assert process.returncode == 0, log.read_text()


def test_kubelet_probes_reach_health_listen_on_the_pod_address_while_the_api_stays_on_loopback(pod_sidecar):
    pod, api, health, _, _ = pod_sidecar
    assert pod != "127.0.0.1"
    assert health_status(f"{pod}:{health}") == SERVING
    assert health_status(f"{pod}:{health}", SERVICE) == SERVING
    # The API: nothing listens on the pod address. The health port: health alone.
    with grpc.insecure_channel(f"{pod}:{api}") as channel, pytest.raises(grpc.RpcError) as caught:
        pb_grpc.TrengoSidecarStub(channel).Identify(pb.IdentifyRequest(user_id="u"), timeout=3)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    with grpc.insecure_channel(f"{pod}:{health}") as channel, pytest.raises(grpc.RpcError) as caught:
        pb_grpc.TrengoSidecarStub(channel).Identify(pb.IdentifyRequest(user_id="u"), timeout=3)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


# --- /metrics under a flood of idle connections ---------------------------------------------------------


def test_a_thousand_half_open_connections_leave_few_threads_and_metrics_answering(pod_sidecar):
    pod, _, _, metrics, pid = pod_sidecar
    held = []
    try:
        for _ in range(1000):
            conn = socket.create_connection(("127.0.0.1", metrics), timeout=5)
            conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            held.append(conn)
        time.sleep(0.5)
        threads = len(os.listdir(f"/proc/{pid}/task"))
        assert threads < 50, threads
        scrape = httpx.get(f"http://{pod}:{metrics}/metrics", timeout=5)
        assert scrape.status_code == 200 and "trengo_sidecar_rpcs_total" in scrape.text
    finally:
        for conn in held:
            conn.close()

