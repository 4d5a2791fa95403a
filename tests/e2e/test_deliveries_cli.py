"""``trengo-sidecar deliveries`` as a first-class client: a real sidecar process with authTokenFile and
TLS (certificates made by openssl), reached with nothing but its own config file; mTLS; every
subcommand in text and JSON. The simulator's records prove what a retry sent."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from sidecar.simulator import SimulatorControl, SimulatorThread
from tests.support.grpc_helpers import health_status
from tests.support.harness import EMAIL_CHANNEL, TOKEN, cli_env, free_port
from tests.support.processes import ROOT, SERVING
from tests.support.queue_helpers import FAST_QUEUE, identify, order, settled, wait_for
from trengo.sidecar.v1 import sidecar_pb2 as pb
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

TICKETS = "/api/v2/tickets"
CALLER_TOKEN = "caller-7c1e-secret"




def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a shell with no SIDECAR_*/TRENGO_* variables (unless given): only what it is told."""
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "deliveries", *args],
        cwd=ROOT, env=cli_env(**env), capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.fixture
def tls_sidecar(
    sim: SimulatorThread, pki: Path, tmp_path: Path
) -> Iterator[tuple[Path, pb_grpc.TrengoSidecarStub]]:
    """A sidecar process as the Kubernetes README sets one up: token files, TLS, a SQLite queue; its
    health on a plaintext port of its own. Yields its config file and a stub that speaks TLS + token."""
    (tmp_path / "api-token").write_text(TOKEN + "\n")
    (tmp_path / "auth-token").write_text(CALLER_TOKEN + "\n")
    address, health = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    config = tmp_path / "sidecar.yaml"
    raw: dict[str, Any] = {
        "apiTokenFile": str(tmp_path / "api-token"), "authTokenFile": str(tmp_path / "auth-token"),
        "baseUrl": sim.base_url, "channelId": EMAIL_CHANNEL, "listen": address, "healthListen": health,
        "tlsCertFile": str(pki / "server.crt"), "tlsKeyFile": str(pki / "server.key"),
        "store": f"sqlite:///{tmp_path}/state.db", "rateLimitPerMinute": 0, "shutdownGraceSeconds": 2,
        **FAST_QUEUE,
    }  # fmt: skip
    config.write_text(yaml.safe_dump(raw))
    log = tmp_path / "sidecar.log"
    with log.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "--config", str(config)], cwd=ROOT, env=cli_env(), stderr=err
        )
    try:
        wait_for(lambda: process.poll() is not None or health_status(health) == SERVING, "the sidecar", 30)
        assert process.poll() is None, log.read_text()
        credentials = grpc.ssl_channel_credentials((pki / "ca.crt").read_bytes())
        with grpc.secure_channel(address, credentials) as channel:
            yield config, pb_grpc.TrengoSidecarStub(channel)
    finally:
        process.kill()
        process.wait()


def test_list_get_retry_and_watch_reach_a_tls_sidecar_with_an_auth_token_file_from_its_config(
    tls_sidecar: tuple[Path, pb_grpc.TrengoSidecarStub], control: SimulatorControl, tmp_path: Path
) -> None:
    config, stub = tls_sidecar
    token = (("authorization", f"Bearer {CALLER_TOKEN}"),)
    ids = [stub.Enqueue(identify("ann"), timeout=5, metadata=token).message_id]
    control.add_fault(method="POST", path=TICKETS, status=422, count=1)
    ids.append(stub.Enqueue(order("ann", 1), timeout=5, metadata=token).message_id)
    statuses = settled(_Authorized(stub, token), ids)
    assert statuses[ids[1]].state == pb.DELIVERY_STATE_FAILED
    (tmp_path / "api-token").unlink()  # the CLI needs no Trengo token: it reads only the caller's keys

    listed = cli("list", "--config", str(config))
    assert listed.returncode == 0, listed.stderr
    assert ids[1] in listed.stdout and "TRENGO_REJECTED" in listed.stdout and "1 failed" in listed.stdout
    assert ids[0] not in listed.stdout
    as_json = cli("--config", str(config), "list", "--output", "json", "--state", "delivered")
    assert [json.loads(line)["message_id"] for line in as_json.stdout.splitlines()] == [ids[0]], (
        as_json.stderr
    )

    shown = cli("get", ids[1], "--config", str(config))
    assert shown.returncode == 0 and shown.stdout.startswith(f"{ids[1]}  failed  attempts=1"), shown.stderr
    shown = cli("get", ids[0], "--config", str(config), "--output", "json")
    assert json.loads(shown.stdout)["state"] == "DELIVERY_STATE_DELIVERED", shown.stderr

    retried = cli("retry", ids[1], "--config", str(config), "--output", "json")
    assert retried.returncode == 0 and json.loads(retried.stdout) == {"retried": 1}, retried.stderr
    assert settled(_Authorized(stub, token), ids[1:])[ids[1]].state == pb.DELIVERY_STATE_DELIVERED
    posts = control.requests(path_prefix=TICKETS, method="POST")
    assert [r["status"] for r in posts] == [422, 201]  # the retry sent the event once more, and it landed

    watched = cli("watch", "--config", str(config), "--count", "3", "--output", "json")
    updates = [json.loads(line) for line in watched.stdout.splitlines()]
    assert watched.returncode == 0 and len(updates) == 3, watched.stderr
    assert [int(u["cursor"]) for u in updates] == sorted(int(u["cursor"]) for u in updates)
    watched = cli("watch", "--config", str(config), "--cursor", updates[0]["cursor"], "--count", "1")
    assert watched.stdout.startswith(f"{updates[1]['cursor']}  "), watched.stderr


def test_the_env_of_the_sidecar_and_tls_flags_work_without_a_config(
    tls_sidecar: tuple[Path, pb_grpc.TrengoSidecarStub], pki: Path, tmp_path: Path
) -> None:
    raw = yaml.safe_load(tls_sidecar[0].read_text())
    env = {"SIDECAR_LISTEN": raw["listen"], "SIDECAR_AUTH_TOKEN_FILE": raw["authTokenFile"]}
    ca = str(pki / "ca.crt")
    ok = cli("list", "--tls-ca-file", ca, "--tls-server-name", "localhost", **env)
    assert ok.returncode == 0 and ok.stdout == "0 failed\n", ok.stderr
    no_token = cli("list", "--tls-ca-file", ca, SIDECAR_LISTEN=raw["listen"])
    assert no_token.returncode == 1 and "UNAUTHENTICATED" in no_token.stderr
    distrusted = cli("list", "--tls-ca-file", str(pki / "rogue-ca.crt"), **env)
    assert distrusted.returncode == 1 and "UNAVAILABLE" in distrusted.stderr
    plaintext = cli("list", **env)  # the sidecar speaks only TLS
    assert plaintext.returncode == 1 and "UNAVAILABLE" in plaintext.stderr
    assert CALLER_TOKEN not in ok.stderr + no_token.stderr + distrusted.stderr + plaintext.stderr


def test_mtls_needs_a_client_certificate_from_the_sidecars_ca(
    make_sidecar, control, pki: Path, tmp_path: Path
):
    keys = {
        "tlsCertFile": str(pki / "server.crt"), "tlsKeyFile": str(pki / "server.key"),
        "tlsClientCaFile": str(pki / "ca.crt"), "store": f"sqlite:///{tmp_path}/state.db",
    }  # fmt: skip
    sidecar = make_sidecar(**keys, **FAST_QUEUE)
    config = tmp_path / "sidecar.yaml"
    config.write_text(yaml.safe_dump({"listen": sidecar.address, **keys}))
    asked = cli("list", "--config", str(config))
    assert asked.returncode == 2 and "--tls-cert-file and --tls-key-file" in asked.stderr
    client = ("--tls-cert-file", str(pki / "client.crt"), "--tls-key-file", str(pki / "client.key"))
    ok = cli("--config", str(config), *client, "list", "--output", "json")
    assert ok.returncode == 0 and ok.stdout == "", ok.stderr
    rogue = ("--tls-cert-file", str(pki / "rogue.crt"), "--tls-key-file", str(pki / "rogue.key"))
    refused = cli("list", "--config", str(config), *rogue)
    assert refused.returncode == 1 and "UNAVAILABLE" in refused.stderr
    half = cli("list", "--config", str(config), "--tls-cert-file", str(pki / "client.crt"))
    assert half.returncode == 2 and "go together" in half.stderr
    assert control.requests() == []


def test_a_bad_config_is_named_and_nothing_is_dialled(tmp_path: Path) -> None:
    config = tmp_path / "sidecar.yaml"
    config.write_text(yaml.safe_dump({"listen": "nowhere", "authTokenFile": str(tmp_path / "missing")}))
    bad = cli("list", "--config", str(config))
    assert bad.returncode == 2
    assert (
        "listen" in bad.stderr
        and f"authTokenFile: cannot read the secret file {tmp_path / 'missing'}" in bad.stderr
    )


def test_trengo_sidecar_help_lists_the_deliveries_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "--help"], cwd=ROOT, env=cli_env(), capture_output=True, text=True
    )
    assert "trengo-sidecar deliveries {list,get,retry,watch}" in done.stdout


class _Authorized:
    """A stub whose GetDelivery carries the caller token (what settled() calls)."""

    def __init__(self, stub: pb_grpc.TrengoSidecarStub, metadata: Any) -> None:
        self.stub, self.metadata = stub, metadata

    def GetDelivery(self, request: pb.GetDeliveryRequest, timeout: float) -> pb.DeliveryStatus:
        return self.stub.GetDelivery(request, timeout=timeout, metadata=self.metadata)
