"""Secrets and who may call: the API token never leaks, and only the callers the config allows get in.

Token: never in logs (every record of every logger, formatted as text and JSON), errors (details and
trailing metadata), dry-run output, metrics or ``--check-config``; read from ``apiTokenFile`` /
``TRENGO_API_TOKEN_FILE``. Callers: loopback by default, a unix socket with ``--listen unix:///...``,
an ``authToken`` as ``authorization: Bearer ...`` metadata, TLS and mTLS with certificates made at
test time by the ``openssl`` CLI. Every test checks the simulator: a refused caller wrote nothing.
"""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import generate_latest

from sidecar.config.load import Config, load_config
from sidecar.observe import logs
from sidecar.observe.metrics import install_metrics
from sidecar.simulator import SimulatorControl
from sidecar.simulator.app import token_fingerprint
from tests.support.grpc_helpers import Failure, failure
from tests.support.harness import EMAIL_CHANNEL, TOKEN, SidecarThread, cli_env, struct
from trengo.sidecar.v1 import sidecar_pb2 as pb
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]
SECRET = "tok-7f3a9c1e-only-in-the-file"  # an API token that only ever lives in a file
CALLER_TOKEN = "caller-5b2d8e4f-secret"


def identify(email: str = "ann@example.com", **traits: Any) -> pb.IdentifyRequest:
    return pb.IdentifyRequest(traits=struct({"email": email, **traits}))


def track(email: str = "ann@example.com", event: str = "Product Purchased") -> pb.TrackRequest:
    return pb.TrackRequest(event=event, context=struct({"traits": {"email": email}}))


def fails(call: Callable[[], Any]) -> tuple[Failure, grpc.RpcError]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return failure(caught.value), caught.value


def exposed(error: grpc.RpcError) -> str:
    """Everything a caller sees of a failure: code, details, trailing metadata (the rich status)."""
    call: Any = error  # a grpc.Call too
    trailers = [f"{k}={v!r}" for k, v in call.trailing_metadata() or ()]
    return f"{call.code()} {call.details()} {trailers}"


@pytest.fixture
def token_file(tmp_path: Path, control: SimulatorControl) -> Path:
    """The API token in a file (with the newline editors add), and the simulator accepting it."""
    path = tmp_path / "trengo-token"
    path.write_text(f"  {SECRET}\n")
    path.chmod(0o600)
    control.configure(tokens=[TOKEN, SECRET])
    return path


# --- the API token: files ---------------------------------------------------------------------------


def test_the_api_token_is_read_from_apitokenfile(make_sidecar, control, token_file):
    sidecar = make_sidecar(apiToken=None, apiTokenFile=str(token_file))
    channel, stub = sidecar.stub()
    with channel:
        stub.Identify(identify(), timeout=5)
    assert {r["token"] for r in control.requests()} == {token_fingerprint(f"Bearer {SECRET}")}
    assert len(control.contacts()) == 1


def test_the_api_token_file_can_come_from_the_environment(token_file):
    config = load_config(env={"TRENGO_API_TOKEN_FILE": str(token_file), "TRENGO_CHANNEL_ID": "405980"})
    assert config.api_token.reveal() == SECRET
    assert SECRET not in repr(config) and SECRET not in str(config.api_token)


def test_an_empty_or_missing_token_file_is_a_config_error_naming_the_key(tmp_path):
    from sidecar.errors import ConfigError

    empty = tmp_path / "empty"
    empty.write_text("\n")
    for path in (empty, tmp_path / "missing"):
        with pytest.raises(ConfigError) as caught:
            load_config(env={"TRENGO_API_TOKEN_FILE": str(path), "TRENGO_CHANNEL_ID": "1"})
        assert caught.value.key == "apiTokenFile"


@pytest.mark.parametrize("key", ["apiToken", "authToken"])
@pytest.mark.parametrize("token", ["t\u00f6k-secret", "tok-secret\nX-Injected: 1", "tok-secret\x00"])
def test_a_token_that_cannot_be_a_header_is_a_config_error(key, token):
    from sidecar.config.load import build_config
    from sidecar.errors import ConfigError

    raw = {"apiToken": "t", "channelId": 1, key: token}
    with pytest.raises(ConfigError) as caught:
        build_config(raw)
    assert caught.value.key == key and token not in str(caught.value)


def test_a_token_file_with_two_lines_is_a_config_error(tmp_path):
    from sidecar.errors import ConfigError

    path = tmp_path / "token"
    path.write_text(f"{SECRET}\nsomething-else\n")
    with pytest.raises(ConfigError) as caught:
        load_config(env={"TRENGO_API_TOKEN_FILE": str(path), "TRENGO_CHANNEL_ID": "1"})
    assert caught.value.key == "apiTokenFile" and SECRET not in str(caught.value)


# --- the API token: never in logs, errors, dry runs, metrics ----------------------------------------------


def test_the_api_token_is_in_no_log_record_no_error_and_no_dry_run(make_sidecar, control, token_file, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, httpx and httpcore included, at their most verbose
    sidecar = make_sidecar(apiToken=None, apiTokenFile=str(token_file), maxAttempts=2, logLevel="DEBUG")
    channel, stub = sidecar.stub()
    seen: list[str] = []
    with channel:
        ok = stub.Identify(identify(name="Ann"), timeout=5)
        seen.append(str(ok))
        seen.append(str(stub.Track(track(), timeout=5)))
        for request in (identify("new@example.com", name="New"), identify(name="Ann Lee")):
            dry = pb.IdentifyRequest(traits=request.traits, dry_run=True)
            result = stub.Identify(dry, timeout=5)
            assert result.requests[-1].headers["Authorization"] == "Bearer ****"
            assert SECRET.encode() not in result.SerializeToString()
            seen.append(str(result))
        dry_track = pb.TrackRequest(event="Product Purchased", context=track().context, dry_run=True)
        seen.append(str(stub.Track(dry_track, timeout=5)))
        # Failures of every kind, one of them a Trengo that echoes our Authorization header back.
        control.add_fault(
            method="POST", path="/api/v2/tickets", status=422,
            body={"message": f"invalid request (Authorization: Bearer {SECRET})", "errors": {"h": [SECRET]}},
        )  # fmt: skip
        control.add_fault(method="PUT", status=400, body=f"<pre>Authorization: Bearer {SECRET}</pre>")
        control.add_fault(method="POST", path="/api/v2/channels/", status=503, count=-1)
        by_id = [pb.ExternalId(type="trengoContactId", id=str(ok.contact_id))]
        for call in (
            lambda: stub.Track(pb.TrackRequest(event="Checked Out", external_ids=by_id), timeout=5),
            lambda: stub.Identify(identify(name="Ann Lee"), timeout=5),
            lambda: stub.Identify(identify("third@example.com"), timeout=5),
        ):
            f, error = fails(call)
            seen.append(f"{f.reason} {exposed(error)}")
        reasons = [text.split()[0] for text in seen[-3:]]
        assert reasons == ["TRENGO_REJECTED", "TRENGO_REJECTED", "TRENGO_UNAVAILABLE"]
        assert "Bearer ****" in seen[-3] and "Bearer ****" in seen[-2]  # Trengo's echo, the token masked
    for text in seen:
        assert SECRET not in text
    sidecar_logs = [r for r in caplog.records if r.name == "sidecar" or r.name.startswith("sidecar.")]
    assert sidecar_logs, "no log records were captured"
    for record in caplog.records:
        for formatter in (logs.TextFormatter(), logs.JsonFormatter()):
            assert SECRET not in formatter.format(record), record.name


def test_a_token_trengo_refuses_appears_nowhere(make_sidecar, control, caplog):
    caplog.set_level(logging.DEBUG)
    sidecar = make_sidecar(apiToken="wrong-0d9e-token-value")
    channel, stub = sidecar.stub()
    with channel:
        f, error = fails(lambda: stub.Identify(identify(), timeout=5))
    assert f.reason == "TRENGO_UNAUTHORIZED" and "wrong-0d9e" not in exposed(error)
    assert [r["status"] for r in control.requests()] == [401]
    assert not any("wrong-0d9e" in logs.JsonFormatter().format(r) for r in caplog.records)


def test_the_api_token_is_not_in_the_metrics(make_sidecar, control, token_file):
    sidecar = make_sidecar(apiToken=None, apiTokenFile=str(token_file), authToken=CALLER_TOKEN)
    registry = install_metrics(sidecar.sidecar, process=False)
    channel, stub = sidecar.stub()
    with channel:
        stub.Identify(identify(), timeout=5, metadata=(("authorization", f"Bearer {CALLER_TOKEN}"),))
    text = generate_latest(registry).decode()
    assert "trengo_sidecar_rpcs_total" in text
    assert SECRET not in text and CALLER_TOKEN not in text


def test_check_config_prints_no_token(sim, tmp_path, token_file):
    config = tmp_path / "sidecar.yaml"
    config.write_text(
        yaml.safe_dump(
            {"apiTokenFile": str(token_file), "baseUrl": sim.base_url, "channelId": EMAIL_CHANNEL,
             "authToken": CALLER_TOKEN}
        )
    )  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "--config", str(config), "--check-config"],
        cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"apiTokenFile: {token_file}" in done.stdout and "authToken: '****'" in done.stdout
    assert SECRET not in done.stdout + done.stderr and CALLER_TOKEN not in done.stdout + done.stderr


# --- who may call: loopback, unix socket ----------------------------------------------------------------


def test_the_default_listen_address_is_loopback_only():
    assert Config().listen == "127.0.0.1:50051"
    config = load_config(env={"TRENGO_API_TOKEN": "t", "TRENGO_CHANNEL_ID": "1"})
    assert config.listen.startswith("127.0.0.1:")


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short directory: a unix socket path must fit in 108 bytes, which pytest's tmp_path may not."""
    path = Path(tempfile.mkdtemp(prefix="sc-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_unix_socket_listener_serves_calls(make_sidecar, control, socket_dir):
    path = socket_dir / "sidecar.sock"
    make_sidecar(listen=f"unix://{path}")
    assert path.is_socket()
    with grpc.insecure_channel(f"unix://{path}") as channel:
        result = pb_grpc.TrengoSidecarStub(channel).Identify(identify(), timeout=5)
    assert [c["id"] for c in control.contacts()] == [result.contact_id]


def test_a_unix_socket_listener_reports_no_tcp_port(make_sidecar, socket_dir):
    assert make_sidecar(listen=f"unix://{socket_dir / 'port.sock'}").port == 0


def test_the_cli_listens_on_a_unix_socket_with_the_token_from_the_environment(
    sim, control, socket_dir, token_file
):
    config = socket_dir / "sidecar.yaml"
    config.write_text(yaml.safe_dump({"baseUrl": sim.base_url, "channelId": EMAIL_CHANNEL}))
    path = socket_dir / "cli.sock"
    env = cli_env(TRENGO_API_TOKEN_FILE=str(token_file))
    process = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "--config", str(config), "--listen", f"unix://{path}"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        with grpc.insecure_channel(f"unix://{path}") as channel:
            grpc.channel_ready_future(channel).result(timeout=20)
            result = pb_grpc.TrengoSidecarStub(channel).Identify(identify(), timeout=5)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert [c["id"] for c in control.contacts()] == [result.contact_id]
    assert {r["token"] for r in control.requests()} == {token_fingerprint(f"Bearer {SECRET}")}
    assert "listening" in stderr and SECRET not in stderr


# --- who may call: authToken -----------------------------------------------------------------------------


@pytest.fixture
def guarded(
    make_sidecar: Callable[..., SidecarThread],
) -> Iterator[tuple[grpc.Channel, pb_grpc.TrengoSidecarStub]]:
    sidecar = make_sidecar(authToken=CALLER_TOKEN)
    channel, stub = sidecar.stub()
    with channel:
        yield channel, stub


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer wrong"),),
        (("authorization", CALLER_TOKEN),),  # no scheme
        (("authorization", f"Basic {CALLER_TOKEN}"),),
        (("authorization", f"Bearer {CALLER_TOKEN}x"),),
        (("authorization", f"Bearer {CALLER_TOKEN[:-1]}"),),
        (("x-auth-token", CALLER_TOKEN),),
    ],
    ids=["none", "wrong", "no-scheme", "basic", "longer", "shorter", "other-header"],
)
def test_without_the_auth_token_calls_are_unauthenticated(guarded, control, metadata, caplog):
    _, stub = guarded
    for call in (
        lambda: stub.Identify(identify(), timeout=5, metadata=metadata),
        lambda: stub.Track(track(), timeout=5, metadata=metadata),
        lambda: stub.SendEvent(pb.SendEventRequest(event=struct({"type": "identify"})), metadata=metadata),
    ):
        f, error = fails(call)
        assert f.code == grpc.StatusCode.UNAUTHENTICATED and f.reason == "CALLER_UNAUTHENTICATED", f
        assert CALLER_TOKEN not in exposed(error)
    assert control.requests() == []
    assert not any(CALLER_TOKEN in logs.JsonFormatter().format(r) for r in caplog.records)


def test_the_deliver_stream_needs_the_auth_token_too(guarded, control):
    _, stub = guarded
    request = pb.DeliverRequest(id="1", identify=identify())
    f, _ = fails(lambda: list(stub.Deliver(iter([request]), timeout=5)))
    assert f.code == grpc.StatusCode.UNAUTHENTICATED, f
    answers = list(
        stub.Deliver(iter([request]), timeout=5, metadata=(("authorization", f"Bearer {CALLER_TOKEN}"),))
    )
    assert len(answers) == 1 and len(control.contacts()) == 1


def test_with_the_auth_token_calls_go_through(guarded, control):
    _, stub = guarded
    metadata = (("authorization", f"Bearer {CALLER_TOKEN}"),)
    result = stub.Identify(identify(), timeout=5, metadata=metadata)
    assert [c["id"] for c in control.contacts()] == [result.contact_id]
    # The caller's token is the sidecar's business: it is never passed on to Trengo.
    assert all(CALLER_TOKEN not in str(r["headers"]) for r in control.requests())


def test_health_stays_open_without_the_auth_token(guarded):
    channel, _ = guarded
    answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_the_auth_token_can_come_from_a_file(make_sidecar, control, tmp_path):
    path = tmp_path / "caller-token"
    path.write_text(CALLER_TOKEN + "\n")
    sidecar = make_sidecar(authTokenFile=str(path))
    channel, stub = sidecar.stub()
    with channel:
        f, _ = fails(lambda: stub.Identify(identify(), timeout=5))
        assert f.code == grpc.StatusCode.UNAUTHENTICATED
        stub.Identify(identify(), timeout=5, metadata=(("authorization", f"Bearer {CALLER_TOKEN}"),))
    assert len(control.contacts()) == 1


# --- who may call: TLS and mTLS ---------------------------------------------------------------------------










def secure_stub(
    sidecar: SidecarThread, pki: Path, client: str | None = None, ca: str = "ca"
) -> tuple[grpc.Channel, pb_grpc.TrengoSidecarStub]:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(pki / f"{ca}.crt").read_bytes(),
        private_key=(pki / f"{client}.key").read_bytes() if client else None,
        certificate_chain=(pki / f"{client}.crt").read_bytes() if client else None,
    )
    channel = grpc.secure_channel(sidecar.address, credentials)
    return channel, pb_grpc.TrengoSidecarStub(channel)


def test_tls_serves_callers_that_trust_its_ca_and_no_one_else(make_sidecar, control, pki):
    sidecar = make_sidecar(tlsCertFile=str(pki / "server.crt"), tlsKeyFile=str(pki / "server.key"))
    channel, stub = secure_stub(sidecar, pki)
    with channel:
        result = stub.Identify(identify(), timeout=5)
    assert [c["id"] for c in control.contacts()] == [result.contact_id]
    plaintext, plain_stub = sidecar.stub()
    with plaintext:
        f, _ = fails(lambda: plain_stub.Identify(identify("bob@example.com"), timeout=2))
    assert f.code == grpc.StatusCode.UNAVAILABLE, f
    distrusting, distrusting_stub = secure_stub(sidecar, pki, ca="rogue-ca")
    with distrusting:
        f, _ = fails(lambda: distrusting_stub.Identify(identify("eve@example.com"), timeout=2))
    assert f.code == grpc.StatusCode.UNAVAILABLE, f
    assert len(control.contacts()) == 1  # only the caller that spoke TLS to a trusted server got through


def test_mtls_serves_only_clients_with_a_certificate_from_its_ca(make_sidecar, control, pki):
    sidecar = make_sidecar(
        tlsCertFile=str(pki / "server.crt"),
        tlsKeyFile=str(pki / "server.key"),
        tlsClientCaFile=str(pki / "ca.crt"),
    )
    for client in (None, "rogue"):
        channel, stub = secure_stub(sidecar, pki, client=client)
        with channel, pytest.raises(grpc.RpcError) as caught:
            stub.Identify(identify(), timeout=2)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, client
    assert control.requests() == []
    channel, stub = secure_stub(sidecar, pki, client="client")
    with channel:
        result = stub.Identify(identify(), timeout=5)
    assert [c["id"] for c in control.contacts()] == [result.contact_id]


def test_mtls_and_the_auth_token_together(make_sidecar, control, pki):
    sidecar = make_sidecar(
        tlsCertFile=str(pki / "server.crt"),
        tlsKeyFile=str(pki / "server.key"),
        tlsClientCaFile=str(pki / "ca.crt"),
        authToken=CALLER_TOKEN,
    )
    channel, stub = secure_stub(sidecar, pki, client="client")
    with channel:
        f, _ = fails(lambda: stub.Identify(identify(), timeout=5))
        assert f.code == grpc.StatusCode.UNAUTHENTICATED
        stub.Identify(identify(), timeout=5, metadata=(("authorization", f"Bearer {CALLER_TOKEN}"),))
    assert len(control.contacts()) == 1
