from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from sidecar.simulator import SimulatorControl, SimulatorThread
from tests.harness import EMAIL_CHANNEL, TOKEN, SidecarThread, sidecar_config
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc


@pytest.fixture(scope="session")
def sim() -> Iterator[SimulatorThread]:
    with SimulatorThread(tokens=[TOKEN]) as simulator:
        yield simulator


@pytest.fixture
def control(sim: SimulatorThread) -> SimulatorControl:
    """The simulator, emptied for this test: what it records is what this test caused."""
    sim.control.reset()
    sim.control.configure(rate_limit_per_minute=0, tokens=[TOKEN])
    return sim.control


@pytest.fixture
def make_sidecar(sim: SimulatorThread, control: SimulatorControl) -> Iterator[Callable[..., SidecarThread]]:
    started: list[SidecarThread] = []

    def make(**overrides: Any) -> SidecarThread:
        """A sidecar against the simulator; an override of None drops that key from the config."""
        thread = SidecarThread(sidecar_config(sim.base_url, **overrides)).__enter__()
        started.append(thread)
        return thread

    yield make
    for thread in started:
        thread.stop()


@pytest.fixture
def sidecar(make_sidecar: Callable[..., SidecarThread]) -> SidecarThread:
    return make_sidecar()


@pytest.fixture
def stub(sidecar: SidecarThread) -> Iterator[pb_grpc.TrengoSidecarStub]:
    channel = grpc.insecure_channel(sidecar.address)
    yield pb_grpc.TrengoSidecarStub(channel)
    channel.close()


@pytest.fixture
def ann(control: SimulatorControl) -> dict[str, Any]:
    """Ann's contact on the email channel, already in the simulator."""
    return control.add_contact(name="Ann", identifier="ann@example.com", channel_id=EMAIL_CHANNEL)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """A real PostgreSQL 16 (the pgserver wheel), for the session.

    Its data lives in a directory of its own, not under pytest's tmp_path: pytest prunes old base
    directories, and another pytest on the machine could prune this one while it runs.
    """
    import shutil
    import tempfile

    import pgserver

    data = tempfile.mkdtemp(prefix="sidecar-pg-")
    server = pgserver.get_server(data, cleanup_mode="stop")
    yield server
    server.cleanup()
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: Any, request: pytest.FixtureRequest) -> str:
    """The URL of a database of this test's own on the session's PostgreSQL."""
    import re
    import uuid

    name = "t_" + re.sub(r"\W", "_", request.node.name.lower())[:40] + "_" + uuid.uuid4().hex[:8]
    postgres_server.psql(f"CREATE DATABASE {name};")
    return str(postgres_server.get_uri(name))
