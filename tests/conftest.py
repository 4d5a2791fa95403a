from __future__ import annotations

import hashlib
import resource
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from sidecar.simulator import SimulatorControl, SimulatorThread
from tests.support.grpcurl import grpcurl  # noqa: F401 (a fixture, for every test)
from tests.support.harness import EMAIL_CHANNEL, TOKEN, SidecarThread, sidecar_config
from tests.support.logs import json_lines  # noqa: F401 (a fixture)
from tests.support.postgres import Postgres
from tests.support.processes import spawn  # noqa: F401 (a fixture)
from tests.support.tls import pki  # noqa: F401 (a fixture: a CA, server and client certificates)
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc


def pytest_configure(config: pytest.Config) -> None:
    """Open files up to the hard limit, for this run and the processes it starts. A non-root user's soft
    limit is often 1,024 (root's here: 20,000), and the listener tests hold a thousand connections: as a
    non-root user they failed with "Too many open files". The hard limit is the user's to take."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@pytest.fixture(scope="session")
def sim() -> Iterator[SimulatorThread]:
    with SimulatorThread(tokens=[TOKEN]) as simulator:
        yield simulator


@pytest.fixture
def control(sim: SimulatorThread) -> SimulatorControl:
    """The simulator, emptied for this test: what it records is what this test caused."""
    sim.control.reset()
    sim.control.configure(
        rate_limit_per_minute=0, rate_window_seconds=60, tokens=[TOKEN], existing_email_answer="contact",
        phone_region=None,
    )
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
def postgres() -> Iterator[Postgres]:
    """A real PostgreSQL server for the session (tests/support/postgres.py); never skipped."""
    server = Postgres()
    server.start()
    yield server
    server.close()


@pytest.fixture
def pg_url(postgres: Postgres, request: pytest.FixtureRequest) -> str:
    """The URL of a fresh, empty database on the session's PostgreSQL, for this test alone."""
    if not postgres.running():
        postgres.start()  # a fault test before this one stopped it
    name = "t_" + hashlib.blake2b(request.node.nodeid.encode(), digest_size=8).hexdigest()
    return postgres.create_database(name)
