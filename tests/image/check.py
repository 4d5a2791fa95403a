"""`make test-image`, step 4: start the built image's entrypoint and use it as a pod would.

The image runs with `buildah run --isolation chroot` (no container engine here), on the host's
network, as the image's own user, with the Trengo token in a file mounted read-only. The Trengo
simulator runs on the host from the project's venv. Checked: grpc health SERVING, one Track that
the simulator records as a ticket, /metrics counting it, and the token in no output at all (the
sidecar's stdout and stderr, the answer, the scrape). Run as `python -m tests.image.check IMAGE`.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
from google.protobuf import json_format, struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from trengo.sidecar.v1 import sidecar_pb2 as pb
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

CHANNEL = 405980  # the simulator's e-mail channel
EMAIL = "image-check@example.com"
TOKEN_PATH = "/run/secrets/trengo/token"
SERVICE = "trengo.sidecar.v1.TrengoSidecar"
START_SECONDS = 60.0  # a cold start in a chroot on a loaded 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def say(message: str) -> None:
    print(f"test-image: {message}", flush=True)


def fail(message: str, *logs: Path) -> None:
    for log in logs:
        if log.exists():
            print(f"--- {log.name}:\n{log.read_text(errors='replace')[-4000:]}", file=sys.stderr)
    raise SystemExit(f"test-image: FAILED: {message}")


def buildah(*args: str) -> str:
    return subprocess.run(["buildah", *args], check=True, capture_output=True, text=True).stdout.strip()


def start_simulator(token: str, log: Path) -> tuple[subprocess.Popen[str], str]:
    sim = subprocess.Popen(
        [sys.executable, "-m", "sidecar.simulator", "--port", "0", "--token", token],
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )
    assert sim.stdout is not None
    line = sim.stdout.readline()  # "trengo-sim listening on http://HOST:PORT/api/v2"
    if "listening on" not in line:
        sim.kill()
        fail(f"the simulator did not start: {line!r}", log)
    return sim, line.rsplit(" ", 1)[1].strip()


def start_image(
    image: str, env: dict[str, str], secrets_dir: Path, out: Path, err: Path
) -> subprocess.Popen[bytes]:
    """The image's ENTRYPOINT + CMD, as its USER, in a new working container (removed by the caller)."""
    config = json.loads(buildah("inspect", "--type", "image", image))["OCIv1"]["config"]
    command = (config.get("Entrypoint") or []) + (config.get("Cmd") or [])
    user = config.get("User", "")
    say(f"image: entrypoint {command}, user {user!r}")
    if user.split(":")[0] != "10001":
        fail(f"the image runs as {user!r}, not 10001")
    container = buildah("from", "--pull=never", "--quiet", image)
    flags = ["--isolation", "chroot", "--network", "host", "--user", user]
    flags += ["--volume", f"{secrets_dir}:/run/secrets/trengo:ro"]
    for key, value in env.items():
        flags += ["--env", f"{key}={value}"]
    proc = subprocess.Popen(
        ["buildah", "run", *flags, container, "--", *command],
        stdout=out.open("wb"),
        stderr=err.open("wb"),
        start_new_session=True,  # its own process group: stopped with one signal at the end
    )
    proc.container = container  # type: ignore[attr-defined]
    return proc


def sidecar_pids(leader: int) -> list[int]:
    """The processes of the run's group that execute the sidecar (not buildah itself)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != leader:
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except (OSError, ProcessLookupError):
            continue
        if b"trengo-sidecar" in cmdline and b"buildah" not in cmdline:
            found.append(int(entry.name))
    return found


def uids(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return line.split(":", 1)[1].strip()
    return ""


def health(address: str, service: str) -> int:
    try:
        with grpc.insecure_channel(address) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2
            )
            return int(answer.status)
    except grpc.RpcError:
        return -1


def wait_serving(address: str, proc: subprocess.Popen[bytes], logs: tuple[Path, ...]) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            fail(f"the image's process ended with {proc.returncode}", *logs)
        if health(address, "") == health_pb2.HealthCheckResponse.SERVING:
            return
        time.sleep(0.5)
    fail(f"health did not answer SERVING within {START_SECONDS:.0f} s", *logs)


def track(address: str) -> pb.DeliveryResult:
    props = struct_pb2.Struct()
    props.update({"revenue": 2000})
    context = struct_pb2.Struct()
    context.update({"traits": {"email": EMAIL}})
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.TrengoSidecarStub(channel)
        request = pb.TrackRequest(user_id="u-image", event="Added to cart", properties=props, context=context)
        result: pb.DeliveryResult = stub.Track(request, timeout=30)
        return result


def seed_contact(sim_url: str) -> None:
    """The contact a Track finds, as an earlier Identify would have left it in Trengo."""
    root = sim_url.removesuffix("/api/v2")
    body = {"name": "Image Check", "identifier": EMAIL, "channel_id": CHANNEL}
    httpx.post(f"{root}/_sim/contacts", json=body, timeout=5, trust_env=False).raise_for_status()


def recorded(sim_url: str) -> list[dict[str, Any]]:
    root = sim_url.removesuffix("/api/v2")
    answer: list[dict[str, Any]] = httpx.get(f"{root}/_sim/requests", timeout=5, trust_env=False).json()[
        "requests"
    ]
    return answer


def check(image: str) -> None:
    token = "img-" + secrets.token_hex(16)
    grpc_port, health_port, metrics_port = free_port(), free_port(), free_port()
    probes = f"127.0.0.1:{health_port}"  # healthListen: what kubelet's probes dial
    address = f"127.0.0.1:{grpc_port}"
    with tempfile.TemporaryDirectory(prefix="trengo-image-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        secrets_dir = work / "secrets"
        secrets_dir.mkdir()
        (secrets_dir / "token").write_text(token + "\n")
        # Readable by the image's user 10001 and nobody else, as a Secret volume with fsGroup would be.
        os.chown(secrets_dir / "token", 10001, 10001)
        os.chmod(secrets_dir / "token", 0o400)
        out, err, sim_log = work / "stdout", work / "stderr", work / "simulator.log"
        logs = (out, err, sim_log)
        sim, sim_url = start_simulator(token, sim_log)
        env = {
            "TRENGO_API_TOKEN_FILE": TOKEN_PATH,
            "TRENGO_CHANNEL_ID": str(CHANNEL),
            "TRENGO_BASE_URL": sim_url,
            "TRENGO_EVENT_TEMPLATE_MAP": json.dumps(
                [{"from": "Added to cart", "to": "Cart worth {{ revenue }}"}]
            ),
            "TRENGO_RATE_LIMIT_PER_MINUTE": "0",
            # The image's own defaults are 127.0.0.1:50051, 0.0.0.0:50052 and :9090; a free port each
            # here, so a test run never collides with anything else on the host network.
            "SIDECAR_LISTEN": address,
            "SIDECAR_HEALTH_LISTEN": probes,
            "SIDECAR_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
        }
        proc = start_image(image, env, secrets_dir, out, err)
        try:
            wait_serving(address, proc, logs)
            say(f"health: SERVING on {address} ('' and {SERVICE}: {health(address, SERVICE)})")
            if health(address, SERVICE) != health_pb2.HealthCheckResponse.SERVING:
                fail(f"{SERVICE} is not SERVING", *logs)
            pod_level = {name: health(probes, name) for name in ("liveness", "readiness")}
            if set(pod_level.values()) != {health_pb2.HealthCheckResponse.SERVING}:
                fail(f"the probes' names on healthListen {probes}: {pod_level}", *logs)
            say(f"probes: liveness and readiness SERVING on healthListen {probes}")
            pids = sidecar_pids(proc.pid)
            if not pids or any(uids(pid).split()[0] != "10001" for pid in pids):
                fail(f"the sidecar does not run as uid 10001: {[(p, uids(p)) for p in pids]}", *logs)
            say(f"process: pid {pids[0]} runs as uid {uids(pids[0]).split()[0]}")

            seed_contact(sim_url)
            try:
                result = track(address)
            except grpc.RpcError as exc:
                fail(f"Track failed: {exc.code()} {exc.details()}", *logs)  # type: ignore[attr-defined]
            answer = json_format.MessageToJson(result)
            tickets = [
                r for r in recorded(sim_url) if r["method"] == "POST" and r["path"] == "/api/v2/tickets"
            ]
            if result.ticket_id == 0 or len(tickets) != 1:
                fail(f"Track did not open one ticket: {answer}; simulator saw {len(tickets)}", *logs)
            say(
                f"track: {pb.Action.Name(result.action)} ticket {result.ticket_id}, recorded by the simulator"
            )

            scrape = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5, trust_env=False).text
            wanted = 'trengo_sidecar_rpcs_total{code="OK",method="Track"} 1.0'
            if wanted not in scrape:
                fail(f"/metrics lacks {wanted!r}", *logs)
            say(f"metrics: {wanted}")
        finally:
            # SIGTERM to the sidecar itself, as the kubelet sends it; buildah run ends with its status.
            for pid in sidecar_pids(proc.pid) or [proc.pid]:
                os.kill(pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            subprocess.run(["buildah", "rm", proc.container], capture_output=True)  # type: ignore[attr-defined]
            sim.terminate()
            sim.wait(10)
        if proc.returncode != 0:
            fail(f"the sidecar exited {proc.returncode} after SIGTERM, not 0", *logs)
        say("stopped: exit code 0 after SIGTERM")
        outputs = {"stdout": out.read_bytes(), "stderr": err.read_bytes(), "answer": answer.encode(),
                   "metrics": scrape.encode()}  # fmt: skip
        leaked = [
            name for name, text in outputs.items() if token.encode() in text or token[4:20].encode() in text
        ]
        if leaked:
            fail(f"the token appears in {leaked}", *logs)
        if not outputs["stderr"] and not outputs["stdout"]:
            fail("the sidecar wrote no log at all: the token check would prove nothing", *logs)
        say(f"secrets: the token is in none of {sorted(outputs)} ({sum(map(len, outputs.values()))} bytes)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("image")
    check(parser.parse_args().image)


if __name__ == "__main__":
    main()
