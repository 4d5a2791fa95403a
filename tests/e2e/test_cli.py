"""The CLIs as an operator runs them: real ``trengo-sidecar`` and ``trengo-sim`` processes (issue 10).

Config mistakes, a metrics port another process holds, TLS files that are not PEM, --check-config,
--version, --help, and the warnings at start. Each runs ``python -m sidecar`` in a subprocess with an
environment cleaned of the developer's TRENGO_*/SIDECAR_* variables (cli_env).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from sidecar.config.load import ENV_ALIASES, ENV_VARS
from sidecar.simulator import SimulatorThread
from sidecar.simulator.control import ControlApi
from sidecar.simulator.state import SimState
from tests.support.harness import EMAIL_CHANNEL, TEMPLATES, TOKEN, cli_env, free_port, pieces

ROOT = Path(__file__).resolve().parents[2]
LONG_TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJzaWRlY2FyIn0"
# Python's own words for the mess an unclean exit leaves (issue 10, item 5)
UNCLEAN = ("Event loop is closed", "was never awaited", "Traceback", "Exception ignored")


def run(*args: str, timeout: float = 30, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        cwd=ROOT, env=cli_env(**env), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def write_yaml(path: Path, data: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


# --- item 2: a broken config file never shows the token --------------------------------------------------


@pytest.mark.parametrize("token", [LONG_TOKEN, "Zq7"])
def test_an_unterminated_token_in_yaml_shows_its_position_and_no_part_of_it(tmp_path: Path, token: str):
    config = tmp_path / "sidecar.yaml"
    config.write_text(f'channelId: {EMAIL_CHANNEL}\napiToken: "{token}\nlogFormat: text\n')
    done = run("--config", str(config))
    assert done.returncode == 2, done.stderr
    assert f"{config}:" in done.stderr and "line 2, column 11" in done.stderr, done.stderr
    assert "config --config" not in done.stderr
    output = done.stdout + done.stderr
    assert not [piece for piece in pieces(token) if piece in output], done.stderr


def test_a_broken_json_config_shows_its_position_and_no_value(tmp_path: Path):
    config = tmp_path / "sidecar.json"
    config.write_text('{"channelId": 1,\n "apiToken": "Zq7-secret\n}')
    done = run("--config", str(config))
    assert done.returncode == 2 and f"{config}:2:" in done.stderr and "JSON" in done.stderr, done.stderr
    assert "Zq7" not in done.stdout + done.stderr


def test_an_unquoted_template_in_yaml_says_to_quote_it(tmp_path: Path):
    config = tmp_path / "sidecar.yaml"
    config.write_text("apiToken: t\nchannelId: 1\neventTemplateMap:\n  - from: A\n    to: {{ event }}\n")
    done = run("--config", str(config), "--check-config")
    assert done.returncode == 2 and "found unhashable key" in done.stderr, done.stderr
    assert "quote templates in YAML" in done.stderr


# --- item 9: every problem at once; env values named by their variable ----------------------------------


def test_with_no_config_both_required_keys_are_named_at_once():
    done = run("--check-config")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "trengo-sidecar: bad config (2 problems):",
        "  channelId: is required: the id of the Trengo channel (a positive integer)",
        "  apiToken: is required (or apiTokenFile / TRENGO_API_TOKEN_FILE)",
    ]


def test_a_negative_channel_id_names_the_variable_and_says_positive_integer():
    done = run("--check-config", TRENGO_CHANNEL_ID="-1", TRENGO_API_TOKEN="t")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "trengo-sidecar: bad config: channelId (env TRENGO_CHANNEL_ID): "
        "must be a positive integer (the id of the Trengo channel)"
    )


# --- item 10: flags and env take the same values -----------------------------------------------------------


@pytest.mark.parametrize("level", ["info", "INFO", "Warning", "debug"])
def test_log_level_flag_takes_what_the_env_takes_in_any_case(level: str):
    by_flag = run("--check-config", "--log-level", level, TRENGO_CHANNEL_ID="1", TRENGO_API_TOKEN="t")
    by_env = run("--check-config", TRENGO_CHANNEL_ID="1", TRENGO_API_TOKEN="t", SIDECAR_LOG_LEVEL=level)
    assert by_flag.returncode == by_env.returncode == 0, by_flag.stderr + by_env.stderr
    assert f"logLevel: {level.upper()}  # flag --log-level" in by_flag.stdout.splitlines()
    assert f"logLevel: {level.upper()}  # env SIDECAR_LOG_LEVEL" in by_env.stdout.splitlines()


def test_a_bad_flag_value_is_named_as_the_flag():
    done = run("--check-config", "--log-format", "xml", TRENGO_CHANNEL_ID="1", TRENGO_API_TOKEN="t")
    assert done.returncode == 2 and "logFormat (flag --log-format): must be one of text, json" in done.stderr


# --- items 8 and 10: the warnings at start ---------------------------------------------------------------


@pytest.fixture
def started(sim: SimulatorThread, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A sidecar CLI serving with an empty eventTemplateMap and a mistyped variable; its log in tmp_path."""
    config = write_yaml(
        tmp_path / "sidecar.yaml",
        {"apiToken": TOKEN, "baseUrl": sim.base_url, "channelId": EMAIL_CHANNEL,
         "listen": f"127.0.0.1:{free_port()}", "shutdownGraceSeconds": 0},
    )  # fmt: skip
    log = (tmp_path / "sidecar.log").open("wb")
    env = cli_env(TRENGO_CHANEL_ID="405981", SIDECAR_LOGLEVEL="debug")
    popen = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "--config", str(config)], cwd=ROOT, env=env, stderr=log
    )
    yield popen
    if popen.poll() is None:
        popen.kill()
    popen.wait()
    log.close()


def test_the_sidecar_warns_at_start_about_unknown_variables_and_an_empty_map(started, tmp_path: Path):
    log = tmp_path / "sidecar.log"
    ends = time.monotonic() + 20
    while "listening" not in log.read_text() and started.poll() is None:
        assert time.monotonic() < ends, log.read_text()
        time.sleep(0.05)
    started.send_signal(signal.SIGTERM)
    assert started.wait(timeout=10) == 0
    text = log.read_text()
    assert "unknown environment variable TRENGO_CHANEL_ID (did you mean TRENGO_CHANNEL_ID?)" in text, text
    assert "unknown environment variable SIDECAR_LOGLEVEL (did you mean SIDECAR_LOG_LEVEL?)" in text
    assert "eventTemplateMap is empty: every Track will be refused" in text
    assert "405981" not in text  # a variable's name is warned about, never its value


# --- item 5: the metrics port in use ------------------------------------------------------------------------


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port another real process listens on."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import socket, sys, time\n"
         "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
         "print(s.getsockname()[1], flush=True); time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None
    yield int(holder.stdout.readline())
    holder.kill()
    holder.wait()


def test_a_metrics_port_in_use_names_metrics_listen_and_exits_cleanly(held_port: int, sim: SimulatorThread):
    done = run(
        "--listen", f"127.0.0.1:{free_port()}", "--metrics-listen", f"127.0.0.1:{held_port}",
        TRENGO_API_TOKEN=TOKEN, TRENGO_CHANNEL_ID=str(EMAIL_CHANNEL), TRENGO_BASE_URL=sim.base_url,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert f"metricsListen 127.0.0.1:{held_port}: cannot serve metrics: Address already in use" in done.stderr
    assert not [words for words in UNCLEAN if words in done.stderr], done.stderr


def test_a_grpc_port_in_use_names_listen_and_exits_cleanly(held_port: int, sim: SimulatorThread):
    done = run(
        "--listen", f"127.0.0.1:{held_port}",
        TRENGO_API_TOKEN=TOKEN, TRENGO_CHANNEL_ID=str(EMAIL_CHANNEL), TRENGO_BASE_URL=sim.base_url,
    )  # fmt: skip
    assert done.returncode == 1 and f"listen 127.0.0.1:{held_port}: cannot listen there" in done.stderr
    assert not [words for words in UNCLEAN if words in done.stderr], done.stderr


# --- item 6: TLS files that are not PEM fail --check-config, naming the key --------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.tls import make_ca, make_cert
    directory = tmp_path_factory.mktemp("certs")
    make_ca(directory, "ca")
    make_cert(directory, "server", "ca", "subjectAltName=IP:127.0.0.1\n")
    (directory / "server.der").write_bytes(
        subprocess.run(
            ["openssl", "x509", "-in", "server.crt", "-outform", "DER"],
            cwd=directory, capture_output=True, check=True,
        ).stdout
    )  # fmt: skip
    (directory / "key.txt").write_text("Zq7-not-a-key\n")
    return directory


@pytest.mark.parametrize(
    ("cert", "key", "named"),
    [("server.der", "server.key", "tlsCertFile"), ("server.crt", "key.txt", "tlsKeyFile")],
)
def test_check_config_loads_the_tls_files_and_names_the_bad_one(certs: Path, cert: str, key: str, named: str):
    env = {"SIDECAR_TLS_CERT_FILE": str(certs / cert), "SIDECAR_TLS_KEY_FILE": str(certs / key)}
    done = run("--check-config", TRENGO_CHANNEL_ID="1", TRENGO_API_TOKEN="t", **env)
    assert done.returncode == 2, done.stdout
    env_name = "SIDECAR_TLS_CERT_FILE" if named == "tlsCertFile" else "SIDECAR_TLS_KEY_FILE"
    assert f"{named} (env {env_name}): is not a PEM" in done.stderr, done.stderr
    assert "Zq7" not in done.stderr


# --- item 7: RudderStack's own config pastes, and --check-config says what it ignores ----------------------


def test_a_rudderstack_export_pastes_and_check_config_names_the_ignored_keys(tmp_path: Path):
    exported = {
        "Config": {
            "apiToken": "Zq7-token", "channelId": str(EMAIL_CHANNEL), "channelIdentifier": "email",
            "enableDedup": True, "eventTemplateMap": TEMPLATES,
            "connectionMode": {"web": "cloud"}, "eventDelivery": False, "eventDeliveryTS": 1668424218224,
        }
    }  # fmt: skip
    done = run("--config", str(write_yaml(tmp_path / "rudder.yaml", exported)), "--check-config")
    assert done.returncode == 0, done.stderr
    ignored = [line for line in done.stdout.splitlines() if line.startswith("# ignored: ")]
    assert [line.split()[2] for line in ignored] == ["connectionMode", "eventDelivery", "eventDeliveryTS"]
    assert "Zq7" not in done.stdout + done.stderr


# --- item 11: --check-config, --version, --help -------------------------------------------------------------


def test_check_config_prints_the_file_keys_with_their_origins(tmp_path: Path):
    config = write_yaml(
        tmp_path / "sidecar.yaml", {"apiToken": "Zq7-token", "eventTemplateMap": TEMPLATES[:1]}
    )
    done = run(
        "--config", str(config), "--check-config", "--listen", "127.0.0.1:7000",
        TRENGO_CHANNEL_ID=str(EMAIL_CHANNEL), SIDECAR_RATE_LIMIT_PER_MINUTE="60",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Zq7" not in done.stdout and "api_token" not in done.stdout
    printed = yaml.safe_load(done.stdout)
    assert printed["apiToken"] == "****" and printed["eventTemplateMap"] == TEMPLATES[:1]
    lines = done.stdout.splitlines()
    assert f"channelId: {EMAIL_CHANNEL}  # env TRENGO_CHANNEL_ID" in lines
    assert "rateLimitPerMinute: 60  # env SIDECAR_RATE_LIMIT_PER_MINUTE" in lines
    assert "listen: 127.0.0.1:7000  # flag --listen" in lines
    assert f"eventTemplateMap:  # file {config}" in lines
    assert "maxAttempts: 5  # default" in lines


def test_version_prints_the_package_version():
    from importlib.metadata import version

    done = run("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"trengo-sidecar {version('trengo-sidecar')}"


def test_help_lists_every_environment_variable_with_its_key():
    done = run("--help")
    assert done.returncode == 0
    lines = [line.split() for line in done.stdout.splitlines()]
    for var, key in {**ENV_VARS, **ENV_ALIASES}.items():
        assert [var, key] in [line[:2] for line in lines], f"--help does not list {var}"


# --- item 15: trengo-sim --help documents the control API ---------------------------------------------------


def test_trengo_sim_help_documents_every_control_route():
    done = subprocess.run(
        [sys.executable, "-m", "sidecar.simulator", "--help"],
        cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0
    for route in ControlApi(SimState(set(), 0, 0)).routes():
        path = route.path.replace("{contact_id}", "ID")  # type: ignore[attr-defined]
        assert f"{route.method} " in done.stdout and path in done.stdout, f"{route.method} {path}"
    for field in ("method, path", "count", "status, body", "headers", "delay", "drop", "after"):
        assert f"  {field} " in done.stdout, field
