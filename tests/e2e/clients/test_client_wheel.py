"""The Python client stands alone: its wheel, built from clients/python, carries its own stubs, and
installed in a clean virtualenv (no sidecar package, no trengo/ stubs, not this checkout on the path)
it calls a running sidecar.

pip fetches the client's dependencies (grpcio, grpcio-status, protobuf) for the clean venv as a user's
pip would, held to the versions uv.lock pins (this venv's), so the test does not change with the day.
The wheel is built without isolation, on the locked setuptools and wheel.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import venv
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from tests.support.harness import EMAIL_CHANNEL

CLIENT = Path(__file__).resolve().parents[3] / "clients" / "python"

# Run in the clean venv with -I (no PYTHONPATH, no current directory on sys.path).
SCRIPT = r"""
import importlib.util, json, sys
assert importlib.util.find_spec("sidecar") is None, "the sidecar package is importable"
assert importlib.util.find_spec("trengo") is None, "the sidecar's generated trengo/ stubs are importable"
from trengo_sidecar_client import FailedPrecondition, TrengoSidecarClient
import trengo_sidecar_client
with TrengoSidecarClient(sys.argv[1], timeout=10) as sidecar:
    contact = sidecar.identify(email="wheel@example.com", name="Wheely", user_id="w1")
    ticket = sidecar.track("Added to cart", email="wheel@example.com", properties={"revenue": 7})
    try:
        sidecar.track("Page Viewed", email="wheel@example.com")
        refused = None
    except FailedPrecondition as error:
        refused = error.reason
    try:  # the queue's RPCs are in the wheel's stubs too (this sidecar's store is memory:)
        sidecar.enqueue_identify(email="wheel@example.com")
        not_durable = None
    except FailedPrecondition as error:
        not_durable = error.reason
print(json.dumps({"contact": contact.contact_id, "action": contact.action, "ticket": ticket.ticket_id,
                  "refused": refused, "not_durable": not_durable, "from": trengo_sidecar_client.__file__}))
"""


def run(*args: str | Path, cwd: Path) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run(sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", out, CLIENT, cwd=out)
    [built] = out.glob("trengo_sidecar_client-*.whl")
    return built


def test_the_wheel_ships_its_stubs_and_asks_for_the_versions_they_need(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        stub = archive.read("trengo_sidecar_client/_gen/sidecar_pb2.py").decode()
        grpc_stub = archive.read("trengo_sidecar_client/_gen/sidecar_pb2_grpc.py").decode()
        [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
        requires = archive.read(metadata).decode()
    assert {"trengo_sidecar_client/_gen/__init__.py", "trengo_sidecar_client/_gen/sidecar_pb2.pyi",
            "trengo_sidecar_client/_gen/sidecar_pb2_grpc.pyi", "trengo_sidecar_client/py.typed"} <= names
    assert not any(n.startswith(("trengo/", "sidecar/")) for n in names)
    assert "from . import sidecar_pb2" in grpc_stub and "from trengo" not in grpc_stub
    # The generated code refuses to import under an older grpcio or protobuf than it was made by.
    generated_grpc = re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", grpc_stub)
    generated_pb = re.search(r"Domain\.PUBLIC,\s*(\d+),\s*(\d+),", stub)
    assert generated_grpc and generated_pb
    floors = dict(re.findall(r"^Requires-Dist: ([\w-]+)>=([\d.]+)", requires, re.M))
    assert version(floors["grpcio"]) >= version(generated_grpc[1])
    assert version(floors["protobuf"])[:2] >= (int(generated_pb[1]), int(generated_pb[2]))


def version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


@pytest.mark.timeout(600)
def test_installed_alone_in_a_clean_venv_it_calls_a_running_sidecar(wheel, sidecar, control, tmp_path):
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    locked = tmp_path / "locked.txt"
    locked.write_text("".join(f"{name}=={metadata.version(name)}\n"
                              for name in ("grpcio", "grpcio-status", "protobuf")))
    run(python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--constraint", locked,
        wheel, cwd=tmp_path)
    answer = json.loads(run(python, "-I", "-c", SCRIPT, sidecar.address, cwd=tmp_path))
    assert answer["from"].startswith(str(env))  # the installed wheel, not this checkout
    assert answer["action"] == "create_contact" and answer["refused"] == "EVENT_NOT_MAPPED"
    assert answer["not_durable"] == "STORE_NOT_DURABLE"
    [contact] = control.contacts()
    assert contact["id"] == answer["contact"] and contact["name"] == "Wheely"
    creates = [r["path"] for r in control.requests(method="POST")]
    assert creates == [f"/api/v2/channels/{EMAIL_CHANNEL}/contacts", "/api/v2/tickets"]
    [ticket] = control.tickets()
    assert ticket["id"] == answer["ticket"] and ticket["subject"] == "Product was of value:7"
