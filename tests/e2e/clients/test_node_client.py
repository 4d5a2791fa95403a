"""The Node.js client (clients/node): its `node --test` suite and its example, against a real sidecar.

Node tests assert on what the simulator recorded; they read SIDECAR_ADDR and SIM_URL from the environment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.queue_helpers import FAST_QUEUE

ROOT = Path(__file__).resolve().parents[3]
NODE_DIR = ROOT / "clients" / "node"
AUTH_TOKEN = "node-client-auth-token"


@pytest.fixture
def node() -> str:
    found = shutil.which("node")
    if found is None:
        pytest.fail("node is not installed: make test needs Node.js 20 and npm for the Node client")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail(f"{NODE_DIR}/node_modules is missing: run `make node` (npm ci in clients/node)")
    return found


def run_node(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
                            timeout=90, check=False)
    output = f"$ {' '.join(args)}\n{result.stdout}\n{result.stderr}"
    assert result.returncode == 0, output
    return result


def test_node_client_suite(node, make_sidecar, sim, tmp_path):
    plain, guarded = make_sidecar(), make_sidecar(authToken=AUTH_TOKEN)
    queued = make_sidecar(store=f"sqlite:///{tmp_path}/state.db", **FAST_QUEUE)  # for queue.test.js
    env = {"SIDECAR_ADDR": plain.address, "SIM_URL": sim.control.root,
           "SIDECAR_AUTH_ADDR": guarded.address, "SIDECAR_AUTH_TOKEN": AUTH_TOKEN,
           "SIDECAR_QUEUE_ADDR": queued.address}
    result = run_node([node, "--test", "--test-reporter=tap", "clients/node/test"], env)
    # A suite that skipped itself (no env) would exit 0 too: insist everything ran.
    assert "\n# fail 0" in result.stdout and "\n# skipped 0" in result.stdout, result.stdout
    assert "\n# pass 0" not in result.stdout, result.stdout


def test_node_example(node, sidecar, control):
    result = run_node([node, "clients/node/example.js"], {"SIDECAR_ADDR": sidecar.address})
    assert "ACTION_CREATE_TICKET" in result.stdout, result.stdout
    assert [t["subject"] for t in control.tickets()] == ["Product Purchased from our store"]
