"""A store password never shows, whatever characters it holds (issue 22): not in --check-config, not
in the sidecar's logs nor psycopg's, not in an error a caller receives, not in /metrics.

Each password below holds one of ``# ? @ % /`` and belongs to a real PostgreSQL role. The URL is
tried as libpq wants it (percent-encoded) and as a careless operator writes it (raw): the first
works, the second is refused at start or masked; neither shows any 4 characters of the password.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import grpc
import httpx
import psycopg
import pytest
import yaml
from psycopg import sql

from sidecar.state.url import describe
from tests.support.fleet import CLI, ROOT, SERVICE, Fleet, wait_for
from tests.support.grpc_helpers import failure
from tests.support.harness import EMAIL_CHANNEL, cli_env, free_port, pieces, struct
from tests.support.postgres import Postgres
from trengo.sidecar.v1 import sidecar_pb2 as pb

CHARS = "#?@%/"
BASE = {"apiToken": "t0k3n", "channelId": EMAIL_CHANNEL}


def password(char: str) -> str:
    return f"Kx7{char}Qm2{char}Zv9w"


def leaked(text: str, secret: str) -> list[str]:
    return [p for p in pieces(secret) if p in text]


@pytest.fixture(scope="module")
def roles(postgres: Postgres) -> dict[str, str]:
    """A role and a database of its own per character: the password in the URL is the real one."""
    if not postgres.running():
        postgres.start()
    made = {}
    with psycopg.connect(postgres.url(), autocommit=True) as conn:
        for n, char in enumerate(CHARS):
            role = f"leak{n}"
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password(char))))  # fmt: skip
            owned = sql.SQL("CREATE DATABASE {} OWNER {}")
            conn.execute(owned.format(sql.Identifier(role), sql.Identifier(role)))
            made[char] = role
    return made


def url(postgres: Postgres, role: str, char: str, *, encoded: bool = True, port: int | None = None) -> str:
    secret = quote(password(char), safe="") if encoded else password(char)
    return f"postgresql://{role}:{secret}@127.0.0.1:{port or postgres.port}/{role}"


@pytest.fixture
def fleet(tmp_path: Path, sim) -> Iterator[Fleet]:
    made = Fleet(tmp_path, sim.base_url)
    yield made
    made.close()


def check_config(tmp_path: Path, store: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(BASE))
    return subprocess.run(
        [str(CLI), "--config", str(config), "--store", store, "--check-config"], cwd=ROOT, env=cli_env(),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


@pytest.mark.parametrize("char", CHARS)
def test_check_config_shows_no_part_of_the_password(tmp_path, postgres, roles, char):
    secret = password(char)
    good = check_config(tmp_path, url(postgres, roles[char], char))
    assert good.returncode == 0, good.stderr
    assert f"postgresql://{roles[char]}:****@127.0.0.1:{postgres.port}/{roles[char]}" in good.stdout
    assert leaked(good.stdout + good.stderr, secret) == []
    assert leaked(good.stdout + good.stderr, quote(secret, safe="")) == []
    raw = check_config(tmp_path, url(postgres, roles[char], char, encoded=False))
    if raw.returncode:  # refused at start, naming store and showing nothing of the URL
        assert raw.returncode == 2 and "bad config: store (flag --store):" in raw.stderr, raw.stderr
        assert "percent-encode" in raw.stderr and "127.0.0.1" not in raw.stderr
    assert leaked(raw.stdout + raw.stderr, secret) == []


def test_raw_at_slash_and_percent_are_refused_and_hash_and_question_mark_work(tmp_path, postgres, roles):
    """libpq reads # and ? inside a password as part of it; @, / and % it cannot read as meant."""
    raw = {c: url(postgres, roles[c], c, encoded=False) for c in CHARS}
    refused = {c for c in CHARS if check_config(tmp_path, raw[c]).returncode}
    assert refused == {"@", "/", "%"}


@pytest.mark.parametrize("char", CHARS)
def test_logs_errors_and_metrics_show_no_part_of_the_password(fleet, postgres, roles, control, char):
    secret = password(char)
    role = roles[char]
    working = url(postgres, role, char)
    metrics = free_port()
    [up] = fleet.spawn(1, store=working, metricsListen=f"127.0.0.1:{metrics}", logLevel="DEBUG")
    control.add_contact(name="Ann", identifier="ann@example.com", channel_id=EMAIL_CHANNEL)
    up.stub.Track(track("up-1"), timeout=10)  # the store works: this password is the real one
    scrape = httpx.get(f"http://127.0.0.1:{metrics}/metrics", timeout=5).text
    assert "trengo_sidecar_store_up 1.0" in scrape and leaked(scrape, secret) == []

    # The same password towards a port nothing listens on: psycopg_pool logs every failed attempt.
    closed = free_port()
    down_metrics = free_port()
    [down] = fleet.spawn(1, wait=False, store=url(postgres, role, char, port=closed),
                         metricsListen=f"127.0.0.1:{down_metrics}", logLevel="DEBUG")  # fmt: skip
    down.wait_serving("")
    wait_for(lambda: "psycopg.pool" in down.output(), "psycopg_pool's own log records")
    with pytest.raises(grpc.RpcError) as caught:
        down.stub.Track(track("down-1"), timeout=3)
    f = failure(caught.value)
    assert (f.code, f.reason) == (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE"), f
    assert f"the store (127.0.0.1:{closed}/{role}) is unavailable" in f.message
    assert leaked(f.message + repr(caught.value.trailing_metadata()), secret) == []
    down_scrape = httpx.get(f"http://127.0.0.1:{down_metrics}/metrics", timeout=5).text
    assert "trengo_sidecar_store_up 0.0" in down_scrape
    logs = fleet.logs()
    assert "failed" in logs  # psycopg's connection errors were logged...
    assert leaked(logs + down_scrape, secret) == []  # ...without the password
    assert leaked(logs, quote(secret, safe="")) == []
    assert fleet.sidecars[0].health(SERVICE) == 1


def test_an_error_names_the_store_by_host_port_and_database_only():
    assert describe("postgresql://u:p%23w@db.internal:6432/state?sslmode=require") == "db.internal:6432/state"
    assert describe("postgresql://u:pw@h1:5432,h2:5433/state") == "h1:5432,h2:5433/state"


def track(message_id: str) -> pb.TrackRequest:
    return pb.TrackRequest(
        event="Checked Out", message_id=message_id, context=struct({"traits": {"email": "ann@example.com"}})
    )


def test_psycopg_records_pass_through_the_redacting_filter():
    """Belt and braces: were psycopg_pool to print a password (as it printed a misread host), the
    filter on its logger takes it out before any handler sees it."""
    import logging

    from sidecar.state.url import guard_logs

    secret = password("@")
    guard_logs(f"postgresql://u:{quote(secret, safe='')}@127.0.0.1:1/db")
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logger = logging.getLogger("psycopg.pool")
    keep = Keep()
    logger.addHandler(keep)
    try:
        logger.warning("failed to resolve host %r", f"{secret}@127.0.0.1")
    finally:
        logger.removeHandler(keep)
    assert seen and leaked(seen[0], secret) == [] and "****@127.0.0.1" in seen[0]
