"""The ``store`` setting: key, env and flag; an unusable URL fails at start naming ``store``; the
password never shows (errors, --check-config, logs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sidecar.config.load import build_config, load_config
from sidecar.errors import ConfigError
from tests.support.fleet import CLI, ROOT
from tests.support.harness import cli_env
from tests.support.postgres import PASSWORD

BASE = {"apiToken": "t0k3n", "channelId": 405980}
SECRET = "hunter2-store-pass"


def test_the_store_is_memory_by_default():
    config = build_config(BASE)
    assert config.store.reveal() == "memory:" and config.rate_limit_window_seconds == 60


def test_the_store_comes_from_the_key_the_env_and_the_flag(tmp_path: Path):
    db = f"sqlite:///{tmp_path}/state.db"
    assert build_config({**BASE, "store": db}).store.reveal() == db
    url = f"postgresql://u:{SECRET}@db:5432/sidecar?sslmode=require"
    env = {"SIDECAR_STORE": url, "TRENGO_API_TOKEN": "t", "TRENGO_CHANNEL_ID": "1"}
    assert load_config(env=env).store.reveal() == url
    flagged = load_config(env=env, overrides={"store": db})
    assert flagged.store.reveal() == db
    assert build_config({**BASE, "store": url.replace("postgresql", "postgres")}).store


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis://localhost:6379", "must be memory:"),
        ("sqlite://relative/state.db", "three slashes"),
        ("sqlite:///no/such/dir/state.db", "does not exist"),
        (f"postgresql://u:{SECRET}@db/x?sslmode=sometimes", "usable PostgreSQL URL"),
        (f"postgresql://u:{SECRET}@db/x?no_such_option=1", "usable PostgreSQL URL"),
        ("memory:nope", "memory:"),
    ],
)
def test_an_unusable_store_url_fails_naming_store_without_its_password(url, says):
    with pytest.raises(ConfigError) as caught:
        build_config({**BASE, "store": url})
    assert caught.value.key == "store" and says in str(caught.value)
    assert SECRET not in str(caught.value)


def test_the_window_and_pool_size_must_be_positive():
    for key in ("rateLimitWindowSeconds", "storePoolSize"):
        with pytest.raises(ConfigError) as caught:
            build_config({**BASE, key: 0})
        assert caught.value.key == key


def test_check_config_shows_the_store_with_its_password_masked(tmp_path: Path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**BASE, "store": f"postgresql://sidecar:{SECRET}@db:5432/state"}))
    shown = subprocess.run(
        [str(CLI), "--config", str(config), "--check-config"], cwd=ROOT, env=cli_env(),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "postgresql://sidecar:****@db:5432/state" in shown.stdout
    assert SECRET not in shown.stdout + shown.stderr


def test_the_store_flag_fails_at_start_naming_store(tmp_path: Path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(BASE))
    run = subprocess.run(
        [sys.executable, "-m", "sidecar", "--config", str(config), "--store", "sqlite://x.db"], cwd=ROOT,
        env=cli_env(), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert run.returncode == 2 and "bad config: store (flag --store):" in run.stderr


def test_check_trengo_works_on_a_postgresql_store(tmp_path: Path, sim, control, pg_url):
    from tests.support.processes import check_trengo
    done = check_trengo(tmp_path, sim.base_url, store=pg_url, rateLimitPerMinute=120)
    assert done.returncode == 0, done
    assert PASSWORD not in done.stdout + done.stderr
