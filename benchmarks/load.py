"""Closed-loop load at a fixed number of calls in flight: sidecar unary, sidecar stream, raw httpx.

Every mode sends Track events for a pool of people the sidecar has already seen (warm contacts),
so each event is one ticket in Trengo. The raw baseline posts the very ticket bodies the sidecar
sent (read back from its DeliveryResult) to the same simulator with one httpx.AsyncClient.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.trengo_api.client import POOL_SIZE
from trengo.sidecar.v1 import sidecar_pb2 as pb
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

from . import TOKEN
from .scenarios import bounded, email, identify_requests, track_requests

HEADERS = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}
Sender = Callable[[int], Awaitable[None]]  # sends request number i (modulo its pool); raises if it failed


@dataclass
class Point:
    mode: str  # "raw", "sidecar", "stream", "aiohttp", "grpc"
    in_flight: int
    seconds: float  # the measured window, after a warm-up
    done: int  # answers received in the window
    errors: int
    latencies: list[float] = field(default_factory=list)  # seconds, of requests sent in the window
    answered: int = 0  # answers over the whole run, warm-up included (for CPU per event)
    cpu: tuple[float, float, float] = (0.0, 0.0, 0.0)  # CPU seconds over the run: client, sidecar, sim
    first_error: str = ""

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        """Latency percentile in ms (nearest rank)."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
        return ordered[index] * 1000

    def cpu_ms(self) -> tuple[float, float, float]:
        """CPU milliseconds per answered event: client, sidecar, simulator."""
        n = max(self.answered, 1)
        client, sidecar, simulator = self.cpu
        return client / n * 1000, sidecar / n * 1000, simulator / n * 1000

    @property
    def p50(self) -> float:
        if not self.latencies:
            return float("nan")
        return statistics.median(self.latencies) * 1000

    @property
    def p99(self) -> float:
        return self.pct(99)

    def record(self, sent: float, answered: float, start: float, end: float) -> None:
        """One answer: its latency if sent after the warm-up, done if answered inside the window."""
        self.answered += 1
        if sent >= start:
            self.latencies.append(answered - sent)
        if start <= answered <= end:
            self.done += 1

    def fail(self, why: str) -> None:
        """Counted, not fatal: the table says how many; the first one says why."""
        self.errors += 1
        self.first_error = self.first_error or why[:300]


@dataclass
class Pool:
    """Warm people: their Track requests, and the ticket bodies the sidecar sent for them."""

    tracks: list[pb.TrackRequest]
    bodies: list[dict[str, Any]]


async def warm_pool(stub: pb_grpc.TrengoSidecarStub, tag: str, size: int) -> Pool:
    """Identify ``size`` new people, then one Track each: the sidecar caches them; we learn the bodies."""
    addresses = [email(tag, i) for i in range(size)]
    await bounded(stub.Identify, identify_requests(addresses), 16)
    tracks = track_requests(addresses)
    results = await bounded(stub.Track, tracks, 16)
    bodies = []
    for result in results:
        ticket = [r for r in result.requests if r.method == "POST" and r.url.endswith("/tickets")]
        if len(result.requests) != 1 or not ticket:
            raise RuntimeError(f"a warm Track should make exactly one ticket call, got {result.requests}")
        bodies.append(json.loads(ticket[0].body_json))
    return Pool(tracks, bodies)


async def closed_loop(mode: str, send: Sender, in_flight: int, seconds: float, warmup: float) -> Point:
    """``in_flight`` workers, each sending its next request when the last is answered."""
    point = Point(mode, in_flight, seconds, 0, 0)
    start = time.perf_counter() + warmup
    end = start + seconds

    async def worker(k: int) -> None:
        i = k
        while (t0 := time.perf_counter()) < end:
            try:
                await send(i)
            except Exception as exc:
                point.fail(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.001)
            else:
                point.record(t0, time.perf_counter(), start, end)
            i += in_flight

    await asyncio.gather(*(worker(k) for k in range(in_flight)))
    return point


def unary_sender(stub: pb_grpc.TrengoSidecarStub, pool: Pool) -> Sender:
    tracks = pool.tracks
    size = len(tracks)

    async def send(i: int) -> None:
        await stub.Track(tracks[i % size], timeout=30)

    return send


def health_sender(channel: grpc.aio.Channel) -> Sender:
    """grpc.health.v1 Check on the sidecar's own server: a gRPC round trip that does no work."""
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service="")

    async def send(i: int) -> None:
        await stub.Check(request, timeout=30)

    return send


def raw_sender(http: httpx.AsyncClient, pool: Pool) -> Sender:
    bodies = pool.bodies
    size = len(bodies)

    async def send(i: int) -> None:
        response = await http.post("/tickets", json=bodies[i % size])
        if response.status_code != 201:
            raise RuntimeError(f"raw POST /tickets answered {response.status_code}: {response.text[:200]}")
        if not isinstance(response.json().get("id"), int):
            raise RuntimeError("raw POST /tickets answered without an id")

    return send


def aiohttp_sender(session: aiohttp.ClientSession, pool: Pool) -> Sender:
    bodies = pool.bodies
    size = len(bodies)

    async def send(i: int) -> None:
        async with session.post("tickets", json=bodies[i % size]) as response:
            if response.status != 201:
                raise RuntimeError(f"aiohttp POST /tickets answered {response.status}")
            if not isinstance((await response.json()).get("id"), int):
                raise RuntimeError("aiohttp POST /tickets answered without an id")

    return send


def aiohttp_client(sim_url: str, in_flight: int) -> aiohttp.ClientSession:
    """The other HTTP client in the dependencies, as a ceiling: what the simulator can take."""
    return aiohttp.ClientSession(
        base_url=sim_url.rstrip("/") + "/",
        headers=HEADERS,
        connector=aiohttp.TCPConnector(limit=max(64, in_flight)),
        timeout=aiohttp.ClientTimeout(total=30),
    )


def raw_client(sim_url: str, in_flight: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=sim_url,
        headers=HEADERS,
        # The sidecar's own pool size: the same number of connections on both sides.
        limits=httpx.Limits(max_connections=POOL_SIZE, max_keepalive_connections=POOL_SIZE),
        timeout=30,
        trust_env=False,
    )


async def stream_loop(
    stub: pb_grpc.TrengoSidecarStub, pool: Pool, in_flight: int, seconds: float, warmup: float
) -> Point:
    """One Deliver stream, kept at ``in_flight`` events outstanding."""
    size = len(pool.tracks)
    point = Point("stream", in_flight, seconds, 0, 0)
    slots = asyncio.Semaphore(in_flight)
    sent: dict[str, float] = {}  # id -> when written; each event its own id: Deliver refuses a repeat
    call = stub.Deliver(timeout=seconds + warmup + 60)
    start = time.perf_counter() + warmup
    end = start + seconds

    async def writer() -> None:
        i = 0
        while time.perf_counter() < end:
            await slots.acquire()
            request = pb.DeliverRequest(id=str(i), track=pool.tracks[i % size])
            sent[request.id] = time.perf_counter()
            await call.write(request)
            i += 1
        await call.done_writing()

    async def reader() -> None:
        while (answer := await call.read()) is not grpc.aio.EOF:
            t1 = time.perf_counter()
            t0 = sent.pop(answer.id)
            slots.release()
            if answer.WhichOneof("outcome") == "result":
                point.record(t0, t1, start, end)
            else:
                point.answered += 1
                point.fail(str(answer.error))

    try:
        async with asyncio.TaskGroup() as tasks:  # one failing cancels the other
            tasks.create_task(writer())
            tasks.create_task(reader())
    except* grpc.aio.AioRpcError as failed:
        if not point.answered:  # no stream to measure (a sidecar without Deliver, say): stop the run
            raise RuntimeError(f"Deliver failed before any answer: {failed.exceptions[0]}") from None
        point.fail(f"stream failed: {failed.exceptions[0]}")
    return point
