"""Many sidecars on one token: the fleet against the simulator's per-token limit, and what the store costs.

N sidecar processes share one Trengo token. The simulator enforces the token's limit as Trengo does
(429 with Retry-After over a rolling window, shrunk here so a saturated run takes seconds) and
records every arrival. The fleet runs twice: each sidecar with its own memory (the sidecar before
sidecar/state/), then all of them on one PostgreSQL store. Reported: 429s, the peak in any rolling
window, the share of the limit used, and how long the run took. Then one sidecar, one call in
flight: the latency a PostgreSQL store adds over memory to a Track carrying a message_id
(target: at most 2 ms at the median).
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2

from sidecar.simulator import SimulatorControl
from trengo.sidecar.v1 import sidecar_pb2 as pb
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

from . import CHANNEL_ID, EVENT, procs

SIDECARS = 4
LIMIT, WINDOW = 60, 5.0  # the simulator's limit per window: 60 per 5 s stands in for 120 per minute
EVENTS = 180  # three windows' worth
LATENCY_CALLS = 300
TARGET_MS = 2.0


@dataclass
class FleetRow:
    store: str
    sidecars: int
    events: int
    delivered: int
    too_many: int  # 429s the simulator answered
    peak: int  # most arrivals in any rolling window
    used: float  # share of the limit used over the run's full windows
    seconds: float


@dataclass
class LatencyRow:
    store: str
    p50_ms: float
    p90_ms: float


def run(sim_url: str, workdir: Path) -> tuple[list[FleetRow], list[LatencyRow]]:
    from tests.support.postgres import Postgres  # the dev install's pgserver: a real PostgreSQL 16

    server = Postgres()
    server.start()
    control = SimulatorControl(sim_url)
    try:
        rows = [
            fleet_run(control, sim_url, workdir, "memory", "memory:"),
            fleet_run(control, sim_url, workdir, "postgresql", server.create_database("bench_fleet")),
        ]
        latency = [
            latency_run(control, sim_url, workdir, "memory", "memory:"),
            latency_run(control, sim_url, workdir, "postgresql", server.create_database("bench_latency")),
        ]
    finally:
        control.configure(rate_limit_per_minute=0, rate_window_seconds=60)
        control.close()
        server.close()
    return rows, latency


def _start(sim_url: str, workdir: Path, name: str, store: str, **config: Any) -> tuple[procs.Process, str]:
    return procs.start_sidecar(sim_url, workdir, name=name, store=store, **config)


def fleet_run(control: SimulatorControl, sim_url: str, workdir: Path, label: str, store: str) -> FleetRow:
    control.reset()
    control.configure(rate_limit_per_minute=LIMIT, rate_window_seconds=WINDOW)
    control.add_contact("Ann", "ann@fleet.example", CHANNEL_ID)
    limit = {"rateLimitPerMinute": LIMIT, "rateLimitWindowSeconds": WINDOW, "defaultDeadlineSeconds": 120}
    started = [_start(sim_url, workdir, f"fleet-{label}-{n}", store, **limit) for n in range(SIDECARS)]
    channels = [grpc.insecure_channel(target) for _, target in started]
    stubs = [pb_grpc.TrengoSidecarStub(c) for c in channels]
    try:
        t0 = time.monotonic()

        def send(n: int) -> bool:
            try:
                stubs[n % SIDECARS].Track(_track(f"{label}-{n}"), timeout=120)
                return True
            except grpc.RpcError:
                return False

        with ThreadPoolExecutor(8 * SIDECARS) as pool:
            delivered = sum(pool.map(send, range(EVENTS)))
        seconds = time.monotonic() - t0
    finally:
        for channel in channels:
            channel.close()
        for process, _ in started:
            process.stop()
    calls = control.requests(path_prefix="/api/v2/")
    times = [r["at"] for r in calls]
    return FleetRow(label, SIDECARS, EVENTS, delivered, sum(1 for r in calls if r["status"] == 429),
                    peak_in_window(times, WINDOW), share_of_limit(times, LIMIT, WINDOW), seconds)  # fmt: skip


def latency_run(control: SimulatorControl, sim_url: str, workdir: Path, label: str, store: str) -> LatencyRow:
    control.reset()
    control.configure(rate_limit_per_minute=0)
    control.add_contact("Ann", "ann@fleet.example", CHANNEL_ID)
    # The limiter on (as in production), at a limit this run never reaches: its store trip counts.
    process, target = _start(sim_url, workdir, f"latency-{label}", store, rateLimitPerMinute=100_000)
    try:
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.TrengoSidecarStub(channel)
            for n in range(20):  # warm: the channel list, the contact, connections
                stub.Track(_track(f"warm-{label}-{n}"), timeout=10)
            seconds = []
            for n in range(LATENCY_CALLS):
                t0 = time.perf_counter()
                stub.Track(_track(f"lat-{label}-{n}"), timeout=10)
                seconds.append(time.perf_counter() - t0)
    finally:
        process.stop()
    ordered = sorted(s * 1000 for s in seconds)
    return LatencyRow(label, statistics.median(ordered), ordered[int(len(ordered) * 0.9)])


def _track(message_id: str) -> pb.TrackRequest:
    context = struct_pb2.Struct()
    context.update({"traits": {"email": "ann@fleet.example"}})
    return pb.TrackRequest(event=EVENT, message_id=message_id, context=context)


def peak_in_window(times: list[float], window: float) -> int:
    """The most arrivals inside any rolling ``window`` seconds."""
    ordered = sorted(times)
    peak, start = 0, 0
    for end, at in enumerate(ordered):
        while ordered[start] <= at - window:
            start += 1
        peak = max(peak, end - start + 1)
    return peak


def share_of_limit(times: list[float], limit: int, window: float) -> float:
    """Calls in the consecutive full windows from the first arrival, over what the limit allowed."""
    ordered = sorted(times)
    if not ordered:
        return 0.0
    full = int((ordered[-1] - ordered[0]) // window)
    if full < 1:
        return len(ordered) / limit
    ends = ordered[0] + full * window
    return sum(1 for t in ordered if t < ends) / (limit * full)


def lines(rows: list[FleetRow], latency: list[LatencyRow]) -> list[str]:
    out = [
        f"{SIDECARS} sidecars on one token; the simulator allows {LIMIT} calls per rolling {WINDOW:g} s",
        "",
        "| store | events | delivered | 429s | peak per window | share of the limit | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    out += [f"| {r.store} (each sidecar its own) | {r.events} | {r.delivered} | {r.too_many} | {r.peak} "
            f"| {r.used:.0%} | {r.seconds:.1f} |" if r.store == "memory" else
            f"| {r.store} (shared) | {r.events} | {r.delivered} | {r.too_many} | {r.peak} | {r.used:.0%} "
            f"| {r.seconds:.1f} |" for r in rows]  # fmt: skip
    out += ["", "One sidecar, one Track with a message_id in flight:", "",
            "| store | p50 ms | p90 ms |", "|---|---:|---:|"]  # fmt: skip
    out += [f"| {r.store} | {r.p50_ms:.2f} | {r.p90_ms:.2f} |" for r in latency]
    if len(latency) == 2:
        added = latency[1].p50_ms - latency[0].p50_ms
        verdict = "met" if added <= TARGET_MS else "MISSED"
        out += ["", f"PostgreSQL adds {added:.2f} ms at the median "
                f"(target: at most {TARGET_MS:g} ms; {verdict})"]
    return out
