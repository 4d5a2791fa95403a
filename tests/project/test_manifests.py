"""Static checks of the Dockerfile and the Kubernetes example in deploy/kubernetes/.

No Docker engine, no cluster, no network: the manifests are validated against the
Kubernetes OpenAPI schemas that the kubernetes-validate package bundles (strict mode,
so a misspelt field is an error), and everything the pod relies on is cross-checked
against the code it runs: the config file loads with sidecar.config, the flags parse
with the CLI's parser, the env names are config keys, the probes hit the gRPC health
service on the port the sidecar listens on. The Dockerfile is parsed and held to
python:3.11-slim, a non-root user, no baked-in secret and the Makefile's protoc command.
"""

from __future__ import annotations

import base64
import json
import posixpath
import re
import shlex
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from sidecar.__main__ import parse_args
from sidecar.api.readiness import LIVENESS, PROBES, READINESS
from sidecar.config.load import ENV_VARS, build_config, load_config
from sidecar.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "deploy" / "kubernetes"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
MAKEFILE = ROOT / "Makefile"

SIDECAR = "trengo-sidecar"
GRPC_PORT = 50051
HEALTH_PORT = 50052
PROBE_SERVICES = PROBES  # never "" nor trengo.sidecar.v1.TrengoSidecar: both turn NOT_SERVING on a bad token
METRICS_PORT = 9090
RUNTIME_UID = 10001
BASE_IMAGE = "python:3.11-slim"
# Native sidecars (initContainers with restartPolicy: Always) are on by default from 1.29.
K8S_VERSIONS = ("1.29", kubernetes_validate.latest_version())
PLACEHOLDER = re.compile(r"REPLACE_WITH_[A-Z0-9_]+")
# What a real credential looks like: a JWT, or a long unbroken run of token characters.
REAL_LOOKING = re.compile(r"eyJ[A-Za-z0-9_-]{8,}|[A-Za-z0-9+=_-]{40,}")
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW|API_?KEY|PRIVATE|CREDENTIAL", re.IGNORECASE)
SECRET_FILE = re.compile(
    r"(^|/)(\.env|[^/]*\.(pem|key|p12|pfx)|[^/]*token[^/]*|\.git|\.venv)(/|$)", re.IGNORECASE
)


# --------------------------------------------------------------------------- loading


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(K8S_DIR.glob("*.yaml")) + sorted(K8S_DIR.glob("*.yml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                found.append((path.name, doc))
    return found


MANIFESTS = _manifests()


def _objects(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in MANIFESTS if doc.get("kind") == kind]


def _one(kind: str) -> dict[str, Any]:
    objects = _objects(kind)
    assert len(objects) == 1, f"expected exactly one {kind} in {K8S_DIR}, found {len(objects)}"
    return objects[0]


def _named(kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in _objects(kind) if o["metadata"]["name"] == name]
    assert matches, f"{kind} {name!r} is referenced but not defined in {K8S_DIR}"
    return matches[0]


def _pod() -> dict[str, Any]:
    return _one("Deployment")["spec"]["template"]


def _containers() -> list[dict[str, Any]]:
    spec = _pod()["spec"]
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def _sidecar() -> dict[str, Any]:
    found = [c for c in _containers() if c["name"] == SIDECAR]
    assert len(found) == 1, f"expected one container named {SIDECAR}"
    return found[0]


def _app() -> dict[str, Any]:
    apps = [c for c in _pod()["spec"]["containers"] if c["name"] != SIDECAR]
    assert len(apps) == 1, "expected one app container beside the sidecar"
    return apps[0]


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def _port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _mount_for(container: dict[str, Any], file: str) -> tuple[dict[str, Any], str]:
    """The pod volume a file path in the container lives on, and the file's path inside it."""
    for mount in container.get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        if file.startswith(prefix):
            volume = next(v for v in _pod()["spec"]["volumes"] if v["name"] == mount["name"])
            return volume, file[len(prefix) :]
    raise AssertionError(f"{file} is not on any volume mounted into {container['name']}")


def _volume_key(volume: dict[str, Any], inner_path: str) -> str:
    """The ConfigMap/Secret key a file on a configMap/secret volume comes from."""
    source = volume.get("configMap") or volume.get("secret") or {}
    for item in source.get("items", []):
        if item["path"] == inner_path:
            return str(item["key"])
    assert "items" not in source, f"volume {volume['name']} has no item at {inner_path}"
    return inner_path


def _sidecar_args() -> Any:
    try:
        return parse_args(_sidecar().get("args", []))
    except SystemExit:
        pytest.fail(f"the {SIDECAR} container's args don't parse with sidecar.__main__.parse_args")


def _configmap_text() -> tuple[dict[str, Any], str]:
    """The ConfigMap and the config file text behind the sidecar's --config."""
    volume, inner = _mount_for(_sidecar(), _sidecar_args().config)
    assert "configMap" in volume, "--config must point into a mounted ConfigMap"
    configmap = _named("ConfigMap", volume["configMap"]["name"])
    key = _volume_key(volume, inner)
    assert key in configmap.get("data", {}), f"ConfigMap {configmap['metadata']['name']} has no key {key}"
    return configmap, configmap["data"][key]


def _secret_values(secret: dict[str, Any]) -> dict[str, str]:
    values = {k: str(v) for k, v in secret.get("stringData", {}).items()}
    values.update({k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()})
    return values


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test: the schemas must be local."""

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("network access during an offline manifest check")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


# --------------------------------------------------------------------------- schemas


def test_the_example_is_all_there() -> None:
    kinds = sorted(doc["kind"] for _, doc in MANIFESTS)
    assert kinds == ["ConfigMap", "Deployment", "NetworkPolicy", "Secret", "Secret"], kinds
    assert (K8S_DIR / "README.md").is_file()


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    ("doc"), [doc for _, doc in MANIFESTS], ids=[f"{file}:{doc.get('kind')}" for file, doc in MANIFESTS]
)
def test_manifest_matches_the_kubernetes_schema(doc: dict[str, Any], version: str, no_network: None) -> None:
    problem = ""
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        problem = f"{doc['kind']}/{doc['metadata']['name']} (k8s {version}): {where}: {exc.message}"
    except kubernetes_validate.SchemaNotFoundError as exc:
        problem = exc.message
    if problem:  # outside the except: a one-line failure, not a schema dump
        pytest.fail(problem)


# --------------------------------------------------------------------------- config


def test_configmap_config_builds(tmp_path: Path) -> None:
    _, text = _configmap_text()
    raw = yaml.safe_load(text)
    assert isinstance(raw, dict)
    assert not {"apiToken", "apiTokenFile", "authToken"} & set(raw), "tokens belong in the Secret"
    token = tmp_path / "token"
    token.write_text("dummy-token\n", encoding="utf-8")
    config = build_config({**raw, "apiTokenFile": str(token)})
    assert config.api_token.reveal() == "dummy-token"
    assert config.channel_id > 0
    assert config.event_templates, "the example should map at least one event (eventTemplateMap)"


def test_the_sidecar_container_starts_with_a_valid_config(tmp_path: Path) -> None:
    """What main() would load in the pod: the ConfigMap file, the container env, its flags."""
    sidecar = _sidecar()
    args = _sidecar_args()
    _, text = _configmap_text()
    config_file = tmp_path / "config.yaml"
    config_file.write_text(text, encoding="utf-8")
    env = {**_dockerfile_env(), **_env(sidecar)}  # the image's ENV, then the container's
    token_path = env["TRENGO_API_TOKEN_FILE"]
    volume, inner = _mount_for(sidecar, token_path)
    assert "secret" in volume, "TRENGO_API_TOKEN_FILE must point into a mounted Secret"
    secret = _named("Secret", volume["secret"]["secretName"])
    assert _volume_key(volume, inner) in _secret_values(secret)
    token = tmp_path / "token"
    token.write_text("dummy-token", encoding="utf-8")
    env["TRENGO_API_TOKEN_FILE"] = str(token)
    # Same overrides as sidecar.__main__.main.
    overrides = {
        "listen": args.listen,
        "metricsListen": args.metrics_listen,
        "healthListen": args.health_listen,
        "logFormat": args.log_format,
        "logLevel": args.log_level,
    }
    config = load_config(config_file, env=env, overrides=overrides)

    host, port = config.listen.rsplit(":", 1)
    assert (host, int(port)) == ("127.0.0.1", GRPC_PORT), "the API stays on the pod's loopback"
    assert config.health_listen == f"0.0.0.0:{HEALTH_PORT}", "kubelet's gRPC probes dial the pod IP"
    assert _port_of(config.metrics_listen) == METRICS_PORT
    assert config.metrics_listen.startswith("0.0.0.0:"), "Prometheus scrapes the pod IP"
    assert config.log_format == "json"
    grace = _pod()["spec"]["terminationGracePeriodSeconds"]
    assert grace > config.shutdown_grace_seconds, "the pod must outlive the sidecar's drain"


def test_env_and_flags_exist_in_the_code() -> None:
    sidecar = _sidecar()
    for name in _env(sidecar):
        assert name in ENV_VARS, f"{name} is not a variable sidecar.config reads"
    for item in sidecar.get("env", []):
        assert item["name"] not in ("TRENGO_API_TOKEN", "SIDECAR_AUTH_TOKEN"), (
            "pass tokens as files (*_FILE), not as env values"
        )
    args = _sidecar_args()
    assert args.config and args.listen and args.metrics_listen
    assert not args.check_config
    app_env = _env(_app())
    assert app_env.get("TRENGO_SIDECAR_ADDR") == f"127.0.0.1:{_port_of(args.listen)}"


# --------------------------------------------------------------------------- pod


def test_probes_are_grpc_health_on_the_health_listen_port() -> None:
    sidecar = _sidecar()
    assert _port_of(_sidecar_args().listen) == GRPC_PORT
    listen_port = _port_of(_sidecar_args().health_listen)
    assert listen_port == HEALTH_PORT
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = sidecar.get(kind)
        assert probe, f"{SIDECAR} needs a {kind}"
        handlers = {"grpc", "httpGet", "tcpSocket", "exec"} & set(probe)
        assert handlers == {"grpc"}, f"{kind} must be a native gRPC probe, not {handlers}"
        assert probe["grpc"]["port"] == listen_port, f"{kind} probes port {probe['grpc']['port']}"
        assert probe["grpc"].get("service", "") in PROBE_SERVICES, f"{kind}: not a process-level health name"
    ports = {p["containerPort"]: p.get("name") for p in sidecar["ports"]}
    assert ports == {HEALTH_PORT: "grpc-health", METRICS_PORT: "metrics"}


def test_sidecar_is_a_native_sidecar() -> None:
    """Started (and probed) before the app, stopped after it: see deploy/kubernetes/README.md."""
    init = _pod()["spec"].get("initContainers", [])
    assert [c["name"] for c in init if c.get("restartPolicy") == "Always"] == [SIDECAR]


def test_containers_are_locked_down() -> None:
    pod = _pod()["spec"]
    assert pod.get("automountServiceAccountToken") is False
    assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    for container in _containers():
        ctx = container.get("securityContext", {})
        name = container["name"]
        assert ctx.get("runAsNonRoot", pod["securityContext"].get("runAsNonRoot")) is True, name
        assert ctx.get("readOnlyRootFilesystem") is True, name
        assert ctx.get("allowPrivilegeEscalation") is False, name
        assert ctx.get("privileged") is not True, name
        assert "ALL" in ctx.get("capabilities", {}).get("drop", []), name
        assert not ctx.get("capabilities", {}).get("add"), name
    assert _sidecar()["securityContext"]["runAsUser"] == RUNTIME_UID == _dockerfile_uid()


def test_the_token_volume_is_readable_by_the_sidecar_only() -> None:
    volume, _ = _mount_for(_sidecar(), _env(_sidecar())["TRENGO_API_TOKEN_FILE"])
    assert volume["secret"].get("defaultMode") in (0o400, 0o440)
    # 0440 and fsGroup: the group the kubelet gives the files, so uid 10001 can read them.
    assert _pod()["spec"]["securityContext"].get("fsGroup") == RUNTIME_UID
    mounted_in = [
        c["name"]
        for c in _containers()
        if any(m["name"] == volume["name"] for m in c.get("volumeMounts", []))
    ]
    assert mounted_in == [SIDECAR]
    for container in _containers():
        for mount in container.get("volumeMounts", []):
            assert mount.get("readOnly") is True, f"{container['name']}: {mount['name']} must be read-only"


_UNITS = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def _quantity(value: str | int) -> float:
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match and match.group(2) in _UNITS, f"unexpected quantity {value!r}"
    return float(match.group(1)) * _UNITS[match.group(2)]


def test_resources_have_requests_and_limits() -> None:
    for container in _containers():
        resources = container.get("resources", {})
        for resource in ("cpu", "memory"):
            request = resources.get("requests", {}).get(resource)
            limit = resources.get("limits", {}).get(resource)
            assert request and limit, f"{container['name']}: {resource} request and limit"
            assert _quantity(request) <= _quantity(limit), f"{container['name']}: {resource}"


def test_prometheus_scrapes_the_metrics_port() -> None:
    annotations = _pod()["metadata"]["annotations"]
    metrics_port = _port_of(_sidecar_args().metrics_listen)
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(metrics_port) == str(METRICS_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_network_policy_keeps_the_grpc_port_pod_private() -> None:
    policy = _one("NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= _pod()["metadata"]["labels"].items()
    assert "Ingress" in policy["spec"]["policyTypes"]
    allowed = [p.get("port") for rule in policy["spec"]["ingress"] for p in rule.get("ports", [])]
    assert allowed and None not in allowed, "every ingress rule must name its ports"
    assert GRPC_PORT not in allowed and "grpc" not in allowed
    assert METRICS_PORT in allowed
    ingress = policy["spec"]["ingress"]
    [metrics] = [rule for rule in ingress if METRICS_PORT in [p["port"] for p in rule["ports"]]]
    assert metrics.get("from"), "the metrics port is for Prometheus alone, not every pod"
    for peer in metrics["from"]:
        assert peer.get("podSelector", {}).get("matchLabels"), "narrowed to Prometheus' pods"
        assert peer.get("namespaceSelector", {}).get("matchLabels"), "narrowed to Prometheus' namespace"


def test_the_secret_is_a_placeholder() -> None:
    secrets = _objects("Secret")
    assert secrets
    for secret in secrets:
        for key, value in _secret_values(secret).items():
            assert PLACEHOLDER.fullmatch(value.strip()), f"Secret {key}: use a REPLACE_WITH_... placeholder"


def test_no_real_looking_credential_is_committed() -> None:
    for path in [DOCKERFILE, DOCKERIGNORE, *sorted(K8S_DIR.iterdir())]:
        found = REAL_LOOKING.findall(path.read_text(encoding="utf-8"))
        assert not found, f"{path.name} holds something that looks like a credential: {found}"


# --------------------------------------------------------------------------- Dockerfile


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        instruction, _, args = whole.partition(" ")
        result.append((instruction.upper(), args.strip()))
    assert not pending, "the Dockerfile ends in a continuation line"
    return result


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in _instructions(DOCKERFILE.read_text(encoding="utf-8")):
        if instruction[0] == "FROM":
            stages.append([])
        assert stages, "the Dockerfile must start with FROM"
        stages[-1].append(instruction)
    return stages


def _last(stage: list[tuple[str, str]], instruction: str) -> str:
    values = [args for name, args in stage if name == instruction]
    assert values, f"the runtime stage has no {instruction}"
    return values[-1]


def _dockerfile_uid() -> int:
    user = _last(_stages()[-1], "USER").split(":")[0]
    assert user.isdigit(), "USER must be numeric for Kubernetes' runAsNonRoot check"
    return int(user)


def _dockerfile_env() -> dict[str, str]:
    """The runtime stage's ENV, as the container starts with it (``KEY=value`` form only)."""
    env: dict[str, str] = {}
    for args in (args for name, args in _stages()[-1] if name == "ENV"):
        for item in shlex.split(args):
            key, equals, value = item.partition("=")
            assert equals, f"ENV {args}: write ENV KEY=value (the legacy ENV KEY value form is ambiguous)"
            env[key] = value
    return env


def _commands(run: str) -> list[list[str]]:
    """A RUN line's shell commands (split on && and ;) as token lists."""
    return [shlex.split(part) for part in re.split(r"&&|;", run) if part.strip()]


def test_dockerfile_is_multi_stage_on_python_slim() -> None:
    stages = _stages()
    assert len(stages) >= 2, "a builder stage and a runtime stage"
    for stage in stages:
        image = stage[0][1].split()[0]
        assert image == BASE_IMAGE, f"FROM {image}: use {BASE_IMAGE}"
    builder = stages[0][0][1].split()
    assert len(builder) == 3 and builder[1].upper() == "AS"
    runtime = stages[-1]
    copies = [args for name, args in runtime if name in ("COPY", "ADD")]
    assert copies == [f"--from={builder[2]} /opt/venv /opt/venv"], "the runtime stage copies the venv only"
    assert not any(name == "RUN" and "pip" in args for name, args in runtime)


def test_dockerfile_runs_as_non_root() -> None:
    assert _dockerfile_uid() == RUNTIME_UID != 0


def test_dockerfile_entrypoint_ports_and_cmd() -> None:
    runtime = _stages()[-1]
    assert set(_last(runtime, "EXPOSE").split()) == {str(HEALTH_PORT), str(METRICS_PORT)}
    assert json.loads(_last(runtime, "ENTRYPOINT")) == [SIDECAR]
    # No flags in CMD: flags beat the environment and the config file, so `docker run -e SIDECAR_...`
    # and a --config file's listen/logFormat would be silently ignored. The defaults are ENV instead.
    assert json.loads(_last(runtime, "CMD")) == []


def test_dockerfile_env_keeps_the_api_on_loopback_and_logs_json() -> None:
    """The image's defaults are environment variables sidecar.config reads, and `docker run -e` wins."""
    env = _dockerfile_env()
    image = {name: value for name, value in env.items() if name.startswith(("SIDECAR_", "TRENGO_"))}
    assert image == {
        "SIDECAR_LISTEN": f"127.0.0.1:{GRPC_PORT}",
        "SIDECAR_HEALTH_LISTEN": f"0.0.0.0:{HEALTH_PORT}",
        "SIDECAR_METRICS_LISTEN": f"0.0.0.0:{METRICS_PORT}",
        "SIDECAR_LOG_FORMAT": "json",
    }
    for name in image:
        assert name in ENV_VARS, f"ENV {name} is not a variable sidecar.config reads"
    needed = {"TRENGO_API_TOKEN": "t", "TRENGO_CHANNEL_ID": "1"}
    config = load_config(env={**env, **needed})
    assert (config.listen, config.health_listen, config.metrics_listen, config.log_format) == (
        f"127.0.0.1:{GRPC_PORT}",
        f"0.0.0.0:{HEALTH_PORT}",
        f"0.0.0.0:{METRICS_PORT}",
        "json",
    )
    # docker run -e SIDECAR_LISTEN=... replaces the image's value; flags after the image name beat both.
    ran = load_config(env={**env, **needed, "SIDECAR_LISTEN": "127.0.0.1:6000"})
    assert ran.listen == "127.0.0.1:6000" and ran.log_format == "json"
    flagged = load_config(env={**env, **needed}, overrides={"listen": "127.0.0.1:7000"})
    assert flagged.listen == "127.0.0.1:7000"
    # Publishing the API without caller auth is refused, naming listen.
    with pytest.raises(ConfigError) as caught:
        load_config(env={**env, **needed, "SIDECAR_LISTEN": "0.0.0.0:6000"})
    assert caught.value.key == "listen" and "authToken" in str(caught.value)


def test_dockerfile_bakes_in_no_secret_and_downloads_nothing() -> None:
    for stage in _stages():
        for name, args in stage:
            assert name != "ADD", "use COPY (ADD can fetch URLs and unpack archives)"
            if name in ("ENV", "ARG"):
                keys = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", args) or [args.split()[0]]
                for key in keys:
                    assert not SECRET_NAME.search(key), f"{name} {key}: no secrets in the image"
            if name == "COPY" and not args.startswith("--from="):
                for source in shlex.split(args)[:-1]:
                    assert not SECRET_FILE.search(source), f"COPY {source}: no secrets in the image"
            if name == "RUN":
                assert not re.search(r"grpc_health_probe|\bcurl\b|\bwget\b", args), f"RUN {args}"
            assert "TRENGO_API_TOKEN" not in args and "SIDECAR_AUTH_TOKEN" not in args


def test_dockerignore_is_an_allowlist_of_what_the_build_copies() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert patterns[0] == "*", ".dockerignore should exclude everything, then allow what the build needs"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for name in allowed:
        assert not SECRET_FILE.search(name) and name != "trengo", f"!{name}: must not enter the context"
    for stage in _stages():
        for name, args in stage:
            if name == "COPY" and not args.startswith("--from="):
                for source in shlex.split(args)[:-1]:
                    assert source.rstrip("/") in allowed, f"COPY {source} is not allowed by .dockerignore"


def test_the_simulator_stays_out_of_the_image() -> None:
    """A stand-in for Trengo has no business in production: .dockerignore keeps it out of the context
    (make run's demo runs it from the source tree), and nothing the image runs imports it."""
    patterns = [line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()]
    assert "sidecar/simulator/" in patterns
    assert patterns.index("sidecar/simulator/") > patterns.index("!sidecar/"), "after the allow, to win"
    runtime = [p for p in (ROOT / "sidecar").rglob("*.py") if "simulator" not in p.parts]
    for path in runtime:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"^\s*(from|import) (sidecar\.|\.+)simulator", text, re.M), path


def _make_variables(text: str) -> dict[str, str]:
    variables = {}
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*(?::=|\?=|=)\s*(.*?)\s*$", line)
        if match:
            variables[match.group(1)] = match.group(2)
    return variables


def _expand(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\((\w+)\)", lambda m: _expand(variables[m.group(1)], variables), text)


def _recipe(text: str, target: str) -> Iterator[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    pending = ""
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        yield (pending + line).strip()
        pending = ""


def test_dockerfile_generates_stubs_like_make_proto() -> None:
    runs = [args for stage in _stages()[:-1] for name, args in stage if name == "RUN"]
    commands = [command for run in runs for command in _commands(run)]
    protoc = [c for c in commands if c[1:3] == ["-m", "grpc_tools.protoc"]]
    assert len(protoc) == 1, "the builder runs grpc_tools.protoc once"
    makefile = MAKEFILE.read_text(encoding="utf-8")
    variables = {**_make_variables(makefile), "BIN": posixpath.dirname(protoc[0][0])}
    recipe = [shlex.split(_expand(line, variables)) for line in _recipe(makefile, "proto")]
    assert any(c[1:3] == ["-m", "grpc_tools.protoc"] for c in recipe), "no protoc in `make proto`?"
    for command in recipe:
        assert command in commands, f"`make proto` runs {shlex.join(command)}; the Dockerfile doesn't"
    # The generators themselves, and the runtime: the versions uv.lock pins, as `make install` has them.
    installs = [c for c in commands if "install" in c and c[0].endswith("pip")]
    assert all("--require-hashes" in c or "--no-deps" in c for c in installs), installs
    exports = [c for c in commands if c[1:2] == ["export"] and c[0].endswith("uv")]
    assert [c for c in exports if "--frozen" in c and "generate" in c]
    assert [c for c in exports if "--frozen" in c and "--no-dev" in c]


def test_the_store_url_comes_from_a_secret() -> None:
    [store] = [e for e in _sidecar().get("env", []) if e["name"] == "SIDECAR_STORE"]
    ref = store["valueFrom"]["secretKeyRef"]
    assert "value" not in store, "the store URL holds a password: it belongs in a Secret"
    assert ref["key"] in _secret_values(_named("Secret", ref["name"]))


def test_probes_read_the_process_level_names_that_never_depend_on_trengo_or_the_store() -> None:
    """A revoked token or a store outage turns trengo.sidecar.v1.TrengoSidecar NOT_SERVING; the pod stays
    in service and is not restarted (tests/e2e/test_probes.py shows the names stay SERVING then)."""
    wanted = {"startupProbe": READINESS, "readinessProbe": READINESS, "livenessProbe": LIVENESS}
    for kind, service in wanted.items():
        assert _sidecar()[kind]["grpc"].get("service") == service, kind
