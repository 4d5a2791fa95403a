"""Trengo calls per event, counted by the simulator, next to RudderStack's Trengo destination.

The reference destination (rudder-transformer, v0/destinations/trengo) searches the contacts
(GET /contacts?term=) before every Track and every deduplicated Identify, and never lists
channels (it trusts channelIdentifier): 2 calls per Track, 2 per dedup Identify, 4 for a new
person's identify then track. The simulator records every /api/v2 request; each scenario
resets it, sets its stage, and counts only the requests its measured events caused.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import grpc
import httpx
from google.protobuf import struct_pb2

from trengo.sidecar.v1 import sidecar_pb2 as pb
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

from . import EVENT


def struct(data: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(data)
    return s


def email(tag: str, n: int) -> str:
    return f"{tag}.user{n:06d}@example.com"


def identify_request(address: str, n: int, name: str = "") -> pb.IdentifyRequest:
    traits: dict[str, Any] = {"email": address, "name": name or f"Customer {n}", "plan": "pro"}
    return pb.IdentifyRequest(user_id=f"u-{address}", traits=struct(traits))


def track_request(address: str, n: int, event: str = EVENT) -> pb.TrackRequest:
    return pb.TrackRequest(
        user_id=f"u-{address}",
        event=event,
        context=struct({"traits": {"email": address}, "library": {"name": "bench", "version": "1"}}),
        properties=struct({"order_id": f"A{n:06d}", "revenue": 42.5, "currency": "EUR", "items": 3}),
    )


@dataclass
class CallsRow:
    key: str  # stable name: new_identify_track, new_identify, warm_track, warm_identify, channels
    scenario: str
    unit: str
    events: int  # units measured (people for a pair, else events)
    calls: int  # Trengo calls the sidecar made for them
    reference: float  # calls per unit by RudderStack's Trengo destination
    target: str = ""

    @property
    def per_event(self) -> float:
        return self.calls / self.events if self.events else 0.0


class SimCounter:
    """Reads and resets the simulator's request log over its /_sim control API."""

    def __init__(self, base_url: str) -> None:
        root = base_url.rstrip("/").removesuffix("/api/v2")
        self._http = httpx.AsyncClient(base_url=root, timeout=30, trust_env=False)

    async def reset(self) -> None:
        (await self._http.post("/_sim/reset")).raise_for_status()

    async def requests(self) -> list[dict[str, Any]]:
        response = await self._http.get("/_sim/requests")
        response.raise_for_status()
        return list(response.json()["requests"])

    async def aclose(self) -> None:
        await self._http.aclose()


def is_channel_listing(entry: dict[str, Any]) -> bool:
    return entry["method"] == "GET" and entry["path"].endswith("/channels")


async def bounded(jobs: Iterable[Callable[[], Awaitable[Any]]], concurrency: int) -> list[Any]:
    slots = asyncio.Semaphore(concurrency)

    async def one(job: Callable[[], Awaitable[Any]]) -> Any:
        async with slots:
            return await job()

    return await asyncio.gather(*(one(job) for job in jobs))


async def calls_per_event(
    target: str, sim_url: str, people: int = 20, concurrency: int = 8, tag: str | None = None
) -> list[CallsRow]:
    """Run the call-count scenarios against a running sidecar (``target``) and simulator."""
    tag = tag or uuid.uuid4().hex[:8]
    counter = SimCounter(sim_url)
    channel = grpc.aio.insecure_channel(target)
    stub = pb_grpc.TrengoSidecarStub(channel)
    rows: list[CallsRow] = []
    listings = 0  # GET /channels over every event this phase sent, set-up included
    events = 0

    async def measured(stage: Callable[[], Awaitable[int]], run: Callable[[], Awaitable[int]]) -> int:
        """Reset the simulator, set the stage, run; returns Trengo calls made by ``run`` alone."""
        nonlocal listings, events
        await counter.reset()
        events += await stage()
        before = len(await counter.requests())
        events += await run()
        log = await counter.requests()
        listings += sum(map(is_channel_listing, log))
        return len(log) - before

    def identify_all(addresses: list[str], name: str = "") -> Callable[[], Awaitable[int]]:
        async def go() -> int:
            requests = [identify_request(a, i, name) for i, a in enumerate(addresses)]
            await bounded([partial(stub.Identify, r) for r in requests], concurrency)
            return len(addresses)

        return go

    def track_all(addresses: list[str]) -> Callable[[], Awaitable[int]]:
        async def go() -> int:
            requests = [track_request(a, i) for i, a in enumerate(addresses)]
            await bounded([partial(stub.Track, r) for r in requests], concurrency)
            return len(addresses)

        return go

    async def nothing() -> int:
        return 0

    try:
        # A fresh sidecar lists the channels once, on its first event: counted in the last row only.
        new = [email(f"{tag}.new", i) for i in range(people)]
        warm_up = [email(f"{tag}.warmup", 0)]

        async def identify_then_track() -> int:
            async def person(i: int, address: str) -> None:
                await stub.Identify(identify_request(address, i))
                await stub.Track(track_request(address, i))

            await bounded([partial(person, i, a) for i, a in enumerate(new)], concurrency)
            return 2 * people

        calls = await measured(identify_all(warm_up), identify_then_track)
        rows.append(
            CallsRow(
                "new_identify_track",
                "new person: identify, then track",
                "person",
                people,
                calls,
                4.0,
                "<= 3.0",
            )
        )

        fresh = [email(f"{tag}.fresh", i) for i in range(people)]
        calls = await measured(nothing, identify_all(fresh))
        rows.append(CallsRow("new_identify", "new person: identify (dedup on)", "event", people, calls, 2.0))

        warm = [email(f"{tag}.warm", i) for i in range(people)]
        calls = await measured(identify_all(warm), track_all(warm))
        rows.append(
            CallsRow("warm_track", "warm: track (contact seen before)", "event", people, calls, 2.0, "1.0")
        )

        again = [email(f"{tag}.again", i) for i in range(people)]
        calls = await measured(identify_all(again), identify_all(again, name="Renamed Customer"))
        rows.append(
            CallsRow("warm_identify", "warm: identify, dedup, with name", "event", people, calls, 2.0, "1.0")
        )

        many = [email(f"{tag}.many", i) for i in range(people * 5)]
        await measured(nothing, identify_all(many))
        rows.append(
            CallsRow(
                "channels",
                f"channel look-ups ({events} events, {len(set(new + fresh + warm + again + many))} people, "
                "cold start included)",
                "event",
                events,
                listings,
                0.0,
                "~0",
            )
        )
    finally:
        await channel.close()
        await counter.aclose()
    return rows
