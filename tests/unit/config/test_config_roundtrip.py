"""``--check-config`` round-trips: its output, fed back as a config file (secrets given again through
the environment), is the same effective config. Parse -> print -> parse, over a config that sets every
key, and through the real CLI for the store URL a new user hit (``sqlite:////abs/path``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.config.load import _KEYS, _SECRET_FILE_KEYS, Loaded, load
from sidecar.config.report import check_config
from tests.support.harness import cli_env
from tests.support.processes import ROOT

SECRETS = {
    "TRENGO_API_TOKEN": "Zq7-api-token",
    "SIDECAR_AUTH_TOKEN": "Zq7-auth-token",
    "SIDECAR_WRITE_KEYS": "Zq7-write-key-1,Zq7-write-key-2",
}


def full_config(tmp_path: Path, certs: Path) -> dict[str, Any]:
    """Every key the sidecar knows, each away from its default (the secrets come from env)."""
    return {
        "channelId": 405981,
        "channelIdentifier": "phone",
        "enableDedup": False,
        "skipUnchangedNames": False,
        "eventTemplateMap": [
            {"from": "Order Placed", "to": "Order {{ order_id }}",
             "note": "Order {{ order_id }} of EUR {{ total }}: {{{ url }}}", "labels": ["VIP", 4711]},
            {"from": "Support Requested", "to": "{{#if topic}}Help with {{ topic }}{{else}}Help{{/if}}",
             "assignTo": {"team": "Support"}},
            {"from": "Refund Asked", "to": "Refund", "assignTo": {"user": "ann@example.com"}},
            {"from": "Silent", "to": ""},
        ],
        "customFieldMap": [{"from": "plan", "to": "Plan"}, {"from": "address.city", "to": 8820}],
        "baseUrl": "https://trengo.example.com/api/v2",
        "consentManagement": [
            {"provider": "oneTrust", "resolutionStrategy": "", "consents": [{"consent": "C0004"}]},
            {"provider": "custom", "resolutionStrategy": "or",
             "consents": [{"consent": "a"}, {"consent": "b"}]},
        ],
        "oneTrustCookieCategories": [{"oneTrustCookieCategory": "C0002"}],
        "ketchConsentPurposes": [{"purpose": "analytics"}],
        "listen": "0.0.0.0:50052",
        "contactCacheSize": 5000,
        "contactCacheTtlSeconds": 120.5,
        "channelCacheTtlSeconds": 60,
        "requestTimeoutSeconds": 7,
        "defaultDeadlineSeconds": 12,
        "maxAttempts": 3,
        "backoffBaseSeconds": 0.5,
        "backoffMaxSeconds": 4,
        "rateLimitPerMinute": 90,
        "rateLimitQueueSize": 50,
        "rateLimitWindowSeconds": 30,
        "store": f"sqlite:///{tmp_path}/state.db",  # sqlite:////abs/...: four slashes
        "storePoolSize": 2,
        "idempotencyWindowSeconds": 3600,
        "idempotencyCacheSize": 1000,
        "queueConcurrency": 2,
        "queueRetryBaseSeconds": 5,
        "queueRetryMaxSeconds": 60,
        "queueGiveUpAttempts": 4,
        "queueGiveUpSeconds": 600,
        "queueMaxAgeSeconds": 7200,
        "queueLeaseSeconds": 30,
        "queuePollSeconds": 0.5,
        "queueAttemptTimeoutSeconds": 20,
        "queueRetentionSeconds": 86400,
        "queueMaxDepth": 5000,
        "queueMaxBytes": 10485760,
        "queueFailedRetentionSeconds": 3600,
        "maxWatchers": 8,
        "queueContactWaitSeconds": 120,
        "maxMessageBytes": 1048576,
        "tlsCertFile": str(certs / "server.crt"),
        "tlsKeyFile": str(certs / "server.key"),
        "tlsClientCaFile": str(certs / "ca.crt"),
        "shutdownGraceSeconds": 15,
        "metricsListen": "127.0.0.1:9464",
        "healthListen": "0.0.0.0:50053",
        "allowUnauthenticated": True,
        "allowInsecureTrengo": True,
        "maxEventFields": 5000,
        "defaultPhoneRegion": "NL",
        "defaultAssignTo": {"team": "Support"},
        "httpListen": "127.0.0.1:8088",
        "logFormat": "json",
        "logLevel": "DEBUG",
    }


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.tls import make_ca, make_cert

    directory = tmp_path_factory.mktemp("certs")
    make_ca(directory, "ca")
    make_cert(directory, "server", "ca", "subjectAltName=IP:127.0.0.1\n")
    return directory


def printed_again(tmp_path: Path, loaded: Loaded, env: dict[str, str], name: str) -> Loaded:
    """check_config's output written as a config file and loaded again."""
    path = tmp_path / name
    path.write_text(check_config(loaded))
    return load(path, env=env)


def test_the_full_config_sets_every_key(tmp_path: Path, certs: Path):
    """A key added to the sidecar must be added here too, so the round trip covers it."""
    secrets = {"apiToken", "authToken", "writeKeys", *_SECRET_FILE_KEYS}
    assert set(full_config(tmp_path, certs)) == set(_KEYS) - secrets


def test_check_config_round_trips_every_key(tmp_path: Path, certs: Path):
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(full_config(tmp_path, certs), sort_keys=False))
    first = load(path, env=SECRETS)
    second = printed_again(tmp_path, first, SECRETS, "printed.yaml")
    assert second.config == first.config  # the same effective config, field by field
    assert second.config.event_extras and second.config.custom_field_map and second.config.consent_management
    third = printed_again(tmp_path, second, SECRETS, "printed-again.yaml")
    assert yaml.safe_load(check_config(third)) == yaml.safe_load(check_config(second))
    text = check_config(first)
    assert "Zq7" not in text  # the secrets are masked in the output, and come back through env


def test_notes_labels_and_the_store_path_survive_the_print(tmp_path: Path, certs: Path):
    raw = full_config(tmp_path, certs)
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    printed = yaml.safe_load(check_config(load(path, env=SECRETS)))
    assert printed["eventTemplateMap"] == raw["eventTemplateMap"]  # note, labels and templates as written
    assert printed["store"] == raw["store"] and printed["store"].startswith("sqlite:////")
    assert printed["apiToken"] == "****" and printed["authToken"] == "****"
    assert printed["writeKeys"] == ["****", "****"]


def test_a_token_file_and_a_store_password_round_trip_with_the_secrets_from_env(tmp_path: Path):
    token = tmp_path / "token"
    token.write_text("Zq7-from-a-file\n")
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump({"apiTokenFile": str(token), "channelId": 1}))
    env = {"SIDECAR_STORE": "postgresql://app:Zq7pass@db:5432/sidecar?sslmode=require"}
    first = load(path, env=env)
    text = check_config(first)
    assert "Zq7" not in text and f"apiTokenFile: {token}" in text
    second = printed_again(tmp_path, first, env, "printed.yaml")
    assert second.config == first.config
    assert second.config.api_token.reveal() == "Zq7-from-a-file"


def test_the_cli_output_loads_again_in_the_cli(tmp_path: Path):
    """The reported case, end to end: the printed sqlite:////abs URL is one the sidecar accepts."""
    path = tmp_path / "sidecar.yaml"
    store = f"sqlite:///{tmp_path}/state.db"
    path.write_text(yaml.safe_dump({
        "channelId": 405980, "store": store,
        "eventTemplateMap": [{"from": "Order", "to": "Order {{ n }}", "note": "n", "labels": ["VIP"]}],
    }))  # fmt: skip

    def check(config: Path) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "sidecar", "--config", str(config), "--check-config"],
            cwd=ROOT, env=cli_env(TRENGO_API_TOKEN="Zq7-token"), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done
        return done.stdout

    first = check(path)
    assert f"store: {store}  # file {path}" in first.splitlines(), first
    printed = tmp_path / "printed.yaml"
    printed.write_text(first)
    second = check(printed)
    assert yaml.safe_load(second) == yaml.safe_load(first)
