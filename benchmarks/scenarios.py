"""Trengo calls per event, counted by the simulator, next to RudderStack's Trengo destination.

The reference destination (rudder-transformer, v0/destinations/trengo) searches the contacts
(GET /contacts?term=) before every Track and every deduplicated Identify, and never lists
channels (it trusts channelIdentifier): 2 calls per Track, 2 per dedup Identify (whatever the
name), 4 for a new person's identify then track, on either channel kind. The simulator records
every /api/v2 request; each scenario resets it, sets its stage, and counts only the requests its
measured events caused.

The follow-up scenarios (an eventTemplateMap entry with ``note`` and ``labels``, a customFieldMap)
count the extra writes those keys cost; the reference cannot make them, so its column there is its
own calls plus the same writes made as separate steps (as Pipedream's Trengo actions would).
"""

from __future__ import annotations

import asyncio
import uuid
import zlib
from collections.abc import Awaitable, Callable, Iterable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import httpx
from google.protobuf import struct_pb2

from trengo.sidecar.v1 import sidecar_pb2 as pb
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

from . import ASSIGNED_EVENT, CUSTOM_FIELD_TITLES, EVENT, FOLLOWUP_EVENT, LABELS, SMS_CHANNEL_ID, TEAM

T = TypeVar("T")
R = TypeVar("R")


def struct(data: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(data)
    return s


def email(tag: str, n: int) -> str:
    return f"{tag}.user{n:06d}@example.com"


def phone(tag: str, n: int) -> str:
    """A number unique to this run: the sidecar's contact cache outlives the simulator's resets."""
    return f"+31 6{zlib.crc32(tag.encode()) % 10_000:04d}{n:04d}"


def national(number: str, style: int) -> str:
    """The number as a Dutch app spells it (defaultPhoneRegion NL): "06-1234 5678" or "(06) 1234-5678"."""
    rest = number.removeprefix("+31 6")
    return f"06-{rest[:4]} {rest[4:]}" if style == 0 else f"(06) {rest[:4]}-{rest[4:]}"


def _person(identifier: str) -> tuple[str, list[pb.ExternalId]]:
    """The trait an identifier goes in, and the channel it names: a phone number, the SMS channel."""
    if "@" in identifier:
        return "email", []
    return "phone", [pb.ExternalId(type="trengoChannelId", id=str(SMS_CHANNEL_ID))]


def identify_request(address: str, n: int, name: str = "") -> pb.IdentifyRequest:
    trait, channel = _person(address)
    traits: dict[str, Any] = {trait: address, "name": name or f"Customer {n}", "plan": "pro"}
    return pb.IdentifyRequest(user_id=f"u-{address}", traits=struct(traits), external_ids=channel)


def fields_request(address: str, n: int, tier: str) -> pb.IdentifyRequest:
    """An identify whose traits fill the two mapped custom fields (customFieldMap)."""
    traits = {"email": address, "name": f"Customer {n}", "tier": tier}
    context = {"traits": {"address": {"city": "Utrecht"}}}
    return pb.IdentifyRequest(user_id=f"u-{address}", traits=struct(traits), context=struct(context))


def track_request(address: str, n: int, event: str = EVENT) -> pb.TrackRequest:
    trait, channel = _person(address)
    return pb.TrackRequest(
        user_id=f"u-{address}",
        event=event,
        context=struct({"traits": {trait: address}, "library": {"name": "bench", "version": "1"}}),
        properties=struct({"order_id": f"A{n:06d}", "revenue": 42.5, "currency": "EUR", "items": 3}),
        external_ids=channel,
    )


@dataclass
class CallsRow:
    key: str  # stable name: new_identify_track, new_identify_track_phone, new_identify, warm_track,
    # repeat_identify, warm_identify, channels
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

    async def seed(self) -> None:
        """The labels, custom fields and team the follow-up scenarios name (same ids after every reset)."""
        (await self._http.post("/_sim/teams", json={"name": TEAM})).raise_for_status()
        for name in LABELS:
            (await self._http.post("/_sim/labels", json={"name": name})).raise_for_status()
        for title in CUSTOM_FIELD_TITLES:
            (await self._http.post("/_sim/custom_fields", json={"title": title})).raise_for_status()

    async def requests(self) -> list[dict[str, Any]]:
        response = await self._http.get("/_sim/requests")
        response.raise_for_status()
        return list(response.json()["requests"])

    async def aclose(self) -> None:
        await self._http.aclose()


def is_channel_listing(entry: dict[str, Any]) -> bool:
    return entry["method"] == "GET" and entry["path"].endswith("/channels")


def identify_requests(addresses: list[str], name: str = "") -> list[pb.IdentifyRequest]:
    return [identify_request(a, n, name) for n, a in enumerate(addresses)]


def track_requests(addresses: list[str]) -> list[pb.TrackRequest]:
    return [track_request(a, n) for n, a in enumerate(addresses)]


async def bounded(call: Callable[[T], Awaitable[R]], items: Iterable[T], concurrency: int) -> list[R]:
    """``call`` on every item, ``concurrency`` at a time; the answers in the items' order."""
    slots = asyncio.Semaphore(concurrency)

    async def one(item: T) -> R:
        async with slots:
            return await call(item)

    return await asyncio.gather(*(one(item) for item in items))


async def calls_per_event(
    target: str, sim_url: str, people: int = 20, concurrency: int = 8, tag: str | None = None
) -> list[CallsRow]:
    """Run the call-count scenarios against a running sidecar (``target``) and simulator."""
    tag = tag or uuid.uuid4().hex[:8]
    async with grpc.aio.insecure_channel(target) as channel, aclosing(SimCounter(sim_url)) as counter:
        session = Session(pb_grpc.TrengoSidecarStub(channel), counter, concurrency)
        # A fresh sidecar lists the channels once, on its first event: counted in the last row only.
        new = [email(f"{tag}.new", i) for i in range(people)]
        warm_up = [email(f"{tag}.warmup", 0)]
        calls = await session.calls(session.identify(warm_up), session.identify_then_track(new))
        rows = [
            CallsRow(
                "new_identify_track",
                "new person: identify, then track (e-mail channel)",
                "person",
                people,
                calls,
                4.0,
                "2.0",
            )
        ]

        # Phone channel, numbers formatted as an app formats them: the identify spells it "06-1234 5678",
        # the track "+31 6 12345678"; with defaultPhoneRegion both are one person (one E.164 number).
        phones = [phone(tag, i) for i in range(people)]
        spelled = [national(p, 0) for p in phones]
        calls = await session.calls(session.identify_then_track(spelled, phones))
        scenario = "new person: identify, then track (phone channel, numbers spelled two ways)"
        rows.append(CallsRow("new_identify_track_phone", scenario, "person", people, calls, 4.0, "3.0"))

        known = [phone(f"{tag}.known", i) for i in range(people)]
        calls = await session.calls(
            session.identify([national(p, 0) for p in known]), session.track([national(p, 1) for p in known])
        )
        scenario = "warm: track (phone channel, spelled unlike the identify)"
        rows.append(CallsRow("warm_track_phone", scenario, "event", people, calls, 2.0, "1.0"))

        fresh = [email(f"{tag}.fresh", i) for i in range(people)]
        calls = await session.calls(session.identify(fresh))
        rows.append(CallsRow("new_identify", "new person: identify (dedup on)", "event", people, calls, 2.0))

        warm = [email(f"{tag}.warm", i) for i in range(people)]
        calls = await session.calls(session.identify(warm), session.track(warm))
        rows.append(
            CallsRow("warm_track", "warm: track (contact seen before)", "event", people, calls, 2.0, "1.0")
        )

        repeat = [email(f"{tag}.repeat", i) for i in range(people)]
        calls = await session.calls(session.identify(repeat), session.identify(repeat))
        scenario = "warm: identify again, the same name"
        rows.append(CallsRow("repeat_identify", scenario, "event", people, calls, 2.0, "0"))

        again = [email(f"{tag}.again", i) for i in range(people)]
        calls = await session.calls(session.identify(again), session.identify(again, "Renamed Customer"))
        scenario = "warm: identify with a changed name"
        rows.append(CallsRow("warm_identify", scenario, "event", people, calls, 2.0, "1.0"))

        rows += await followup_rows(session, tag, people)

        many = [email(f"{tag}.many", i) for i in range(people * 5)]
        await session.calls(session.identify(many))
        everyone = len(set(new + phones + known + fresh + warm + repeat + again + many))
        scenario = f"channel look-ups ({session.events} events, {everyone} people, cold start included)"
        rows.append(CallsRow("channels", scenario, "event", session.events, session.listings, 0.0, "~0"))
    return rows


class Session:
    """Scenarios on one sidecar: the Trengo calls each one made, and the channel listings over all."""

    def __init__(self, stub: pb_grpc.TrengoSidecarStub, counter: SimCounter, concurrency: int) -> None:
        self.stub = stub
        self.counter = counter
        self.concurrency = concurrency
        self.events = 0  # every event sent, set-up included
        self.listings = 0  # GET /channels over those events

    async def calls(self, *steps: Awaitable[int]) -> int:
        """Reset the simulator, run the steps in turn; returns the Trengo calls made by the last alone."""
        await self.counter.reset()
        await self.counter.seed()
        *stage, run = steps
        for step in stage:
            self.events += await step
        before = len(await self.counter.requests())
        self.events += await run
        log = await self.counter.requests()
        self.listings += sum(map(is_channel_listing, log))
        return len(log) - before

    async def identify(self, addresses: list[str], name: str = "") -> int:
        await bounded(self.stub.Identify, identify_requests(addresses, name), self.concurrency)
        return len(addresses)

    async def track(self, addresses: list[str], event: str = EVENT) -> int:
        requests = [track_request(a, n, event) for n, a in enumerate(addresses)]
        await bounded(self.stub.Track, requests, self.concurrency)
        return len(addresses)

    async def identify_fields(self, addresses: list[str], tier: str) -> int:
        requests = [fields_request(a, n, tier) for n, a in enumerate(addresses)]
        await bounded(self.stub.Identify, requests, self.concurrency)
        return len(addresses)

    async def identify_then_track(self, addresses: list[str], tracked: list[str] | None = None) -> int:
        """Each person identified, then tracked (people side by side, each one's two calls in turn);
        ``tracked``: the same people as the tracks spell them, if not as the identifies do."""
        tracked = tracked or addresses

        async def person(i: int) -> None:
            await self.stub.Identify(identify_request(addresses[i], i))
            await self.stub.Track(track_request(tracked[i], i))

        await bounded(person, range(len(addresses)), self.concurrency)
        return 2 * len(addresses)


async def followup_rows(session: Session, tag: str, people: int) -> list[CallsRow]:
    """Warm people, with the follow-up keys: a ticket with a note and two labels; an identify that
    fills two custom fields, then the same identify again (its values unchanged: not written again).
    Label and custom field names are listed once per sidecar, in the set-up of the first two rows."""
    extra = 1 + len(LABELS)
    noted = [email(f"{tag}.noted", i) for i in range(people)]
    warm_up = [email(f"{tag}.noted.warmup", 0)]
    calls = await session.calls(
        session.identify(noted + warm_up),
        session.track(warm_up, FOLLOWUP_EVENT),
        session.track(noted, FOLLOWUP_EVENT),
    )
    rows = [
        CallsRow(
            "warm_track_followups",
            f"warm: track with a note and {len(LABELS)} labels",
            "event",
            people,
            calls,
            2.0 + extra,
            f"{1 + extra:.1f}",
        )
    ]
    routed = [email(f"{tag}.routed", i) for i in range(people)]
    routed_first = [email(f"{tag}.routed.warmup", 0)]
    calls = await session.calls(
        session.identify(routed + routed_first),
        session.track(routed_first, ASSIGNED_EVENT),  # the team list, once per sidecar
        session.track(routed, ASSIGNED_EVENT),
    )
    scenario = f"warm: track assigned to a team (assignTo {{team: {TEAM}}})"
    rows.append(CallsRow("warm_track_assigned", scenario, "event", people, calls, 3.0, "2.0"))
    fields = len(CUSTOM_FIELD_TITLES)
    filled = [email(f"{tag}.fields", i) for i in range(people)]
    calls = await session.calls(
        session.identify_fields(warm_up, "gold"),
        session.identify(filled),
        session.identify_fields(filled, "gold"),
    )
    rows.append(
        CallsRow(
            "warm_identify_fields",
            f"warm: identify filling {fields} custom fields",
            "event",
            people,
            calls,
            2.0 + fields,
            f"{fields:.1f}",  # the name is unchanged: no update (issue 13), the fields only
        )
    )
    same = [email(f"{tag}.same", i) for i in range(people)]
    calls = await session.calls(session.identify_fields(same, "gold"), session.identify_fields(same, "gold"))
    rows.append(
        CallsRow(
            "warm_identify_fields_same",
            "warm: the same identify again (fields unchanged)",
            "event",
            people,
            calls,
            2.0 + fields,
            "0",  # name and fields unchanged: nothing to send
        )
    )
    return rows
